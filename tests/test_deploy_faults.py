"""Test before traffic and crash safety of the local endpoint, with real server processes,
sockets and HTTP on 127.0.0.1, and real SIGKILLs.

A candidate answers at its private address only until it is promoted; the deployer is
SIGKILLed at each step of a deploy, and the servers themselves are killed. After each kill:
exactly one server process of the endpoint runs, it is the recorded one, the public address
answers with its version, no client request failed, and a rerun deploys with no manual step.

Not covered: the machine losing power (the record is written atomically, but nothing here
restarts servers at boot), and two machines sharing one state folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import requests
from test_local_endpoint import IMAGE, _client

from mnist_delivery.local_endpoint import DEPLOY_STEPS, RECORDED, LocalEndpoint

pytestmark = pytest.mark.slow


def _served_version(url: str) -> str:
    return requests.post(f"{url}/v1/models/mnist:predict", json=IMAGE, timeout=10).json()["model_version"]


def _settled(local: LocalEndpoint, timeout: float = 15.0) -> list[int]:
    """Wait until one server process runs (the servers settle by themselves); return the pids."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [server.pid for server in local._running()]
        if len(pids) == 1 or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


class Traffic:
    """Clients on fresh and pooled connections, sending single-image requests until stopped."""

    def __init__(self, url: str) -> None:
        self.stop, self.results = threading.Event(), []
        sessions = (None, None, requests.Session(), requests.Session())
        self.threads = [threading.Thread(target=_client, args=(url, self.stop, self.results, s)) for s in sessions]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def failures(self) -> list:
        return [result for result in self.results if result[1] != 200]


def test_a_candidate_answers_privately_until_promoted(tiny_versions, tmp_path):
    """Its tests reach it at its private URL while every public request still gets the old
    version; discarded, it stops and the old version serves on; promoted, it takes over."""
    _, (v1, v2) = tiny_versions
    local = LocalEndpoint(tmp_path / "serving", port=0)
    first = local.deploy(v1.path, str(v1.version))
    try:
        with Traffic(first.url) as traffic:
            with local.candidate(v2.path, str(v2.version)) as candidate:
                assert candidate.url != first.url
                assert _served_version(candidate.url) == str(v2.version)
                time.sleep(1.0)  # public traffic meanwhile
            assert local.current() == first
            time.sleep(0.5)
        assert traffic.failures() == []
        assert {version for _, _, version in traffic.results} == {str(v1.version)}
        assert [server.pid for server in local._running()] == [first.pid]

        with local.candidate(v2.path, str(v2.version)) as candidate:
            second = local.promote(candidate)
        assert candidate.promoted_at is not None
        assert _served_version(first.url) == str(v2.version) and local.current() == second
    finally:
        local.stop()


def test_a_first_candidate_not_promoted_leaves_nothing_behind(tiny_versions, tmp_path):
    _, (v1, _) = tiny_versions
    local = LocalEndpoint(tmp_path / "serving", port=0)
    with local.candidate(v1.path, str(v1.version)) as candidate:
        public = candidate.endpoint.url
        assert _served_version(candidate.url) == str(v1.version)
        # Bound (a port in use fails before any start) but nobody accepts: a public request waits
        # in the queue, for the tested candidate once promoted, and is refused if it is not.
        with pytest.raises(requests.Timeout):
            requests.post(f"{public}/v1/models/mnist:predict", json=IMAGE, timeout=0.5)
    assert local.current() is None and local._running() == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{public}/v2/health/live", timeout=2)


