"""Locked routes, over real HTTP on 127.0.0.1: only the documented routes answer (the
model-repository load/unload, listings and docs other servers offer are refused), readiness means the model
answers, and feedback takes labels only with the bearer token from $MNIST_FEEDBACK_TOKEN (401
without or with a wrong one, nothing written, the token never in a log), one label per
prediction (409 for a different second label, counted; the same label again is a 200), with
exactly one winner when two requests race. The server runs as its own process (LocalEndpoint)
with the token in its environment, as a deployer passes it.

Not covered here: feedback refused on a server started without a token (tests/test_serving.py,
whose server has none), the Kubernetes Secret (tests/test_k8s_serving.py checks the Deployment
takes it), and two server processes racing for one label (tests/test_request_log.py races
processes on the label store itself).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests

from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.model_contract import MODEL_NAME
from mnist_serving.app import Endpoints
from mnist_serving.options import FEEDBACK_TOKEN_ENV, ServerOptions
from mnist_serving.predictor import MnistPredictor
from mnist_serving.request_log import read_feedback
from mnist_serving.routes import documented_routes

TOKEN = "test-token-8f2c1d"


@pytest.fixture(scope="module")
def endpoint(tiny_versions, tmp_path_factory):
    _, versions = tiny_versions
    state = tmp_path_factory.mktemp("locked")
    local = LocalEndpoint(state, port=0, options=ServerOptions(), request_log=state / "log")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(FEEDBACK_TOKEN_ENV, TOKEN)
        deployed = local.deploy(versions[0].path, str(versions[0].version))
    yield deployed
    local.stop()


def _log_dir(endpoint) -> Path:
    return Path(endpoint.log_file).parent / "log"


def _served_request(endpoint, images: int = 2) -> str:
    pixels = np.zeros((images, 784), np.uint8).tolist()
    response = requests.post(f"{endpoint.url}/v1/models/{MODEL_NAME}:predict", json={"instances": pixels}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def _feedback(endpoint, body: dict, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{endpoint.url}/v1/models/{MODEL_NAME}/feedback", json=body, headers=headers, timeout=10)


def _metric(endpoint, line_start: str) -> float:
    text = requests.get(f"{endpoint.url}/metrics", timeout=5).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


UNDOCUMENTED = [
    ("POST", f"/v2/repository/models/{MODEL_NAME}/unload"),
    ("POST", f"/v2/repository/models/{MODEL_NAME}/load"),
    ("POST", "/v2/repository/index"),
    ("GET", "/v2/models"),
    ("GET", "/v1/models"),
    ("GET", f"/v1/models/{MODEL_NAME}"),
    ("POST", f"/v1/models/{MODEL_NAME}:explain"),
    ("GET", "/"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/v2/models/other/ready"),
]


def test_only_documented_routes_exist(endpoint):
    for method, path in UNDOCUMENTED:
        response = requests.request(method, f"{endpoint.url}{path}", timeout=10)
        assert response.status_code == 404, f"{method} {path}: {response.status_code} {response.text}"
    wrong_method = requests.get(f"{endpoint.url}/v2/models/{MODEL_NAME}/infer", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    # The unload attempts changed nothing: the model still answers and says it is ready.
    for path in ("/v2/health/ready", f"/v2/models/{MODEL_NAME}/ready"):
        assert requests.get(f"{endpoint.url}{path}", timeout=5).status_code == 200, path
    _served_request(endpoint)
    for path, methods in documented_routes(MODEL_NAME).items():
        if "GET" in methods:
            assert requests.get(f"{endpoint.url}{path}", timeout=5).status_code == 200, path


def _asgi_get(app, path: str) -> tuple[int, dict]:
    """One GET through an ASGI app, in process: the status and the JSON body."""
    sent = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send))
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def test_readiness_is_false_until_the_model_answers(tmp_path):
    """The app the server builds, in process: an unloaded model makes both readiness answers
    false, with a 503."""
    app = Endpoints(MnistPredictor(MODEL_NAME, tmp_path), feedback=None)
    assert _asgi_get(app, "/v2/health/ready") == (503, {"ready": False})
    assert _asgi_get(app, f"/v2/models/{MODEL_NAME}/ready") == (503, {"name": MODEL_NAME, "ready": False})


def test_feedback_needs_the_bearer_token_and_writes_nothing_without_it(endpoint):
    served = _served_request(endpoint)
    before = _metric(endpoint, 'mnist_feedback_total{outcome="unauthorized"}')
    for token in (None, "wrong-token", TOKEN + "x", ""):
        response = _feedback(endpoint, {"request_id": served, "label": 3}, token=token)
        assert response.status_code == 401, f"{token!r}: {response.text}"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in response.text
    basic = requests.post(
        f"{endpoint.url}/v1/models/{MODEL_NAME}/feedback",
        json={"request_id": served, "label": 3},
        headers={"Authorization": f"Basic {TOKEN}"},
        timeout=10,
    )
    assert basic.status_code == 401
    assert _metric(endpoint, 'mnist_feedback_total{outcome="unauthorized"}') - before == 5
    assert all(key[0] != served for key in read_feedback(_log_dir(endpoint)))
    # Predictions stay open: no token needed.
    _served_request(endpoint)


def test_feedback_with_the_token_validates_and_keeps_one_label_per_prediction(endpoint):
    served = _served_request(endpoint)
    good = _feedback(endpoint, {"request_id": served, "index": 1, "label": 7})
    assert good.status_code == 200 and good.json() == {"accepted": True, "request_id": served, "index": 1, "label": 7}
    again = _feedback(endpoint, {"request_id": served, "index": 1, "label": 7})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    conflicts = _metric(endpoint, 'mnist_feedback_total{outcome="conflict"}')
    other = _feedback(endpoint, {"request_id": served, "index": 1, "label": 2})
    assert other.status_code == 409 and "already labelled 7" in other.json()["error"]
    assert _metric(endpoint, 'mnist_feedback_total{outcome="conflict"}') - conflicts == 1
    cases = {
        "unknown id": ({"request_id": "never-served", "label": 3}, 404),
        "label out of range": ({"request_id": served, "label": 10}, 400),
        "label not an int": ({"request_id": served, "label": "7"}, 400),
        "index out of range": ({"request_id": served, "index": 2, "label": 1}, 400),
        "no request id": ({"label": 1}, 400),
    }
    for name, (body, status) in cases.items():
        response = _feedback(endpoint, body)
        assert response.status_code == status, f"{name}: {response.text}"
        assert response.json()["error"]
    labels = read_feedback(_log_dir(endpoint))
    assert labels[(served, 1)] == 7 and (served, 0) not in labels


def _race(endpoint, served: str, labels: tuple[int, ...]) -> dict[int, int]:
    """label -> status, for one feedback request per label, sent at the same moment."""
    barrier, statuses = threading.Barrier(len(labels)), {}

    def send(label: int) -> None:
        barrier.wait()
        statuses[label] = _feedback(endpoint, {"request_id": served, "label": label}).status_code

    threads = [threading.Thread(target=send, args=(label,)) for label in labels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_two_different_labels_at_once_exactly_one_wins(endpoint):
    for attempt in range(5):
        served = _served_request(endpoint, images=1)
        statuses = _race(endpoint, served, (4, 5))
        assert sorted(statuses.values()) == [200, 409], f"attempt {attempt}: {statuses}"
        winner = next(label for label, status in statuses.items() if status == 200)
        assert read_feedback(_log_dir(endpoint))[(served, 0)] == winner
    lines = (_log_dir(endpoint) / "feedback.jsonl").read_text().splitlines()
    assert len(lines) == len(set(read_feedback(_log_dir(endpoint)))), "a prediction has two lines"


def test_the_token_is_never_logged(endpoint):
    served = _served_request(endpoint)
    _feedback(endpoint, {"request_id": served, "label": 1})
    _feedback(endpoint, {"request_id": served, "label": 1}, token="wrong")
    server_log = Path(endpoint.log_file).read_text()
    assert "feedback labels at /v1/models/mnist/feedback are taken with a bearer token" in server_log
    for path in [Path(endpoint.log_file), *_log_dir(endpoint).iterdir()]:
        assert TOKEN not in path.read_text(errors="replace"), path
