"""Acceptance tests of a *deployed* endpoint, over HTTP: what the model does once served,
not what it did in memory."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from mnist_delivery.client import EndpointClient
from mnist_ml.datasets import to_unit_float
from mnist_ml.evaluation import add_uniform_noise, confusion_matrix, per_class_accuracy
from mnist_ml.log import Log
from mnist_ml.model_contract import INPUT_NAME, MODEL_NAME


@dataclass(frozen=True)
class Malformed:
    name: str
    path: str  # relative to the endpoint URL
    body: bytes
    headers: dict[str, str]


def malformed_requests(model: str = MODEL_NAME) -> list[Malformed]:
    """Requests a client might get wrong; each must be answered with a 4xx, not a crash."""
    v1, v2 = f"/v1/models/{model}:predict", f"/v2/models/{model}/infer"
    as_json = {"Content-Type": "application/json"}

    def v2_tensor(shape: list[int], datatype: str, data: list) -> bytes:
        return json.dumps(
            {"inputs": [{"name": INPUT_NAME, "shape": shape, "datatype": datatype, "data": data}]}
        ).encode()

    return [
        Malformed("not JSON", v2, b"{not json", as_json),
        Malformed("v1 without instances", v1, b'{"inputs": []}', as_json),
        Malformed("wrong image shape", v1, json.dumps({"instances": [[0.5] * 10]}).encode(), as_json),
        Malformed("float pixels above 1", v1, json.dumps({"instances": [[2.0] * 784]}).encode(), as_json),
        Malformed("strings for pixels", v1, json.dumps({"instances": [["x"] * 784]}).encode(), as_json),
        Malformed("empty batch", v1, b'{"instances": []}', as_json),
        Malformed("data shorter than shape", v2, v2_tensor([2, 28, 28], "UINT8", [1, 2, 3]), as_json),
        Malformed("NaN pixels", v2, v2_tensor([1, 784], "FP32", ["NaN"] * 784), as_json),
        Malformed("unknown model", f"/v2/models/{model}-x/infer", v2_tensor([1, 784], "UINT8", [0] * 784), as_json),
    ]


@dataclass(frozen=True)
class AcceptanceReport:
    version: str
    images: int
    accuracy: float
    per_class_accuracy: list[float]
    clean_flag_rate: float
    notmnist_flag_rate: float
    noisy_flag_rate: float
    latency_ms: dict[str, float]
    latencies_ms: list[float]
    malformed: dict[str, int]
    seconds: float

    @property
    def malformed_rejected(self) -> float:
        """Share of malformed requests answered with a 4xx."""
        return float(np.mean([400 <= status < 500 for status in self.malformed.values()]))

    def as_dict(self) -> dict:
        summary = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        return {**summary, "malformed_rejected": self.malformed_rejected}


def single_image_latencies(clients: list[EndpointClient], images: np.ndarray, requests_count: int) -> list[np.ndarray]:
    """Seconds per one-image v2 JSON request, sent one after another, to each client in turn:
    endpoints compared this way see the same machine load at the same moments."""
    seconds: list[list[float]] = [[] for _ in clients]
    for i in range(requests_count):
        for client, times in zip(clients, seconds, strict=True):
            start = time.perf_counter()
            response = client.predict_json(images[i % len(images)][None])
            times.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(
                    f"single-image request to {client.url} failed with {response.status_code}: {response.text[:300]}"
                )
    return [np.array(times) for times in seconds]


def run_acceptance(
    clients: dict[str, EndpointClient],
    mnist: dict[str, np.ndarray],
    notmnist: np.ndarray,
    *,
    noise_amplitude: float,
    seed: int,
    latency_requests: int,
    log: Log = print,
) -> dict[str, AcceptanceReport]:
    """For each endpoint (by name), on the same fixed sets: accuracy on the MNIST test set,
    out-of-distribution flag rates on clean digits, notMNIST and noisy digits, single-image
    latency (measured interleaved across the endpoints) and malformed-input handling."""
    x_test, y_test = mnist["x_test"], mnist["y_test"]
    noisy_images = add_uniform_noise(to_unit_float(x_test), noise_amplitude, seed)
    timed = dict(zip(clients, single_image_latencies(list(clients.values()), x_test, latency_requests), strict=True))
    reports = {}
    for name, client in clients.items():
        start = time.perf_counter()
        clean = client.predict(x_test)
        matrix = confusion_matrix(y_test, clean["class_ids"])
        log(f"MNIST test through {name} ({client.url}): accuracy {np.trace(matrix) / matrix.sum():.4f}")
        letters = client.predict(notmnist)
        noisy = client.predict(noisy_images)
        cases = malformed_requests(client.model)
        malformed = {case.name: client.post(case.path, case.body, case.headers).status_code for case in cases}
        milliseconds = timed[name] * 1000
        reports[name] = AcceptanceReport(
            version=client.served_version(),
            images=len(x_test) + len(notmnist) + len(noisy_images),
            accuracy=float(np.trace(matrix) / matrix.sum()),
            per_class_accuracy=per_class_accuracy(matrix).tolist(),
            clean_flag_rate=float(np.mean(clean["is_ood"])),
            notmnist_flag_rate=float(np.mean(letters["is_ood"])),
            noisy_flag_rate=float(np.mean(noisy["is_ood"])),
            latency_ms={f"p{q}": float(np.percentile(milliseconds, q)) for q in (50, 95, 99)},
            latencies_ms=milliseconds.tolist(),
            malformed=malformed,
            seconds=time.perf_counter() - start + float(timed[name].sum()),
        )
    return reports


def smoke_test(client: EndpointClient, images: np.ndarray, expected_class_ids: np.ndarray, version: str) -> list[str]:
    """After traffic moved: the public address answers as ``version`` with the class ids the
    candidate gave for the same images at its private address. Returns what went wrong."""
    problems = []
    answered = client.served_version()
    if answered != version:
        problems.append(f"the public address answered as version {answered}, not {version}")
    class_ids = client.predict(images)["class_ids"]
    if not np.array_equal(class_ids, expected_class_ids):
        problems.append(f"{int(np.sum(class_ids != expected_class_ids))} of {len(images)} class ids differ")
    return problems
