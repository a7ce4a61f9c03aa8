"""End to end with the real Dagster webserver and daemon on 127.0.0.1, on the shipped
instance's PostgreSQL storage (deploy/dagster.yaml's storages and run monitoring, on a real
server: tests/postgres_server.py): launch mnist_pipeline through the GraphQL client, send
out-of-distribution traffic to the deployed endpoint, and see the drift sensor launch a
retraining run that succeeds, its ticks recorded in Postgres. One epoch per model.

Not covered: a browser clicking in the UI (the webserver is exercised through GraphQL);
the K8sRunLauncher (runs start as local processes here; tests/test_k8s_run_launcher.py
launches through it)."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import yaml
from instance_config import deployed_storage
from quick_config import DRIFT_ON_OOD, quick_environment, quick_run_config
from stack import DagsterStack

from mnist_delivery.client import EndpointClient
from mnist_delivery.local_endpoint import LocalEndpoint
from resources import DataStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def stack(tmp_path, real_mirrors, postgres_server):
    config = quick_run_config(real_mirrors["mnist"], real_mirrors["notmnist"])
    config["monitoring"] = DRIFT_ON_OOD
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump(config))
    postgres_server.create_database("ui_daemon")
    env = {
        **postgres_server.env,
        **quick_environment(tmp_path),
        "DAGSTER_PG_DB": "ui_daemon",
        "MNIST_RUN_CONFIG": str(tmp_path / "run_config.yaml"),
        "MNIST_DRIFT_SENSOR_INTERVAL_S": "5",
        "MNIST_NEW_DATA_SENSOR_INTERVAL_S": "3600",
    }
    with DagsterStack(tmp_path / "dagster_home", env, instance=deployed_storage()) as running:
        try:
            yield running, config, postgres_server, tmp_path
        finally:
            LocalEndpoint(tmp_path / "serving").stop()


def _drift_runs(stack: DagsterStack):
    with stack.instance() as instance:
        return [run for run in instance.get_runs() if run.tags.get("mnist/trigger") == "drift"]


def test_pipeline_launched_through_graphql_then_drift_triggers_retraining(stack):
    stack, config, postgres_server, root = stack
    run_id = stack.client().submit_job_execution("mnist_pipeline", run_config=config)
    status = stack.wait_for_run(run_id)
    assert status.value == "SUCCESS", stack.log("daemon")[-3000:]
    endpoint = LocalEndpoint(root / "serving").current()
    assert endpoint is not None and endpoint.version == "1"
    assert _drift_runs(stack) == [], "no drift before any production traffic"

    letters = DataStore(root=str(root / "data")).load_arrays("notmnist")["x"][:300]
    outputs = EndpointClient(endpoint.url).predict(letters)
    assert outputs["is_ood"].mean() > 0.5

    deadline = time.monotonic() + 120
    while not _drift_runs(stack) and time.monotonic() < deadline:
        time.sleep(1)
    (drift_run,) = _drift_runs(stack)
    assert drift_run.tags["mnist/reason"].startswith("out-of-distribution rate")
    assert int(drift_run.tags["mnist/images"]) == 300
    assert stack.wait_for_run(drift_run.run_id).value == "SUCCESS", stack.log("daemon")[-3000:]
    assert LocalEndpoint(root / "serving").current().version == "2"
    time.sleep(12)  # two more ticks: the same drift episode must not launch a second run
    assert len(_drift_runs(stack)) == 1
    with contextlib.closing(postgres_server.connect("ui_daemon")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT tick_body FROM job_ticks WHERE type = 'SENSOR'")
        ticks = [json.loads(body) for (body,) in cursor.fetchall()]
    drift_ticks = [tick for tick in ticks if tick["job_name"] == "drift_sensor"]
    assert any(tick["run_ids"] == [drift_run.run_id] for tick in drift_ticks), drift_ticks[-3:]
