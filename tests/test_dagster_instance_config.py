"""deploy/dagster.yaml, the Dagster instance on the cluster, against the installed Dagster.

What this covers:
- the instance schema; K8sRunLauncher's own config schema and the launcher it builds (namespace,
  service account, image, ConfigMaps, Secrets, DAGSTER_HOME);
- the run Job that launcher creates, built by dagster-k8s itself: a valid 1.30 Job with a
  restricted pod, our volumes and service account;
- the non-storage instance classes load;
- the run queue's tag limit: with the tags the code location's jobs carry, Dagster's own
  counter holds every deploying run while another is in progress, and no other run
  (tests/run_queue.py).

What this does NOT cover: the Postgres storages (tests/test_postgres_instance.py loads them
against a real server, and the run queue limit from there), a launch against an API server
(tests/test_k8s_run_launcher.py), the step Jobs (tests/test_k8s_jobs.py), a daemon holding a
run in the queue (tests/test_one_deploy_at_a_time.py, on the local instance's same limit).
"""

from __future__ import annotations

import pytest
import yaml
from k8s_checks import (
    IMAGE,
    NAMESPACE,
    SERVICE_ACCOUNT,
    check_run_job,
    kubeconfig,
    launched_run_job,
    launcher_from_config,
    load_dagster_yaml,
    run_k8s_config_problems,
)
from run_queue import DELIVERY_LIMIT, check_serializes_delivery

pytestmark = pytest.mark.k8s
__all__ = ["kubeconfig"]  # a fixture


def test_dagster_yaml_matches_the_instance_schema() -> None:
    from dagster._config import process_config
    from dagster._config.field_utils import Shape
    from dagster._core.instance.config import dagster_instance_config_schema

    result = process_config(Shape(dagster_instance_config_schema()), load_dagster_yaml())
    assert result.success, [error.message for error in result.errors]


def test_run_launcher_validates_against_k8s_run_launcher_config(kubeconfig: str) -> None:
    block = load_dagster_yaml()["run_launcher"]
    assert (block["module"], block["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = block["config"]
    assert config["load_incluster_config"] is True
    launcher = launcher_from_config(config, kubeconfig)
    assert launcher.job_namespace == NAMESPACE
    assert launcher.service_account_name == SERVICE_ACCOUNT
    assert launcher.job_image == IMAGE
    assert launcher.image_pull_policy == "IfNotPresent"
    assert launcher.instance_config_map == "dagster-instance"
    assert launcher.env_config_maps == ["mnist-settings", "mnist-env"]
    assert launcher.env_secrets == ["mnist-secrets"]
    assert launcher.dagster_home == "/opt/dagster/home"  # the image's DAGSTER_HOME


def test_run_pods_launched_from_dagster_yaml_are_valid_and_restricted(kubeconfig: str) -> None:
    config = load_dagster_yaml()["run_launcher"]["config"]
    problems = run_k8s_config_problems(config["run_k8s_config"], "dagster.yaml run_k8s_config")
    job, context = launched_run_job(launcher_from_config(config, kubeconfig))
    problems += check_run_job(job, context, "run Job from deploy/dagster.yaml")
    assert not problems, "\n".join(problems)


def test_other_instance_classes_load() -> None:
    from dagster._serdes.config_class import ConfigurableClassData

    instance = load_dagster_yaml()
    assert instance["telemetry"] == {"enabled": False}
    for key in ("local_artifact_storage", "compute_logs"):
        block = instance[key]
        loaded = ConfigurableClassData(block["module"], block["class"], yaml.safe_dump(block.get("config", {})))
        assert loaded.rehydrate() is not None
    assert instance["local_artifact_storage"]["config"]["base_dir"].startswith("/data/")


def test_one_delivery_run_at_a_time() -> None:
    limits = load_dagster_yaml()["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limits == [DELIVERY_LIMIT]
    check_serializes_delivery(limits)
