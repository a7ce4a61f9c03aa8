"""End to end with the real Dagster webserver and daemon on 127.0.0.1: launch mnist_pipeline
through the GraphQL client, send out-of-distribution traffic to the deployed endpoint,
and see the drift sensor launch a retraining run that succeeds. One epoch per model.

Not covered: a browser clicking in the UI (the webserver is exercised through GraphQL)."""

from __future__ import annotations

import time

import pytest
import yaml
from quick_config import DRIFT_ON_OOD, quick_run_config
from stack import DagsterStack

from mnist_serving.client import EndpointClient
from mnist_serving.local_endpoint import LocalEndpoint
from resources import DataStore


@pytest.fixture
def stack(tmp_path, real_mirrors):
    config = quick_run_config(tmp_path, real_mirrors["mnist"], real_mirrors["notmnist"])
    config["monitoring"] = DRIFT_ON_OOD
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump(config))
    env = {
        "MNIST_RUN_CONFIG": str(tmp_path / "run_config.yaml"),
        "MNIST_DRIFT_SENSOR_INTERVAL_S": "5",
        "MNIST_NEW_DATA_SENSOR_INTERVAL_S": "3600",
    }
    with DagsterStack(tmp_path / "dagster_home", env) as running:
        try:
            yield running, config
        finally:
            LocalEndpoint(tmp_path / "serving").stop()


def _drift_runs(stack: DagsterStack):
    with stack.instance() as instance:
        return [run for run in instance.get_runs() if run.tags.get("mnist/trigger") == "drift"]


def test_pipeline_launched_through_graphql_then_drift_triggers_retraining(stack):
    stack, config = stack
    run_id = stack.client().submit_job_execution("mnist_pipeline", run_config=config)
    status = stack.wait_for_run(run_id)
    assert status.value == "SUCCESS", stack.log("daemon")[-3000:]
    endpoint = LocalEndpoint(config["serving"]["state_dir"]).current()
    assert endpoint is not None and endpoint.version == "1"
    assert _drift_runs(stack) == [], "no drift before any production traffic"

    letters = DataStore(**config["data_store"]).load_arrays("notmnist")["x"][:300]
    outputs = EndpointClient(endpoint.url).predict(letters)
    assert outputs["is_ood"].mean() > 0.5

    deadline = time.monotonic() + 120
    while not _drift_runs(stack) and time.monotonic() < deadline:
        time.sleep(1)
    (drift_run,) = _drift_runs(stack)
    assert drift_run.tags["mnist/reason"].startswith("out-of-distribution rate")
    assert int(drift_run.tags["mnist/images"]) == 300
    assert stack.wait_for_run(drift_run.run_id).value == "SUCCESS", stack.log("daemon")[-3000:]
    assert LocalEndpoint(config["serving"]["state_dir"]).current().version == "2"
    time.sleep(12)  # two more ticks: the same drift episode must not launch a second run
    assert len(_drift_runs(stack)) == 1
