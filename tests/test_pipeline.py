"""The whole mnist_pipeline through Dagster on the real data, with one epoch per model:
publish, deploy and test a real endpoint; re-run to publish and swap in a new version;
then fail the deployment tests on purpose and watch the rollback."""

from __future__ import annotations

import json

import pytest
import requests
from dagster import DagsterInstance, materialize
from quick_config import quick_job, quick_resources, quick_run_config

from mnist_assets.assets import deployment_test_results, model_deployment, uploaded_model
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.registry import FileModelRepository

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, real_mirrors):
    """Two runs of mnist_pipeline in one Dagster instance; the endpoint is stopped afterwards."""
    root = tmp_path_factory.mktemp("chain")
    config = quick_run_config(real_mirrors["mnist"], real_mirrors["notmnist"])
    job = quick_job("mnist_pipeline", root)
    instance = DagsterInstance.ephemeral()
    try:
        runs = [job.execute_in_process(run_config=config, instance=instance) for _ in range(2)]
        yield root, config, runs, instance
    finally:
        LocalEndpoint(root / "serving").stop()
        instance.dispose()


def _served_version(url: str) -> str:
    response = requests.post(f"{url}/v1/models/mnist:predict", json={"instances": [[0] * 784]}, timeout=10)
    return response.json()["model_version"]


def test_pipeline_publishes_deploys_and_tests_the_endpoint(chain):
    root, _, (first, second), _ = chain
    assert first.success and second.success
    repository = FileModelRepository(root / "models")
    assert repository.versions() == [1, 2]
    assert repository.aliases() == {"candidate": 2, "production": 2, "previous": 1}
    manifest = repository.get(2).manifest
    assert manifest["dagster_run_id"] == second.run_id
    assert manifest["trained_in_run"] == {"classifier": second.run_id, "concept_model": second.run_id}
    assert len(manifest["data_checksums"]["mnist_dataset"]) == 4
    assert manifest["training"]["classifier"]["test_accuracy"] > 0.9

    deployed = second.asset_materializations_for_node("model_deployment")[0].metadata
    assert deployed["version"].value == 2 and deployed["previous_version"].value == 1
    endpoint = json.loads((root / "serving" / "endpoint.json").read_text())
    assert _served_version(endpoint["url"]) == "2"

    tested = second.asset_materializations_for_node("deployment_test_results")[0].metadata
    assert tested["tested_version"].value == 2
    assert all(400 <= status < 500 for status in tested["malformed_requests"].value.values())
    checks = {e.check_name: e.passed for e in second.get_asset_check_evaluations()}
    assert checks["endpoint_accuracy"] and checks["malformed_requests_rejected"] and checks["notmnist_flagged"]


def test_failed_deployment_tests_roll_back_to_the_previous_version(chain):
    root, config, (_, second), instance = chain
    resources = quick_resources(root)
    impossible = {**config["deployment_tests"], "min_accuracy": 1.0}
    result = materialize(
        [uploaded_model, model_deployment, deployment_test_results],
        run_config={"ops": {"deployment_test_results": {"config": impossible}}},
        resources=resources,
        instance=instance,  # where the models' latest materializations are
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("deployment_test_results").error.message
    assert "version 3 failed deployment tests: endpoint_accuracy" in failure
    assert "now serving version 2 at http://127.0.0.1:" in failure

    repository = FileModelRepository(root / "models")
    assert repository.get(3).failed.startswith("failed deployment tests")
    # Not trained in this run: the models of the latest run that trained them.
    assert repository.get(3).manifest["trained_in_run"] == {"classifier": second.run_id, "concept_model": second.run_id}
    assert repository.get(3).path.is_dir(), "a failed version is kept, not deleted"
    assert repository.aliases()["production"] == 2
    endpoint = json.loads((root / "serving" / "endpoint.json").read_text())
    assert endpoint["version"] == "2" and _served_version(endpoint["url"]) == "2"
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations["endpoint_accuracy"] is False


def test_a_first_version_that_fails_leaves_nothing_serving(chain, tmp_path):
    """With no earlier good version to roll back to, the failed one must not stay up."""
    root, config, _, instance = chain
    result = materialize(
        [uploaded_model, model_deployment, deployment_test_results],
        instance=instance,
        run_config={
            "ops": {"deployment_test_results": {"config": {**config["deployment_tests"], "min_accuracy": 1.0}}}
        },
        resources={
            **quick_resources(tmp_path),
            "data_store": quick_resources(root)["data_store"],  # the chain's data, a new registry and endpoint
        },
        raise_on_error=False,
    )
    assert not result.success
    assert (
        "now serving nothing: the endpoint was stopped"
        in result.failure_data_for_node("deployment_test_results").error.message
    )
    assert LocalEndpoint(tmp_path / "serving").current() is None
    assert FileModelRepository(tmp_path / "models").get(1).failed
