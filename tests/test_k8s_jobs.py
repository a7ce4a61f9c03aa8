"""Kubernetes objects our code builds: the serving Deployment and Service, and the step
Jobs that k8s_job_executor builds from our op tags and config, validated strictly against
the Kubernetes 1.30 OpenAPI schemas (kubernetes-validate).

Not covered: admission, defaulting and controllers (no API server runs here); see
test_k8s_serving.py and test_k8s_run_launcher.py for the API conversations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, InitExecutorContext, validate_run_config
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.executor.step_delegating import StepDelegatingExecutor
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.executor import K8sStepHandler
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config
from k8s_checks import kubeconfig, launcher_from_config, list_problems, load_dagster_yaml, security_problems
from k8s_schema import schema_errors
from kubernetes.client import ApiClient
from pod_security import restricted_violations

from mnist_assets.definitions import defs
from mnist_assets.k8s import DELIVERY_POD, TRAINING_POD
from mnist_delivery.k8s_endpoint import SHIPPED, deployment, pod_disruption_budget, render, service

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["kubeconfig"]  # a fixture


def _step_job(step: str, tags: dict, kubeconfig: str) -> dict:
    """The Job k8s_job_executor launches for one step, built as K8sStepHandler does it: the
    run's container context from the launcher in deploy/dagster.yaml, merged with the op tags."""
    launcher = launcher_from_config(load_dagster_yaml()["run_launcher"]["config"], kubeconfig)
    run = DagsterRun(job_name="mnist_pipeline_k8s", run_id="0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9")
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
    job = construct_dagster_k8s_job(
        context.get_k8s_job_config(None, launcher),
        args=["dagster", "api", "execute_step", "{}"],
        job_name=f"dagster-step-{step.replace('_', '-')}",
        user_defined_k8s_config=context.run_k8s_config,
        component="step_worker",
    )
    return ApiClient().sanitize_for_serialization(job)


def test_shipped_serving_manifest_is_what_the_deployer_applies():
    assert (ROOT / "deploy" / "k8s" / "serving.yaml").read_text() == render(), (
        "deploy/k8s/serving.yaml is stale: python -m mnist_delivery.k8s_endpoint > deploy/k8s/serving.yaml"
    )


def test_serving_objects_validate_and_are_locked_down():
    objects = [deployment(SHIPPED, "/models/mnist/7", "7"), service(SHIPPED), pod_disruption_budget(SHIPPED)]
    assert sum((schema_errors(o) for o in objects), []) == []
    pod = objects[0]["spec"]["template"]["spec"]
    assert security_problems(pod, "serving") + list_problems(pod, "serving") == []
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "mnist-serving" and pod["automountServiceAccountToken"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/mnist/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/models/mnist/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"] == "384Mi"
    assert container["command"][container["command"].index("--model-dir") + 1] == "/models/mnist/7"
    assert objects[0]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert objects[0]["spec"]["replicas"] == 2
    (spread,) = pod["topologySpreadConstraints"]
    assert (spread["maxSkew"], spread["whenUnsatisfiable"]) == (1, "ScheduleAnyway")
    assert spread["labelSelector"]["matchLabels"] == objects[0]["spec"]["selector"]["matchLabels"]
    assert objects[2]["spec"] == {"minAvailable": 1, "selector": objects[0]["spec"]["selector"]}
    # Mounted: every model read-only; of the data claim, only the request log's folder; /tmp.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/models", "/tmp", "/data/serving/requests"}
    assert mounts["/models"]["readOnly"] is True
    assert mounts["/data/serving/requests"]["subPath"] == "serving/requests"
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}
    assert claims["models"] == {"claimName": "models", "readOnly": True}
    assert claims[mounts["/data/serving/requests"]["name"]] == {"claimName": "data"}


def test_serving_pod_without_request_log_mounts_no_data():
    from mnist_delivery.k8s_endpoint import ServingSpec

    pod = deployment(ServingSpec(), "/models/mnist/7", "7")["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"models", "tmp"}


@pytest.mark.parametrize(
    ("step", "tags", "account"),
    [("mnist_classifier", TRAINING_POD, "mnist-dagster"), ("deliver_candidate", DELIVERY_POD, "mnist-deployer")],
)
def test_step_jobs_built_by_dagster_k8s_validate_and_run_restricted(step, tags, account, kubeconfig):
    (node,) = [n for n in defs.resolve_job_def("mnist_pipeline_k8s").nodes if n.name == step]
    step_tags = node.definition.tags  # as the executor gets them: the op's tags, serialized
    assert (
        get_user_defined_k8s_config(step_tags).to_dict()
        == get_user_defined_k8s_config({"dagster-k8s/config": json.dumps(tags["dagster-k8s/config"])}).to_dict()
    )
    job = _step_job(step, step_tags, kubeconfig)
    assert schema_errors(job) == []
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert security_problems(pod, step) == []
    (container,) = pod["containers"]
    assert container["resources"] == tags["dagster-k8s/config"]["container_config"]["resources"]
    assert pod["serviceAccountName"] == account
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "step_worker"


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


def test_the_k8s_executor_is_dagster_k8s_checked_by_its_own_schema(kubeconfig):
    """The k8s job's executor (imported when a run starts it, mnist_assets/k8s.py), created as the
    run worker creates it: dagster-k8s's step executor with our config, its defaults filled in; a
    bad value fails with dagster-k8s's schema error. Not covered: launching a step pod (no API
    server here; test_k8s_run_launcher.py talks to the emulator)."""
    job = defs.resolve_job_def("mnist_pipeline_k8s")
    config = yaml.safe_load((ROOT / "run_config.yaml").read_text()) | {"kubernetes": {"training_gpus": 1}}
    execution = validate_run_config(job, config)["execution"]["k8s"]
    no_cluster = {"load_incluster_config": False, "kubeconfig_file": kubeconfig}

    def create(executor_config: dict):
        with DagsterInstance.ephemeral() as instance:
            context = InitExecutorContext(InMemoryJob(job), job.executor_def, executor_config, instance)
            return job.executor_def.executor_creation_fn(context)

    created = create(execution | no_cluster)
    assert isinstance(created, StepDelegatingExecutor)
    assert isinstance(created._step_handler, K8sStepHandler)
    assert set(created._step_handler._per_step_k8s_config) == {"mnist_classifier", "mnist_concept_model"}
    assert created.retries.enabled  # dagster-k8s's default, filled in by its schema
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent"):
        create(execution | no_cluster | {"max_concurrent": "two"})
