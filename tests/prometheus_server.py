"""A real Prometheus for the tests: its own configuration and storage in a temporary folder,
listening on a free port on 127.0.0.1, stopped by PID (SIGTERM, then SIGKILL after a timeout)
and deleted afterwards. Also ``promtool``, which comes with it.

Debian's ``prometheus`` package provides both binaries (``.ci/run`` installs it when missing).
Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml
from postgres_server import free_port


@dataclass(frozen=True)
class PrometheusBinaries:
    prometheus: Path
    promtool: Path

    def promtool_run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """``promtool <args>``, its output captured (stdout and stderr together)."""
        return subprocess.run(
            [str(self.promtool), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            cwd=cwd,
        )


def find_binaries() -> PrometheusBinaries | None:
    """prometheus and promtool on PATH, or None if either is missing."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        return None
    return PrometheusBinaries(Path(prometheus), Path(promtool))


class PrometheusServer:
    """``with PrometheusServer(binaries, config, rules) as prom:`` runs Prometheus with the
    scrape configuration ``config`` (a prometheus.yml as a dict; its ``rule_files`` are
    replaced by ``rules``, written beside it) until the block ends."""

    def __init__(self, binaries: PrometheusBinaries, config: dict, rules: dict, stop_timeout: float = 10.0) -> None:
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="mnist-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop_timeout = stop_timeout
        (self.folder / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (self.folder / "prometheus.yml").write_text(
            yaml.safe_dump({**config, "rule_files": ["rules.yml"]}, sort_keys=False)
        )
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> PrometheusServer:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        command = [
            str(self.binaries.prometheus),
            f"--config.file={self.folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with open(self.folder / "prometheus.log", "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready on {self.url} within 30 s:\n{self.log()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def api(self, path: str, **params: str) -> dict | list:
        """``data`` of a successful /api/v1 answer (``path`` without the prefix)."""
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"/api/v1/{path} {params}: {response.status_code} {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's result: one {"metric": labels, "value": [time, "number"]} a series."""
        data = self.api("query", query=expr)
        assert isinstance(data, dict) and data["resultType"] == "vector", data
        return data["result"]

    def log(self) -> str:
        path = self.folder / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""
