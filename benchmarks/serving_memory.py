"""Peak memory of one model server under the largest allowed batches, to size the serving
pod's memory limit (mnist_delivery/k8s_endpoint.py).

Starts ``python -m mnist_serving`` on a registry version (by default a fresh one with the
architecture run_config.yaml ships, read from it: the CNN classifier and the 784-256-128-256-784
autoencoder; memory depends on the architecture, not on the trained weights), with the request
log on, then sends batches of the largest allowed size (1,024 images, v2 binary and v2 JSON,
uint8 and float32) from several threads at once, sampling the server's RSS with psutil every
20 ms. The target: the peak leaves the serving pod's memory limit (``ServingSpec.memory``) a
margin of 1.5x.

    python benchmarks/serving_memory.py [--model-dir var/models/mnist/1] [--seconds 30]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
from report import publish, table

from mnist_delivery.client import EndpointClient, binary_request
from mnist_delivery.k8s_endpoint import ServingSpec
from mnist_ml.datasets import to_unit_float
from mnist_serving.sockets import bind_listener

ROOT = Path(__file__).resolve().parents[1]
MAX_BATCH = 1024  # serving.max_batch and the server's --max-batch default: the largest allowed request


def shipped_architecture_version(root: Path) -> Path:
    """A registry version with run_config.yaml's architecture and untrained weights."""
    from mnist_ml.classifier import build_classifier
    from mnist_ml.concept import build_autoencoder
    from mnist_ml.onnx_export import ONNX_ARTIFACT, export_checked
    from mnist_ml.registry import FileModelRepository
    from mnist_ml.savedmodel import export_classifier, export_concept_model, write_concept_calibration

    artifacts = {"classifier": root / "classifier", "concept_model": root / "concept_model"}
    shipped = yaml.safe_load((ROOT / "run_config.yaml").read_text())
    classifier, concept = shipped["classifier"], shipped["concept_model"]
    print(f"classifier {classifier['architecture']} {classifier['hidden_units']}, encoder {concept['encoder_units']}")
    export_classifier(
        build_classifier(classifier["architecture"], classifier["hidden_units"], seed=0), artifacts["classifier"]
    )
    export_concept_model(build_autoencoder(concept["encoder_units"], seed=0), artifacts["concept_model"])
    write_concept_calibration(artifacts["concept_model"], {"threshold": 0.02, "percentile": 99.0})
    images = np.random.default_rng(0).random((256, 28, 28), dtype=np.float32)
    onnx = export_checked(artifacts, root / ONNX_ARTIFACT, images)
    artifacts[ONNX_ARTIFACT] = root / ONNX_ARTIFACT
    return FileModelRepository(root / "registry").publish(artifacts, {"note": "memory benchmark", "onnx": onnx}).path


def load(client: EndpointClient, stop: threading.Event, kind: str, errors: list[str]) -> None:
    rng = np.random.default_rng(0)
    uint8 = rng.integers(0, 256, (MAX_BATCH, 28, 28), dtype=np.uint8)
    floats = to_unit_float(uint8)
    while not stop.is_set():
        images = uint8 if kind.endswith("uint8") else floats
        if kind.startswith("binary"):
            response = client.session.post(client.infer_url, timeout=60, **binary_request(images))
        else:
            response = client.predict_json(images)
        if response.status_code != 200:
            errors.append(f"{kind}: {response.status_code} {response.text[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads-per-kind", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or shipped_architecture_version(Path(tmp))
        listener = bind_listener("127.0.0.1", 0)
        port = listener.getsockname()[1]
        command = [sys.executable, "-m", "mnist_serving", "--model-dir", str(model_dir), "--fd", str(listener.fileno())]
        command += ["--request-log-dir", str(Path(tmp) / "requests")]
        server = subprocess.Popen(command, pass_fds=[listener.fileno()], cwd=ROOT)
        listener.close()
        try:
            client = EndpointClient(f"http://127.0.0.1:{port}", timeout=60)
            deadline = time.monotonic() + 120
            while not client.ready():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.5)
            process = psutil.Process(server.pid)
            idle_mb = process.memory_info().rss / 2**20
            stop, errors = threading.Event(), []
            kinds = ["binary-uint8", "binary-float32", "json-uint8", "json-float32"]
            threads = [
                threading.Thread(target=load, args=(EndpointClient(client.url, timeout=60), stop, kind, errors))
                for kind in kinds
                for _ in range(args.threads_per_kind)
            ]
            for thread in threads:
                thread.start()
            peak_mb, end = idle_mb, time.monotonic() + args.seconds
            while time.monotonic() < end:
                peak_mb = max(peak_mb, process.memory_info().rss / 2**20)
                time.sleep(0.02)
            stop.set()
            for thread in threads:
                thread.join()
        finally:
            server.terminate()
            server.wait(30)
    print(f"load: {len(threads)} threads ({', '.join(kinds)}), {MAX_BATCH} images per request, {args.seconds:.0f} s")
    if errors:
        raise SystemExit("\n".join(errors[:5]))
    limit_mib = int(ServingSpec().memory.removesuffix("Mi"))
    measured = {"idle_rss_mib": round(idle_mb), "peak_rss_mib": round(peak_mb)}
    extra = {"model_dir": str(args.model_dir or "run_config.yaml's architecture"), "seconds": args.seconds}
    publish("serving_memory", table(measured, {"peak_rss_mib": (limit_mib / 1.5, "max")}), extra)


if __name__ == "__main__":
    main()
