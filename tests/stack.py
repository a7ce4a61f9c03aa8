"""A real Dagster webserver and daemon on 127.0.0.1 with a temporary DAGSTER_HOME, for the
end-to-end test and the drift-reaction benchmark. Stops every process it starts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml
from dagster import DagsterInstance, DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient
from instance_config import environment
from postgres_server import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


class DagsterStack:
    """``with DagsterStack(home, env) as stack:`` runs ``dagster-webserver`` and
    ``dagster-daemon`` on ``workspace.yaml`` until the block ends, with ``instance`` as
    their dagster.yaml (default: SQLite storage in ``home``)."""

    def __init__(self, home: Path, env: dict[str, str], webserver: bool = True, instance: dict | None = None) -> None:
        self.home, self.port = home, free_port()
        self.env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
        self.webserver = webserver
        self.instance_config = instance or {"telemetry": {"enabled": False}}
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> DagsterStack:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(self.instance_config, sort_keys=False))
        if self.webserver:
            self._spawn(
                "webserver",
                [BIN / "dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            )
        self._spawn("daemon", [BIN / "dagster-daemon", "run", "-w", "workspace.yaml"])
        if self.webserver:
            self._wait_for_webserver()
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:  # each leads its own process group: take its children too
            with_group(process, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with_group(process, signal.SIGKILL)
                process.wait()

    def _spawn(self, name: str, command: list) -> None:
        log = (self.home / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [str(c) for c in command],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def _wait_for_webserver(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/server_info", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"webserver not up after {timeout}s:\n{self.log('webserver')[-3000:]}")

    def client(self) -> DagsterGraphQLClient:
        return DagsterGraphQLClient("127.0.0.1", port_number=self.port)

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def instance(self) -> DagsterInstance:
        with environment(self.env):
            return DagsterInstance.from_config(str(self.home))

    def wait_for_run(self, run_id: str, timeout: float = 900) -> DagsterRunStatus:
        deadline = time.monotonic() + timeout
        with self.instance() as instance:
            while time.monotonic() < deadline:
                run = instance.get_run_by_id(run_id)
                if run and run.status in FINISHED:
                    return run.status
                time.sleep(1)
        raise TimeoutError(f"run {run_id} did not finish in {timeout}s")


def with_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
