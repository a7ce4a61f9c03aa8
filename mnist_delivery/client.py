"""A small HTTP client for the endpoint, used by deployment tests, benchmarks and users."""

from __future__ import annotations

import json

import numpy as np
import requests

from mnist_ml.model_contract import INPUT_NAME, MODEL_NAME, TRAFFIC_HEADER
from mnist_serving.options import ServerOptions


class EndpointClient:
    def __init__(
        self,
        url: str,
        model: str = MODEL_NAME,
        timeout: float = 30.0,
        traffic: str | None = None,
        max_batch: int = ServerOptions().max_batch,
    ) -> None:
        """``traffic=TEST_TRAFFIC`` marks every request as test traffic (deployment tests,
        benchmarks), which the server serves but keeps out of the production request log,
        so it can't look like drift. ``predict`` sends at most ``max_batch`` images per
        request: the server's limit."""
        self.url, self.model, self.timeout, self.max_batch = url.rstrip("/"), model, timeout, max_batch
        self.session = requests.Session()
        if traffic:
            self.session.headers[TRAFFIC_HEADER] = traffic
        self.infer_url = f"{self.url}/v2/models/{model}/infer"

    def ready(self) -> bool:
        try:
            return self.session.get(f"{self.url}/v2/health/ready", timeout=self.timeout).status_code == 200
        except requests.RequestException:
            return False

    def served_version(self) -> str:
        """The model version answering right now, from a one-image request."""
        response = self.predict_json(np.zeros((1, 28, 28), np.uint8))
        response.raise_for_status()
        return str(response.json()["model_version"])

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for uint8 (or float [0, 1]) images, sent as v2 binary tensors in batches."""
        step = self.max_batch
        parts = [self._predict_batch(images[i : i + step]) for i in range(0, len(images), step)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> requests.Response:
        """A raw request to ``path`` under the endpoint URL."""
        return self.session.post(self.url + path, data=body, headers=headers, timeout=self.timeout)

    def predict_json(self, images: np.ndarray) -> requests.Response:
        """One plain v2 JSON request, as most clients send it."""
        datatype = "UINT8" if images.dtype == np.uint8 else "FP32"
        tensor = {
            "name": INPUT_NAME,
            "shape": list(images.shape),
            "datatype": datatype,
            "data": images.ravel().tolist(),
        }
        return self.session.post(self.infer_url, json={"inputs": [tensor]}, timeout=self.timeout)

    def _predict_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        response = self.session.post(self.infer_url, timeout=self.timeout, **binary_request(images))
        if response.status_code != 200:
            raise RuntimeError(f"{self.infer_url} answered {response.status_code}: {response.text[:300]}")
        return {out["name"]: np.asarray(out["data"]).reshape(out["shape"]) for out in response.json()["outputs"]}


def binary_request(images: np.ndarray) -> dict:
    """``requests`` keyword arguments for a v2 binary-tensor request (header JSON, then bytes)."""
    datatype = "UINT8" if images.dtype == np.uint8 else "FP32"
    data = np.ascontiguousarray(images, dtype=np.uint8 if datatype == "UINT8" else np.float32).tobytes()
    tensor = {"name": INPUT_NAME, "datatype": datatype, "shape": list(images.shape)}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}]}).encode()
    return {
        "data": header + data,
        "headers": {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    }
