"""The inference endpoint over real HTTP on 127.0.0.1: both protocols, the binary fast path,
bad inputs, metrics, health and metadata. The server runs as its own process, started and
stopped here through LocalEndpoint."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from mnist_delivery.client import binary_request
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.datasets import to_unit_float
from mnist_ml.model_contract import INPUT_NAME, OUTPUT_TYPES, REQUEST_ID_HEADER, TEST_TRAFFIC, TRAFFIC_HEADER
from mnist_serving.options import ServerOptions
from mnist_serving.request_log import read_feedback, read_predictions

pytestmark = pytest.mark.slow

MAX_BATCH = 64
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def endpoint(tiny_versions, tmp_path_factory):
    _, versions = tiny_versions
    state = tmp_path_factory.mktemp("serving")
    local = LocalEndpoint(
        state,
        port=0,
        options=ServerOptions(max_batch=MAX_BATCH, max_body_bytes=MAX_BODY),
        request_log=state / "log",
    )
    deployed = local.deploy(versions[0].path, str(versions[0].version))
    yield deployed
    local.stop()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _v2(endpoint, tensor: dict) -> requests.Response:
    return requests.post(f"{endpoint.url}/v2/models/mnist/infer", json={"inputs": [tensor]}, timeout=10)


def _binary(endpoint, images: np.ndarray, datatype: str = "UINT8", size: int | None = None) -> requests.Response:
    header = {
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": datatype,
                "shape": list(images.shape),
                "parameters": {"binary_data_size": images.nbytes if size is None else size},
            }
        ]
    }
    head = json.dumps(header).encode()
    return requests.post(
        f"{endpoint.url}/v2/models/mnist/infer",
        data=head + images.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
        timeout=10,
    )


def _outputs(response: requests.Response) -> dict[str, list]:
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def test_health_metadata_and_startup_log(endpoint):
    assert requests.get(f"{endpoint.url}/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(f"{endpoint.url}/v2/health/ready", timeout=5).json() == {"ready": True}
    meta = requests.get(f"{endpoint.url}/v2/models/mnist", timeout=5).json()
    assert meta["inputs"] == [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUT_TYPES)
    log = Path(endpoint.log_file).read_text()
    assert log.count(f"serving mnist version {endpoint.version} from") == 1
    assert "http://127.0.0.1:" in log


def test_v2_json_binary_and_v1_agree(endpoint):
    images = _images(5)
    v2 = _outputs(
        _v2(endpoint, {"name": INPUT_NAME, "shape": [5, 28, 28], "datatype": "UINT8", "data": images.ravel().tolist()})
    )
    floats = to_unit_float(images)
    v2_float = _outputs(
        _v2(endpoint, {"name": INPUT_NAME, "shape": [5, 784], "datatype": "FP32", "data": floats.ravel().tolist()})
    )
    binary = _outputs(_binary(endpoint, images))
    v1 = requests.post(f"{endpoint.url}/v1/models/mnist:predict", json={"instances": floats.tolist()}, timeout=10)
    assert v1.status_code == 200
    predictions = v1.json()["predictions"]
    assert v1.json()["model_version"] == endpoint.version

    assert len(v2["class_ids"]) == 5 and len(v2["probabilities"]) == 50
    for other in (v2_float, binary):
        assert other["class_ids"] == v2["class_ids"]
        np.testing.assert_allclose(other["concept_score"], v2["concept_score"], rtol=1e-5)
    assert [p["class_id"] for p in predictions] == v2["class_ids"]
    np.testing.assert_allclose([p["concept_score"] for p in predictions], v2["concept_score"], rtol=1e-5)
    threshold = _v2(endpoint, {"name": INPUT_NAME, "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}).json()
    assert threshold["parameters"]["threshold"] == pytest.approx(0.2)
    assert v2["is_ood"] == [s > 0.2 for s in v2["concept_score"]]


BAD_V1 = {
    "wrong shape": {"instances": [[0.5] * 10]},
    "ragged": {"instances": [[[0.1] * 28] * 27 + [[0.1] * 5]]},
    "float above 1": {"instances": [[[2.0] * 28] * 28]},
    "negative int": {"instances": [[[-1] * 28] * 28]},
    "strings": {"instances": [[["a"] * 28] * 28]},
    "empty batch": {"instances": []},
    "too many images": {"instances": np.zeros((MAX_BATCH + 1, 784), np.uint8).tolist()},
    "no instances": {"inputs": [1, 2]},
}


@pytest.mark.parametrize("case", sorted(BAD_V1))
def test_bad_v1_requests_get_4xx_with_a_message(endpoint, case):
    response = requests.post(f"{endpoint.url}/v1/models/mnist:predict", json=BAD_V1[case], timeout=10)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]
    assert "Traceback" not in response.text


def test_bad_v2_and_raw_requests_get_4xx(endpoint):
    url = f"{endpoint.url}/v2/models/mnist/infer"
    nan = np.full((1, 28, 28), np.nan, np.float32)
    cases = {
        "not json": requests.post(url, data=b"{nope", timeout=10),
        "data/shape mismatch": _v2(
            endpoint, {"name": INPUT_NAME, "shape": [2, 28, 28], "datatype": "UINT8", "data": [1, 2]}
        ),
        "two inputs": requests.post(
            url, json={"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}, timeout=10
        ),
        "binary NaN": _binary(endpoint, nan, datatype="FP32"),
        "binary size lie": _binary(endpoint, _images(2), size=10),
        "binary bad datatype": _binary(endpoint, _images(1), datatype="BYTES"),
        "too large body": requests.post(url, data=b"0" * (MAX_BODY + 1), timeout=10),
        "unknown model": requests.post(f"{endpoint.url}/v2/models/other/infer", json={"inputs": []}, timeout=10),
    }
    for name, response in cases.items():
        assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text}"
        assert "Traceback" not in response.text, name
    assert cases["too large body"].status_code == 413
    assert "NaN" in cases["binary NaN"].json()["error"]
    # The server survived all of it.
    assert requests.get(f"{endpoint.url}/v2/health/ready", timeout=5).status_code == 200


def test_metrics_count_requests_flags_and_version(endpoint):
    before = _metrics(endpoint)
    _outputs(_binary(endpoint, _images(7, seed=3)))
    requests.post(f"{endpoint.url}/v1/models/mnist:predict", json={"instances": [[1]]}, timeout=10)
    after = _metrics(endpoint)
    assert after["mnist_images_total"] - before["mnist_images_total"] == 7
    assert after['mnist_requests_total{outcome="ok",protocol="v2"}'] > before.get(
        'mnist_requests_total{outcome="ok",protocol="v2"}', 0
    )
    assert after['mnist_requests_total{outcome="invalid",protocol="v1"}'] >= 1
    assert after[f'mnist_model_version_info{{version="{endpoint.version}"}}'] == 1
    assert 'mnist_request_latency_seconds_count{protocol="v2"}' in after
    assert "mnist_ood_flags_total" in after


def test_concurrent_requests_get_their_own_answers_and_are_counted_once(endpoint):
    """Requests arriving together share a model call (mnist_serving.batching): each client still
    gets the answer its own images get alone, and each image is counted once."""
    images = _images(24, seed=11)
    alone = [_outputs(_binary(endpoint, images[i : i + 1])) for i in range(len(images))]
    before = _metrics(endpoint)
    with ThreadPoolExecutor(max_workers=12) as pool:
        together = list(pool.map(lambda i: _outputs(_binary(endpoint, images[i : i + 1])), range(len(images))))
    after = _metrics(endpoint)
    for mine, reference in zip(together, alone, strict=True):
        assert mine["class_ids"] == reference["class_ids"] and mine["is_ood"] == reference["is_ood"]
        np.testing.assert_allclose(mine["probabilities"], reference["probabilities"], atol=1e-6)
        np.testing.assert_allclose(mine["concept_score"], reference["concept_score"], atol=1e-6)
    assert after["mnist_images_total"] - before["mnist_images_total"] == len(images)


def _metrics(endpoint) -> dict[str, float]:
    text = requests.get(f"{endpoint.url}/metrics", timeout=5).text
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: float(value) for key, value in pairs}


def _wait_for_log(directory: Path, request_id: str, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in read_predictions(directory)[0] if p.request_id == request_id]
        if found:
            return found
        time.sleep(0.2)
    return []


def test_predictions_are_logged_except_test_traffic(endpoint):
    log_dir = Path(endpoint.log_file).parent / "log"
    images = _images(3, seed=5)
    response = requests.post(
        f"{endpoint.url}/v1/models/mnist:predict",
        json={"instances": images.reshape(3, 784).tolist()},
        headers={REQUEST_ID_HEADER: "logged-1"},
        timeout=10,
    )
    assert response.json()["request_id"] == "logged-1"
    logged = _wait_for_log(log_dir, "logged-1")
    assert [p.index for p in logged] == [0, 1, 2]
    assert [p.predicted for p in logged] == [p["class_id"] for p in response.json()["predictions"]]
    assert all(p.version == endpoint.version for p in logged)
    # Flagged inputs are always kept, exactly as sent.
    for p, image in zip(logged, images, strict=True):
        if p.is_ood:
            np.testing.assert_array_equal(p.image, image)

    binary = requests.post(
        f"{endpoint.url}/v2/models/mnist/infer",
        **{
            **binary_request(_images(2)),
            "headers": {**binary_request(_images(2))["headers"], REQUEST_ID_HEADER: "bin-1"},
        },
        timeout=10,
    )
    assert binary.json()["id"] == "bin-1" and len(_wait_for_log(log_dir, "bin-1")) == 2

    requests.post(
        f"{endpoint.url}/v1/models/mnist:predict",
        json={"instances": images.reshape(3, 784).tolist()},
        headers={REQUEST_ID_HEADER: "test-traffic", TRAFFIC_HEADER: TEST_TRAFFIC},
        timeout=10,
    )
    assert _wait_for_log(log_dir, "test-traffic", timeout=1.5) == []


def test_feedback_is_refused_without_a_configured_token(endpoint):
    """This server was started without $MNIST_FEEDBACK_TOKEN: secure by default, every label
    is refused, with or without a token, and nothing is written. With a token:
    tests/test_locked_routes.py."""
    log_dir = Path(endpoint.log_file).parent / "log"
    url = f"{endpoint.url}/v1/models/mnist/feedback"
    served = requests.post(
        f"{endpoint.url}/v1/models/mnist:predict", json={"instances": _images(2).reshape(2, 784).tolist()}, timeout=10
    ).json()["request_id"]
    for headers in ({}, {"Authorization": "Bearer anything"}):
        response = requests.post(url, json={"request_id": served, "label": 7}, headers=headers, timeout=10)
        assert response.status_code == 403, response.text
        assert "feedback is disabled: set MNIST_FEEDBACK_TOKEN" in response.json()["error"]
    assert read_feedback(log_dir) == {}
