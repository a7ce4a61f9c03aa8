"""Kubernetes objects our code builds: the serving Deployment and Service, and the step
Jobs that k8s_job_executor builds from our op tags and config, validated strictly against
the Kubernetes 1.30 OpenAPI schemas (kubernetes-validate).

Not covered: admission, defaulting and controllers (no API server runs here); see
test_k8s_serving.py and test_k8s_run_launcher.py for the API conversations."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import validate_run_config
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from k8s_schema import schema_errors
from kubernetes.client import ApiClient

from mnist_assets.definitions import defs
from mnist_assets.k8s import LIGHT_POD, TRAINING_POD
from mnist_serving.k8s_endpoint import SHIPPED, deployment, render, service

ROOT = Path(__file__).resolve().parents[1]


def _step_job(step: str, tags: dict) -> dict:
    config = DagsterK8sJobConfig(
        job_image="mnist-mlops:0.1.0",
        dagster_home="/opt/dagster/home",
        image_pull_policy="IfNotPresent",
        service_account_name="mnist-dagster",
        instance_config_map="dagster-instance",
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        volume_mounts=[{"name": "data", "mountPath": "/data"}],
    )
    job = construct_dagster_k8s_job(
        config,
        args=["dagster", "api", "execute_step", "{}"],
        job_name=f"dagster-step-{step.replace('_', '-')}",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(tags["dagster-k8s/config"]),
        component="step_worker",
    )
    return ApiClient().sanitize_for_serialization(job)


def test_shipped_serving_manifest_is_what_the_deployer_applies():
    assert (ROOT / "deploy" / "k8s" / "serving.yaml").read_text() == render(), (
        "deploy/k8s/serving.yaml is stale: python -m mnist_serving.k8s_endpoint > deploy/k8s/serving.yaml"
    )


def test_serving_objects_validate_and_are_locked_down():
    objects = [deployment(SHIPPED, "/models/mnist/7", "7"), service(SHIPPED)]
    assert sum((schema_errors(o) for o in objects), []) == []
    pod = objects[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["memory"]
    assert container["command"][container["command"].index("--model-dir") + 1] == "/models/mnist/7"
    assert objects[0]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize(("step", "tags"), [("mnist_classifier", TRAINING_POD), ("mnist_dataset", LIGHT_POD)])
def test_step_jobs_built_by_dagster_k8s_validate(step, tags):
    job = _step_job(step, tags)
    assert schema_errors(job) == []
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == tags["dagster-k8s/config"]["container_config"]["resources"]


def test_k8s_job_runs_every_step_in_its_own_pod_with_gpus_from_config():
    job = defs.resolve_job_def("mnist_pipeline_k8s")
    assert job.executor_def.name == "k8s"
    config = yaml.safe_load((ROOT / "run_config.yaml").read_text())
    assert validate_run_config(job, config)["execution"]["k8s"]["per_step_k8s_config"] == {}
    config["kubernetes"] = {"training_gpus": 2}
    per_step = validate_run_config(job, config)["execution"]["k8s"]["per_step_k8s_config"]
    assert set(per_step) == {"mnist_classifier", "mnist_concept_model"}
    assert per_step["mnist_classifier"]["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    trainers = {node.name: node.definition.tags for node in job.nodes if node.name in per_step}
    assert all("dagster-k8s/config" in tags for tags in trainers.values())
