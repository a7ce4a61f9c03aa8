"""Benchmark: production_monitoring on a request log of 1 million predictions.

Writes the log with the endpoint's own writer (``mnist_serving.request_log.RequestLog``, the real
format: 1,000 requests of 1,000 images, 5 % of the inputs kept as pixels plus every flagged one,
files rotating at 64 MiB), publishes a registry version whose manifest carries a label-free
calibration, then materializes ``production_monitoring`` in a fresh process (the Dagster asset
with its checks, plots and image grid) and reports its wall time and that process's peak RSS.

    python benchmarks/monitoring.py [--predictions 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import publish, table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH = 1000


def write_world(work: Path, predictions: int) -> None:
    """The request log, training labels and a calibrated registry version under ``work``."""
    from mnist_ml.registry import FileModelRepository
    from mnist_ml.shift import reference_sketch
    from mnist_serving.request_log import RequestLog

    rng = np.random.default_rng(0)
    (work / "data" / "processed").mkdir(parents=True)
    np.savez(work / "data" / "processed" / "mnist.npz", y_train=rng.integers(0, 10, 60_000))
    model = work / "artifact"
    model.mkdir()
    (model / "placeholder").write_text("the benchmark serves nothing")
    confidence = rng.beta(20, 1, 6000)
    manifest = {
        "training": {
            "classifier": {
                "atc": {
                    "threshold": 0.8,
                    "validation_accuracy": float(np.mean(confidence >= 0.8)),
                    "reference_confidence": reference_sketch(confidence),
                }
            },
            "concept_model": {"reference_scores": reference_sketch(rng.gamma(2, 0.004, 6000))},
        }
    }
    FileModelRepository(work / "models").publish({"classifier": model}, manifest)
    log = RequestLog(work / "serving" / "requests", seed=0)
    images = rng.integers(0, 256, (BATCH, 28, 28), dtype=np.uint8)
    for i in range(predictions // BATCH):
        probabilities = rng.dirichlet(np.full(10, 0.05), BATCH).astype(np.float32)
        scores = rng.gamma(2, 0.005, BATCH).astype(np.float32)
        # The same pixels every request (the writer only reads them); about 9 % flagged.
        log.record(f"req-{i}", "1", images, probabilities.argmax(1), probabilities, scores, scores > 0.02)
    log.close()


def measure(work: Path) -> dict:
    """In this (fresh) process: materialize production_monitoring over the log, timed."""
    from dagster import materialize

    from mnist_assets.assets import production_monitoring
    from resources import DataStore, ModelDeployer, ModelRegistry, RunConfigFile

    resources = {
        "data_store": DataStore(root=str(work / "data")),
        "deployer": ModelDeployer(state_dir=str(work / "serving")),
        "registry": ModelRegistry(root=str(work / "models")),
        "run_config": RunConfigFile(),
    }
    config = {"ops": {"production_monitoring": {"config": {"window_minutes": 600}}}}
    start = time.perf_counter()
    result = materialize([production_monitoring], run_config=config, resources=resources)
    seconds = time.perf_counter() - start
    meta = result.asset_materializations_for_node("production_monitoring")[0].metadata
    return {"seconds": seconds, "images": meta["images"].value, "estimated_accuracy": meta["estimated_accuracy"].value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process's mode
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        write_world(work, args.predictions)
        written = time.perf_counter() - start
        log_bytes = sum(p.stat().st_size for p in (work / "serving" / "requests").iterdir())
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(work)], capture_output=True, text=True, cwd=ROOT
        )
        if child.returncode:
            sys.exit(child.stderr[-3000:])
        found = json.loads(child.stdout.strip().splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if found["images"] != args.predictions:
        sys.exit(f"the window held {found['images']} predictions, not {args.predictions}")
    measured = {
        "predictions": args.predictions,
        "log_mb": round(log_bytes / 2**20, 1),
        "monitoring_seconds": round(found["seconds"], 2),
        "monitoring_peak_rss_mb": round(peak_mb),
        "log_write_seconds": round(written, 1),
    }
    ok = publish(
        "monitoring",
        table(measured, {"monitoring_seconds": (10.0, "max"), "monitoring_peak_rss_mb": (1024, "max")}),
        {"estimated_accuracy": found["estimated_accuracy"]},
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