DEPLOYER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mnist_delivery.local_endpoint import LocalEndpoint

    state, port, model_dir, version, kill_at = sys.argv[1:]

    def pause(step):
        print(step, flush=True)
        if step == kill_at:
            time.sleep(3600)  # the test SIGKILLs us here

    LocalEndpoint(Path(state), port=int(port), on_step=pause, log=lambda line: None).deploy(Path(model_dir), version)
    """
)


@pytest.mark.parametrize("kill_at", DEPLOY_STEPS)
def test_killing_the_deployer_at_each_step_leaves_one_recorded_version(tiny_versions, tmp_path, kill_at):
    _, (v1, v2) = tiny_versions
    state = tmp_path / "serving"
    local = LocalEndpoint(state, port=0)
    first = local.deploy(v1.path, str(v1.version))
    try:
        with Traffic(first.url) as traffic:
            deployer = subprocess.Popen(
                [sys.executable, "-c", DEPLOYER, str(state), str(first.port), str(v2.path), str(v2.version), kill_at],
                stdout=subprocess.PIPE,
                text=True,
            )
            for line in deployer.stdout:
                if line.strip() == kill_at:
                    break
            os.kill(deployer.pid, signal.SIGKILL)
            deployer.wait()
            pids = _settled(local)
            time.sleep(0.5)
        recorded = local.current()
        assert recorded is not None and pids == [recorded.pid], f"killed at {kill_at!r}: servers {pids}"
        expected = str(v2.version) if DEPLOY_STEPS.index(kill_at) >= DEPLOY_STEPS.index(RECORDED) else str(v1.version)
        assert recorded.version == expected
        assert {_served_version(first.url) for _ in range(20)} == {expected}
        assert traffic.failures() == [], f"killed at {kill_at!r}"

        rerun = local.deploy(v1.path, str(v1.version))
        assert _settled(local) == [rerun.pid] and _served_version(first.url) == str(v1.version)
    finally:
        local.stop()
    assert local._running() == []


def test_a_killed_server_is_restarted_by_status_and_a_rerun_works(tiny_versions, tmp_path):
    """SIGKILL of the serving process: status (``serving``) restarts the recorded version on
    the same address; a deploy afterwards works as usual."""
    _, (v1, v2) = tiny_versions
    logs: list[str] = []
    local = LocalEndpoint(tmp_path / "serving", port=0, log=logs.append)
    first = local.deploy(v1.path, str(v1.version))
    try:
        os.kill(first.pid, signal.SIGKILL)
        os.waitpid(first.pid, 0)  # our child: gone once reaped
        servers = local.serving()
        restarted = local.current()
        assert restarted is not None and restarted.pid != first.pid and restarted.url == first.url
        assert [(s.name, s.version, s.role) for s in servers] == [(f"pid {restarted.pid}", "1", "serving")]
        assert _served_version(first.url) == str(v1.version)
        assert any(f"pid {first.pid}) is not running" in line for line in logs)
        second = local.deploy(v2.path, str(v2.version))
        assert _settled(local) == [second.pid] and _served_version(first.url) == str(v2.version)
    finally:
        local.stop()


def test_a_candidate_killed_during_its_tests_never_serves(tiny_versions, tmp_path):
    _, (v1, v2) = tiny_versions
    local = LocalEndpoint(tmp_path / "serving", port=0)
    first = local.deploy(v1.path, str(v1.version))
    try:
        with Traffic(first.url) as traffic:
            with local.candidate(v2.path, str(v2.version)) as candidate:
                os.kill(candidate.endpoint.pid, signal.SIGKILL)
                with pytest.raises(requests.ConnectionError):
                    _served_version(candidate.url)
            time.sleep(0.5)
        assert traffic.failures() == []
        assert local.current() == first and [s.pid for s in local._running()] == [first.pid]
    finally:
        local.stop()


def test_an_unrecorded_server_is_stopped_by_the_next_call(tiny_versions, tmp_path):
    """A server of this endpoint that is not the recorded one (started by hand here, as an
    orphan of an older release would be) is found by its command line and stopped."""
    _, (v1, v2) = tiny_versions
    state = tmp_path / "serving"
    local = LocalEndpoint(state, port=0)
    first = local.deploy(v1.path, str(v1.version))
    orphan = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_serving",
            "--model-dir",
            str(v2.path),
            "--port",
            "0",
            "--record",
            str(local.state_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert orphan.pid in [s.pid for s in local._running()]
        roles = {server.name: server.role for server in local.serving()}
        assert roles == {f"pid {first.pid}": "serving"}
        assert orphan.wait(timeout=30) is not None
    finally:
        orphan.kill()
        local.stop()
