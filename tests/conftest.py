"""Shared pytest fixtures."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests


@dataclass
class HttpMirror:
    """A real HTTP server on 127.0.0.1 serving `root`; `url` is its base URL."""

    root: Path
    url: str = ""
    requests: list[str] = field(default_factory=list)  # request paths, in order
    # Request path -> status codes to answer with, one per request, before serving normally.
    scripted: dict[str, list[int]] = field(default_factory=dict)


@pytest.fixture
def http_mirror(tmp_path: Path) -> Iterator[HttpMirror]:
    """Serve a fresh temp dir over HTTP for one test; stopped and joined afterwards."""
    mirror = HttpMirror(root=tmp_path / "www")
    mirror.root.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(mirror.root), **kwargs)

        def do_GET(self) -> None:
            mirror.requests.append(self.path)
            queued = mirror.scripted.get(self.path)
            if queued:
                self.send_error(queued.pop(0))
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            """Keep test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval keeps shutdown() (and so teardown) fast.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    mirror.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


SHARED_DATA = Path(os.environ.get("MNIST_MIRROR_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def real_mirrors() -> dict[str, list[str]]:
    """Mirrors holding the real datasets: the local copy in ../shared/data (or
    $MNIST_MIRROR_DIR) when present, else the upstream mirrors if they answer."""
    if (SHARED_DATA / "mnist").is_dir() and (SHARED_DATA / "notmnist").is_dir():
        url = SHARED_DATA.resolve().as_uri()
        return {"mnist": [f"{url}/mnist/"], "notmnist": [f"{url}/notmnist/"]}
    from mnist_assets.config import MNIST_MIRRORS, NOTMNIST_MIRRORS

    try:
        requests.head(f"{MNIST_MIRRORS[0]}t10k-labels-idx1-ubyte.gz", timeout=5).raise_for_status()
        requests.head(f"{NOTMNIST_MIRRORS[0]}notMNIST_small.tar.gz", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.skip(f"real data unavailable: no local mirror at {SHARED_DATA} and upstream unreachable ({exc})")
    return {"mnist": MNIST_MIRRORS, "notmnist": NOTMNIST_MIRRORS}


@pytest.fixture(scope="session")
def tiny_versions(tmp_path_factory):
    """A registry with two published versions of small untrained models: real SavedModels
    with the real signatures and their ONNX export (checked for parity on random images, as
    publishing does on the test digits), quick to build. Their predictions are meaningless."""
    from mnist_ml.classifier import build_classifier
    from mnist_ml.concept import build_autoencoder
    from mnist_ml.onnx_export import ONNX_ARTIFACT, export_checked
    from mnist_ml.registry import FileModelRepository
    from mnist_ml.savedmodel import export_classifier, export_concept_model, write_concept_calibration

    root = tmp_path_factory.mktemp("tiny")
    repository = FileModelRepository(root / "registry")
    versions = []
    for seed in (1, 2):
        artifacts = {"classifier": root / f"clf{seed}", "concept_model": root / f"concept{seed}"}
        export_classifier(build_classifier("dense", [16], seed=seed), artifacts["classifier"])
        export_concept_model(build_autoencoder([32, 8], seed=seed), artifacts["concept_model"])
        write_concept_calibration(artifacts["concept_model"], {"threshold": 0.2, "percentile": 99.0})
        images = np.random.default_rng(seed).random((256, 28, 28), dtype=np.float32)
        onnx = export_checked(artifacts, root / f"onnx{seed}", images)
        artifacts[ONNX_ARTIFACT] = root / f"onnx{seed}"
        versions.append(repository.publish(artifacts, {"note": f"tiny seed {seed}", "onnx": onnx}))
    return repository, versions


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the whole session (tests/postgres_server.py). Without
    the binaries the Postgres tests skip with the reason, except in CI, where .ci/run
    installs them and a missing server is a failure."""
    from postgres_server import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with PostgresServer(bin_dir) as server:
        yield server


@pytest.fixture(scope="session")
def prometheus_binaries():
    """prometheus and promtool (tests/prometheus_server.py). Without them the Prometheus tests
    skip with the reason, except in CI, where .ci/run installs them and their absence is a
    failure."""
    from prometheus_server import find_binaries

    binaries = find_binaries()
    if binaries is None:
        message = "prometheus/promtool are not installed (Debian: apt-get install prometheus; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binaries
