"""The whole mnist_pipeline through Dagster on the real data, with one epoch per model:
publish, test the candidate at its private address, move traffic to it; re-run to publish,
compare with production and swap in a new version; then fail the candidate's tests on
purpose (absolute gates, then the champion/challenger gate) and see that it never serves.

Not covered here: SIGKILLs during a deploy (tests/test_deploy_faults.py) and the Kubernetes
backend (tests/test_k8s_serving.py)."""

from __future__ import annotations

import json

import pytest
import requests
from dagster import DagsterInstance, materialize
from quick_config import quick_job, quick_resources, quick_run_config

from mnist_assets.assets import deliver_candidate, uploaded_model
from mnist_assets.assets.models import parity_reference_file, run_model_dir
from mnist_delivery.local_endpoint import LocalEndpoint
from mnist_ml.onnx_export import ONNX_ARTIFACT
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

    materialized = {
        e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
        for e in second.get_asset_materialization_events()
    }
    deployed, tested = materialized["model_deployment"], materialized["deployment_test_results"]
    assert deployed["version"].value == 2 and deployed["previous_version"].value == 1
    endpoint = json.loads((root / "serving" / "endpoint.json").read_text())
    assert _served_version(endpoint["url"]) == "2"
    assert deployed["url"].value == endpoint["url"] != deployed["tested_at"].value  # tested privately
    assert deployed["traffic_moved_at"].value

    assert tested["tested_version"].value == 2 and tested["production_version"].value == "1"
    assert "| MNIST accuracy |" in tested["versus_production"].value
    assert all(400 <= status < 500 for status in tested["malformed_requests"].value.values())
    checks = {e.check_name: e.passed for e in second.get_asset_check_evaluations()}
    assert checks["endpoint_accuracy"] and checks["malformed_requests_rejected"] and checks["notmnist_flagged"]
    assert checks["no_worse_than_production"]


def test_a_candidate_that_fails_its_tests_never_serves(chain):
    root, config, (_, second), instance = chain
    resources = quick_resources(root)
    serving_before = json.loads((root / "serving" / "endpoint.json").read_text())
    impossible = {**config["deployment_tests"], "min_accuracy": 1.0}
    result = materialize(
        [uploaded_model, deliver_candidate],
        run_config={"ops": {"deliver_candidate": {"config": impossible}}},
        resources=resources,
        instance=instance,  # where the models' latest materializations are
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("deliver_candidate").error.message
    assert "version 3 failed its tests before taking traffic: endpoint_accuracy" in failure
    assert "now serving version 2 at http://127.0.0.1:" in failure
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "model_deployment" not in materialized and "deployment_test_results" in materialized
    # The server of version 2 was never replaced, not even for a moment.
    assert json.loads((root / "serving" / "endpoint.json").read_text()) == serving_before

    repository = FileModelRepository(root / "models")
    assert repository.get(3).failed.startswith("failed its tests before taking traffic")
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
        [uploaded_model, deliver_candidate],
        instance=instance,
        run_config={"ops": {"deliver_candidate": {"config": {**config["deployment_tests"], "min_accuracy": 1.0}}}},
        resources={
            **quick_resources(tmp_path),
            "data_store": quick_resources(root)["data_store"],  # the chain's data, a new registry and endpoint
        },
        raise_on_error=False,
    )
    assert not result.success
    assert "now serving nothing" in result.failure_data_for_node("deliver_candidate").error.message
    assert LocalEndpoint(tmp_path / "serving").current() is None
    assert LocalEndpoint(tmp_path / "serving")._running() == []
    assert FileModelRepository(tmp_path / "models").get(1).failed


def test_a_candidate_worse_than_production_is_refused_by_the_gate(chain, tiny_versions):
    """Absolute bounds made trivial, so only champion/challenger can refuse: an untrained
    candidate (the tiny test models) against the trained production version."""
    root, config, _, instance = chain
    repository = FileModelRepository(root / "models")
    production = repository.resolve("production")
    untrained = {name: tiny_versions[1][0].path / name for name in ("classifier", "concept_model", ONNX_ARTIFACT)}
    manifest = {"training": production.manifest["training"], "onnx": tiny_versions[1][0].manifest["onnx"]}
    worse = repository.publish(untrained, {**manifest, "note": "untrained"})
    repository.set_alias("candidate", worse.version)
    anything_goes = {
        **config["deployment_tests"],
        **{"min_accuracy": 0.0, "min_notmnist_flag_rate": 0.0, "min_noisy_flag_rate": 0.0},
        **{"max_clean_flag_rate": 1.0, "max_p99_latency_ms": 10_000.0},
    }
    result = materialize(
        [deliver_candidate],
        run_config={"ops": {"deliver_candidate": {"config": anything_goes}}},
        resources=quick_resources(root),
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("deliver_candidate").error.message
    assert f"version {worse.version} failed its tests before taking traffic: no_worse_than_production" in failure
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["no_worse_than_production"].passed
    assert checks["endpoint_accuracy"].passed
    assert "MNIST accuracy" in checks["no_worse_than_production"].description
    assert repository.aliases()["production"] == production.version
    assert _served_version(json.loads((root / "serving" / "endpoint.json").read_text())["url"]) == str(
        production.version
    )


def test_a_model_without_its_parity_reference_is_not_published(chain):
    """The publish step checks the ONNX export against what the training step recorded; a model
    trained without a reference (before this code recorded one), or whose reference file is
    damaged, fails publishing, saying what to do, and no version is written. The reference is put
    back for the tests that follow."""
    root, _, (_, second), instance = chain
    repository = FileModelRepository(root / "models")
    before = repository.versions()
    reference = root / "data" / parity_reference_file(run_model_dir(second.run_id, "classifier"))
    aside = reference.with_suffix(".aside")

    def publish():
        return materialize([uploaded_model], resources=quick_resources(root), instance=instance, raise_on_error=False)

    reference.rename(aside)
    try:
        missing = publish()
        reference.write_bytes(aside.read_bytes()[:1000])  # cut short, as by a full disk
        damaged = publish()
    finally:
        aside.replace(reference)
    assert not missing.success and not damaged.success
    failure = missing.failure_data_for_node("uploaded_model").error.message
    assert f"classifier from run {second.run_id} has no parity reference" in failure
    assert "Materialize mnist_classifier again" in failure
    failure = damaged.failure_data_for_node("uploaded_model").error.message
    assert "is not a readable parity reference" in failure and "Materialize mnist_classifier again" in failure
    assert repository.versions() == before
