"""``mnist-ops``, the operator's command, run as the installed console script in a subprocess
(``pip install -e .`` puts it in the venv's bin), with its settings from ``MNIST_*`` variables
pointing at temp folders: a copy of the two tiny real SavedModel versions as the registry, a
fresh serving state folder, port 0.

Covered: listing versions (table and JSON), the errors for an empty registry, an unknown
version, a failed version and a missing endpoint; promote (the version really answers over
HTTP on 127.0.0.1), status (one serving process), predict (a PNG file, and a synthetic digit
when the data store holds no MNIST), rollback in one command, stop.
Not covered: the kubernetes backend through the command (``ModelDeployer``'s backend is tested
in test_k8s_serving.py), --digit with a real MNIST test set, a deploy that fails half way
(test_deploy_faults.py covers the deployer itself)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_delivery.client import EndpointClient
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.registry import FileModelRepository

pytestmark = pytest.mark.slow  # every command is a subprocess that imports the resources (~2 s)

COMMAND = Path(sys.executable).parent / "mnist-ops"


@pytest.fixture
def settings(tmp_path: Path) -> dict[str, str]:
    """The environment of a deployment whose every folder is under ``tmp_path``."""
    if not COMMAND.is_file():
        pytest.fail(f"{COMMAND} is missing: install the package (make install, or pip install -e . --no-deps)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("MNIST_")}
    return {
        **env,
        "MNIST_REGISTRY_ROOT": str(tmp_path / "registry"),
        "MNIST_SERVING_STATE_DIR": str(tmp_path / "serving"),
        "MNIST_SERVING_PORT": "0",
        "MNIST_DATA_ROOT": str(tmp_path / "data"),
    }


@pytest.fixture
def registry(tiny_versions, settings) -> FileModelRepository:
    """Versions 1 and 2 copied from the session's tiny registry, with no aliases or failed marks."""
    source, _ = tiny_versions
    repository = FileModelRepository(Path(settings["MNIST_REGISTRY_ROOT"]))
    repository.model_dir.mkdir(parents=True)
    for version in source.versions():
        shutil.copytree(source.model_dir / str(version), repository.model_dir / str(version))
    return repository


def ops(settings: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMMAND), *args], env=settings, capture_output=True, text=True, timeout=300)


def ops_json(settings: dict[str, str], *args: str) -> dict:
    done = ops(settings, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_errors_say_what_to_do_without_starting_anything(settings, registry):
    """An empty registry, an unknown version, no previous version, no endpoint: each exits 1
    with a message naming the next step; nothing is started (no server state is written)."""
    empty = {**settings, "MNIST_REGISTRY_ROOT": str(Path(settings["MNIST_DATA_ROOT"]) / "none")}
    listed = ops(empty, "list")
    assert listed.returncode == 0 and "no versions in" in listed.stdout and "make run" in listed.stdout

    rows = ops_json(settings, "list")["versions"]
    assert [(row["version"], row["aliases"], row["failed"]) for row in rows] == [(1, [], None), (2, [], None)]

    unknown = ops(settings, "promote", "7")
    assert unknown.returncode == 1 and "no version 7" in unknown.stderr and "available: 1, 2" in unknown.stderr
    no_previous = ops(settings, "rollback")
    assert no_previous.returncode == 1 and "no previous version" in no_previous.stderr
    no_endpoint = ops(settings, "predict", "--digit", "4", "--json")
    assert no_endpoint.returncode == 1 and "mnist-ops promote" in no_endpoint.stderr
    assert "no endpoint is running" in json.loads(no_endpoint.stdout)["error"]
    assert ops(settings, "status").stdout.startswith("no endpoint is running")
    assert ops(settings, "predict").returncode == 2  # usage: an image or --digit is required

    registry.mark_failed(2, "accuracy 0.1 below 0.97")
    refused = ops(settings, "promote", "2")
    assert refused.returncode == 1
    assert "version 2 is marked failed (accuracy 0.1 below 0.97)" in refused.stderr
    assert "FAILED: accuracy 0.1 below 0.97" in ops(settings, "list").stdout
    assert not Path(settings["MNIST_SERVING_STATE_DIR"], "endpoint.json").exists()


def test_promote_status_predict_rollback_stop(settings, registry, tmp_path):
    """The operator's round: promote 1, promote 2, see one server serving 2, send a PNG and a
    digit, roll back to 1 in one command, refuse a failed version, stop."""
    try:
        first = ops_json(settings, "promote", "1")
        url = first["endpoint"]["url"]
        assert first["version"] == 1 and first["aliases"]["production"] == 1
        assert EndpointClient(url).served_version() == "1"

        second = ops(settings, "promote", "2")
        assert second.returncode == 0, second.stderr
        assert f"promoted: version 2 serves at {url}" in second.stdout
        assert "production: 2 (was 1), previous: 1" in second.stdout
        assert EndpointClient(url).served_version() == "2"
        assert registry.aliases() == {"production": 2, "previous": 1}
        table = ops(settings, "list").stdout.splitlines()
        assert table[1].split()[:2] == ["1", "previous"] and table[2].split()[:2] == ["2", "production"]

        status = ops_json(settings, "status")
        assert status["endpoint"]["version"] == "2" and status["registry_production"] == 2
        assert [(s["version"], s["role"]) for s in status["servers"]] == [("2", "serving")]

        png = tmp_path / "digit.png"
        Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(png)
        answer = ops_json(settings, "predict", str(png))
        assert answer["version"] == "2" and answer["url"] == url and answer["image"] == str(png)
        assert 0 <= answer["class_id"] <= 9 and len(answer["probabilities"]) == 10
        assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-3)
        assert isinstance(answer["is_ood"], bool) and answer["concept_score"] >= 0
        drawn = ops(settings, "predict", "--digit", "3")
        assert drawn.returncode == 0 and "image: synthetic 3" in drawn.stdout and "concept score" in drawn.stdout
        bad_png = tmp_path / "big.png"
        Image.new("L", (32, 32)).save(bad_png)
        assert "size 32x32, expected 28x28" in ops(settings, "predict", str(bad_png)).stderr

        rolled = ops(settings, "rollback")
        assert rolled.returncode == 0, rolled.stderr
        assert f"rolled back: version 1 serves at {url}" in rolled.stdout
        assert EndpointClient(url).served_version() == "1"
        assert registry.aliases()["production"] == 1
        assert [s["version"] for s in ops_json(settings, "status")["servers"]] == ["1"]

        registry.mark_failed(2, "smoke test failed")
        refused = ops(settings, "promote", "2")
        assert refused.returncode == 1 and "marked failed (smoke test failed)" in refused.stderr
        assert EndpointClient(url).served_version() == "1"

        stopped = ops_json(settings, "stop")
        assert stopped["stopped"]["version"] == "1"
        assert not EndpointClient(url, timeout=2).ready()
        assert ops_json(settings, "status") == {"endpoint": None, "servers": [], "registry_production": 1}
        assert "nothing to stop" in ops(settings, "stop").stdout
    finally:
        LocalEndpoint(Path(settings["MNIST_SERVING_STATE_DIR"])).stop()
