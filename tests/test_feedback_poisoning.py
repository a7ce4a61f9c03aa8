"""Poisoned feedback cannot displace a better model: labels enter training only through the
champion/challenger gate.

Two real mnist_pipeline runs on the real data (3 classifier epochs, so the poison takes
hold): the first deploys a clean version; then 2,000 wrong labels arrive through the
feedback route with a valid token (every MNIST test "4", sent as production traffic, labelled
"9", most of them twice over two predictions); the second run trains on them, its candidate
is refused by the gate (worse than production beyond the accuracy margin), production keeps
serving, and the run fails saying why. Without the token: 401, and nothing is written.

Not covered: subtler poisoning that stays within the margins (the gate bounds the damage
per version, it does not detect poison), and feedback on Kubernetes (same server code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from dagster import DagsterInstance
from quick_config import quick_job, quick_run_config

from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_delivery.traffic import relabelled_inputs
from mnist_ml.model_contract import MODEL_NAME
from mnist_ml.registry import FileModelRepository
from mnist_serving.options import FEEDBACK_TOKEN_ENV
from mnist_serving.request_log import read_feedback
from resources import DataStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "poisoning-test-token"
POISON = 2000
BATCH = 100


def _predict(url: str, images: np.ndarray) -> str:
    body = {"instances": images.reshape(len(images), 784).tolist()}
    response = requests.post(f"{url}/v1/models/{MODEL_NAME}:predict", json=body, timeout=30)
    response.raise_for_status()
    return response.json()["request_id"]


def _label(url: str, request_id: str, index: int, label: int, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"request_id": request_id, "index": index, "label": label}
    return requests.post(f"{url}/v1/models/{MODEL_NAME}/feedback", json=body, headers=headers, timeout=10)


def test_poisoned_feedback_is_refused_by_the_gate(tmp_path, real_mirrors, monkeypatch):
    monkeypatch.setenv(FEEDBACK_TOKEN_ENV, TOKEN)
    monkeypatch.setenv("MNIST_SERVER_INPUT_SAMPLE_RATE", "1.0")  # keep every input, so labels can be used
    config = quick_run_config(real_mirrors["mnist"], real_mirrors["notmnist"])
    config["classifier"]["epochs"] = 3
    job = quick_job("mnist_pipeline", tmp_path)
    instance = DagsterInstance.ephemeral()
    state = tmp_path / "serving"
    try:
        assert job.execute_in_process(run_config=config, instance=instance).success
        endpoint = json.loads((state / "endpoint.json").read_text())
        url, log_dir = endpoint["url"], state / "requests"

        mnist = DataStore(root=str(tmp_path / "data")).load_arrays("mnist")
        fours = mnist["x_test"][mnist["y_test"] == 4]
        poison = np.resize(fours, (POISON, 28, 28))
        request_ids = [_predict(url, poison[i : i + BATCH]) for i in range(0, POISON, BATCH)]

        refused = _label(url, request_ids[0], 0, 9, token=None)
        assert refused.status_code == 401 and read_feedback(log_dir) == {}
        statuses = {_label(url, rid, i, 9).status_code for rid in request_ids for i in range(BATCH)}
        assert statuses == {200}
        assert len(read_feedback(log_dir)) == POISON
        assert len(relabelled_inputs(log_dir)[0]) == POISON

        poisoned = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
        assert not poisoned.success
        trained = poisoned.asset_materializations_for_node("production_labels")[0].metadata
        assert trained["from_feedback"].value == POISON
        failure = poisoned.failure_data_for_node("deliver_candidate").error.message
        assert "version 2 failed its tests before taking traffic: no_worse_than_production" in failure
        assert "MNIST accuracy" in failure or "MNIST accuracy" in next(
            e.description for e in poisoned.get_asset_check_evaluations() if e.check_name == "no_worse_than_production"
        )
        assert json.loads((state / "endpoint.json").read_text()) == endpoint, "production was replaced"
        assert (
            _predict(url, fours[:1])
            and requests.post(
                f"{url}/v1/models/{MODEL_NAME}:predict", json={"instances": [[0] * 784]}, timeout=10
            ).json()["model_version"]
            == "1"
        )
        repository = FileModelRepository(tmp_path / "models")
        assert repository.aliases()["production"] == 1 and repository.get(2).failed
    finally:
        LocalEndpoint(state).stop()
        instance.dispose()
