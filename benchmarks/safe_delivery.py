"""Benchmark: public responses carrying a version that fails its tests, while it is delivered.

Clients send single-image requests to the public address throughout. A version made to fail
(untrained models, published next to a trained one) is delivered two ways, side by side:
- test before traffic (what the pipeline does): started as a candidate at its private
  address, tested there, refused, discarded;
- deploy then test (the old way, for comparison): it takes the public socket, is tested,
  and the trained version is deployed again.
For each: public responses answered by the failing version (target 0 for the first) and
failed requests (target 0 for both).

    python benchmarks/safe_delivery.py [--model-dir var/models/mnist/1]   (a trained version)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import requests
from report import publish, table

from mnist_delivery.acceptance import run_acceptance
from mnist_delivery.client import EndpointClient
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.datasets import to_unit_float
from mnist_ml.model_contract import TEST_TRAFFIC
from mnist_ml.registry import FileModelRepository

ROOT = Path(__file__).resolve().parents[1]
IMAGE = {"instances": np.zeros((1, 784), np.uint8).tolist()}
MIN_ACCURACY = 0.97


def _untrained(folder: Path) -> dict[str, Path]:
    from mnist_ml.classifier import build_classifier
    from mnist_ml.concept import build_autoencoder
    from mnist_ml.savedmodel import export_classifier, export_concept_model, write_concept_calibration

    artifacts = {"classifier": folder / "classifier", "concept_model": folder / "concept_model"}
    export_classifier(build_classifier("dense", [16], seed=1), artifacts["classifier"])
    export_concept_model(build_autoencoder([32, 8], seed=1), artifacts["concept_model"])
    write_concept_calibration(artifacts["concept_model"], {"threshold": 0.2, "percentile": 99.0})
    return artifacts


def _publish(registry: FileModelRepository, artifacts: dict[str, Path], work: Path, digits: np.ndarray) -> Path:
    """Publish the SavedModels with their ONNX graph (what the server runs), as publishing does."""
    from mnist_ml.onnx_export import ONNX_ARTIFACT, export_checked

    onnx = export_checked(artifacts, work / ONNX_ARTIFACT, digits)
    return registry.publish({**artifacts, ONNX_ARTIFACT: work / ONNX_ARTIFACT}, {"onnx": onnx}).path


def _tests_pass(url: str, data: dict) -> bool:
    client = EndpointClient(url, traffic=TEST_TRAFFIC)
    report = run_acceptance(
        {"candidate": client},
        data,
        data["x_test"][:500],
        noise_amplitude=0.5,
        seed=0,
        latency_requests=20,
        log=lambda _: None,
    )["candidate"]
    return report.accuracy >= MIN_ACCURACY


def deliver(good: Path, bad: Path, data: dict, test_first: bool, clients: int = 4) -> Counter:
    """Counts of public responses by version (and 'failed') while ``bad`` is delivered."""
    with tempfile.TemporaryDirectory(prefix="bench-safe-") as tmp:
        local = LocalEndpoint(Path(tmp), port=0, log=lambda _: None)
        endpoint = local.deploy(good, "good")
        stop, seen = threading.Event(), Counter()

        def client(session: requests.Session) -> None:
            while not stop.is_set():
                try:
                    answer = session.post(f"{endpoint.url}/v1/models/mnist:predict", json=IMAGE, timeout=10)
                    seen[answer.json()["model_version"] if answer.ok else "failed"] += 1
                except requests.RequestException:
                    seen["failed"] += 1

        threads = [threading.Thread(target=client, args=(requests.Session(),)) for _ in range(clients)]
        for thread in threads:
            thread.start()
        try:
            if test_first:
                with local.candidate(bad, "bad") as candidate:
                    if _tests_pass(candidate.url, data):
                        local.promote(candidate)
            else:
                local.deploy(bad, "bad")
                if not _tests_pass(endpoint.url, data):
                    local.deploy(good, "good")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            local.stop()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var" / "models" / "mnist" / "1")
    parser.add_argument("--data", type=Path, default=ROOT / "var" / "data", help="the data store's root")
    args = parser.parse_args()
    from resources import DataStore

    if not (args.model_dir / "manifest.json").exists():
        sys.exit(f"{args.model_dir} is not a registry version: run `make run` first, or pass --model-dir")
    data = DataStore(root=str(args.data)).load_arrays("mnist")
    with tempfile.TemporaryDirectory(prefix="bench-safe-registry-") as tmp:
        registry, digits = FileModelRepository(Path(tmp) / "registry"), to_unit_float(data["x_test"])
        trained = {n: args.model_dir / n for n in ("classifier", "concept_model")}
        good = _publish(registry, trained, Path(tmp) / "good", digits)
        bad = _publish(registry, _untrained(Path(tmp) / "bad"), Path(tmp) / "bad", digits)
        safe = deliver(good, bad, data, test_first=True)
        old = deliver(good, bad, data, test_first=False)
    measured = {
        "public_responses_test_first": sum(safe.values()),
        "from_failing_version_test_first": safe["2"],
        "failed_requests_test_first": safe["failed"],
        "public_responses_deploy_then_test": sum(old.values()),
        "from_failing_version_deploy_then_test": old["2"],
        "failed_requests_deploy_then_test": old["failed"],
    }
    targets = {
        "from_failing_version_test_first": (0, "max"),
        "failed_requests_test_first": (0, "max"),
        "failed_requests_deploy_then_test": (0, "max"),
    }
    ok = publish("safe_delivery", table(measured, targets), {"trained_version": str(args.model_dir)})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
