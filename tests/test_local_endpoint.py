"""Deploying, redeploying and stopping the local endpoint process, with real processes,
sockets and HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import requests

from mnist_delivery.backend import DeployError
from mnist_delivery.local_endpoint import LocalEndpoint, _alive

pytestmark = pytest.mark.slow

IMAGE = {"instances": np.zeros((1, 784), np.uint8).tolist()}


def _client(url: str, stop: threading.Event, results: list, session: requests.Session | None) -> None:
    """Send requests until told to stop; record (sent at, status, version) or the error."""
    post = session.post if session else requests.post
    while not stop.is_set():
        sent = time.monotonic()
        try:
            response = post(f"{url}/v1/models/mnist:predict", json=IMAGE, timeout=10)
            results.append((sent, response.status_code, response.json().get("model_version")))
        except requests.RequestException as exc:
            results.append((sent, "error", repr(exc)))


def test_redeploy_switches_versions_without_dropping_a_request(tiny_versions, tmp_path):
    _, (v1, v2) = tiny_versions
    local = LocalEndpoint(tmp_path / "serving", port=0)
    first = local.deploy(v1.path, str(v1.version))
    try:
        stop = threading.Event()
        fresh, pooled = [], []
        clients = [
            threading.Thread(target=_client, args=(first.url, stop, results, session))
            for results, session in (
                (fresh, None),
                (fresh, None),
                (pooled, requests.Session()),
                (pooled, requests.Session()),
            )
        ]
        for client in clients:
            client.start()
        time.sleep(1.0)
        switch_started = time.monotonic()
        second = local.deploy(v2.path, str(v2.version))
        switched = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for client in clients:
            client.join()

        assert (second.port, second.url) == (first.port, first.url)
        assert second.pid != first.pid and not _alive(first.pid)
        for results in (fresh, pooled):
            assert [r for r in results if r[1] != 200] == [], "requests failed during the switch"
            # While the new server warms up and both accept, either may answer; before, only
            # the old one; once deploy() returns, only the new one.
            assert {v for sent, _, v in results if sent < switch_started} == {str(v1.version)}
            assert {v for sent, _, v in results if sent > switched} == {str(v2.version)}
            assert len([r for r in results if switch_started <= r[0] <= switched]) > 10
        assert local.current() == second
    finally:
        local.stop()
    assert local.current() is None and not _alive(second.pid)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{first.url}/v2/health/live", timeout=2)


def _serving_pids(state_dir) -> list[int]:
    """Every live server process started for this state folder (the process table, not our record)."""
    return [
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if "mnist_serving" in (cmdline := " ".join(process.info["cmdline"] or [])) and str(state_dir) in cmdline
    ]


def test_two_deploys_at_once_take_turns(tiny_versions, tmp_path):
    """Two runs deploying to the same endpoint at the same moment (two deployer objects, as
    two runs would have): the second waits for the first; both succeed, one after the other,
    and afterwards exactly one server runs: the recorded one. Clients see no failure.

    Not covered: two machines sharing a state folder over a network filesystem (flock there
    depends on the filesystem)."""
    _, (v1, v2) = tiny_versions
    state = tmp_path / "serving"
    first = LocalEndpoint(state, port=0).deploy(v1.path, str(v1.version))
    stop, results = threading.Event(), []
    client = threading.Thread(target=_client, args=(first.url, stop, results, requests.Session()))
    client.start()
    outcomes: dict[str, object] = {}

    def deploy(version) -> None:
        try:
            outcomes[str(version.version)] = LocalEndpoint(state, port=0).deploy(version.path, str(version.version))
        except Exception as exc:  # noqa: BLE001 - the test reports whatever a deploy raised
            outcomes[str(version.version)] = exc

    try:
        deployers = [threading.Thread(target=deploy, args=(version,)) for version in (v2, v1)]
        for deployer in deployers:
            deployer.start()
        for deployer in deployers:
            deployer.join(timeout=300)
        time.sleep(0.5)
        stop.set()
        client.join()
        assert all(not isinstance(outcome, Exception) for outcome in outcomes.values()), outcomes
        recorded = LocalEndpoint(state).current()
        assert recorded is not None and recorded.pid in {outcome.pid for outcome in outcomes.values()}
        assert _serving_pids(state) == [recorded.pid], "a server other than the recorded one still runs"
        assert [r for r in results if r[1] != 200] == [], "requests failed while the two deploys ran"
        assert (
            requests.post(f"{first.url}/v1/models/mnist:predict", json=IMAGE, timeout=10).json()["model_version"]
            == recorded.version
        )
    finally:
        LocalEndpoint(state).stop()
    assert _serving_pids(state) == []


def test_port_in_use_by_another_process_is_a_clear_error(tiny_versions, tmp_path):
    _, (v1, _) = tiny_versions
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        local = LocalEndpoint(tmp_path, port=port)
        with pytest.raises(DeployError, match=f"cannot listen on 127.0.0.1:{port}.*another process uses the port"):
            local.deploy(v1.path, "1")
    assert local.current() is None


def test_a_version_that_cannot_start_leaves_the_running_one_serving(tiny_versions, tmp_path):
    _, (v1, _) = tiny_versions
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"version": 99}')  # no SavedModels inside
    local = LocalEndpoint(tmp_path / "serving", port=0)
    running = local.deploy(v1.path, "1")
    try:
        with pytest.raises(DeployError, match="version 99 exited with code"):
            local.deploy(broken, "99")
        assert local.current() == running
        assert requests.get(f"{running.url}/v2/health/ready", timeout=5).status_code == 200
    finally:
        local.stop()


def test_server_runs_without_dagster(tiny_versions, tmp_path):
    """The serving code imports nothing from Dagster: a server started with the dagster
    package made unimportable still loads and answers."""
    _, (v1, _) = tiny_versions
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import sys, runpy; sys.modules['dagster'] = None; "
        f"sys.argv = ['mnist_serving', '--model-dir', {str(v1.path)!r}, '--port', '{port}']; "
        "runpy.run_module('mnist_serving', run_name='__main__')"
    )
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        response = requests.post(f"http://127.0.0.1:{port}/v1/models/mnist:predict", json=IMAGE, timeout=10)
        assert response.status_code == 200
    finally:
        server.kill()
        server.wait()
