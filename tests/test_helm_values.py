"""deploy/helm/values.yaml, our values for the official Dagster chart 1.13.27.

What this covers:
- the user deployment's keys against a key list copied from the chart's 1.13 schema; our names
  (namespace, service account, ConfigMaps, Secrets, image, port), no password anywhere, the
  webserver not exposed;
- the security contexts and mounts the values give the user-code pod;
- the run pods the values' launcher starts, built by dagster-k8s itself from the launcher config:
  valid 1.30 Jobs, restricted pods, our volumes, service account and env;
- the run queue's tag limit, in a real Dagster instance whose run coordinator gets it as the
  chart writes it, then given to Dagster's own counter with the tags our jobs carry
  (tests/run_queue.py).

What this does NOT cover: the chart itself. Its templates are not rendered (no helm and no
network here). Four small pieces of template logic are assumed, each quoted from the chart
source (dagster-io/dagster, helm/dagster/):
- templates/helpers/instance/_run-coordinator.tpl ("dagsterYaml.runCoordinator.queued", included
  by configmap-instance.yaml under ``run_coordinator:`` when the daemon and runCoordinator are
  enabled) writes the limits as given: ``tag_concurrency_limits: {{
  $queuedRunCoordinatorConfig.tagConcurrencyLimits | toYaml | nindent 2 }}``. The other keys it
  writes (max_concurrent_runs, the module path) are not checked;
- templates/helpers/instance/_run-launcher.tpl: a CustomRunLauncher's config goes into the
  instance as written (``config: {{ $customRunLauncherConfig.config | toYaml | nindent 2 }}``),
  so the launcher is built from our values as they are (``helm_run_launcher_config``);
- templates/configmap-instance.yaml names the instance ConfigMap
  ``{{ template "dagster.fullname" . }}-instance``, and dagster.fullname is the release name when
  that contains the chart name ("dagster");
- charts/dagster-user-deployments/templates/deployment-user.yaml puts
  ``securityContext: {{ $deployment.podSecurityContext | toYaml | nindent 8 }}`` on the pod,
  ``securityContext: {{ $deployment.securityContext | toYaml | nindent 12 }}`` on its one
  container, and the deployment's volumeMounts and volumes as given.
Run pods get the image the code server reports (``DAGSTER_CURRENT_IMAGE``, which the chart's
user deployment sets from its image values): the test gives it as IMAGE. The chart's own pods
(webserver, daemon) are in test_pod_security.py, the image name in test_k8s_image.py.
"""

from __future__ import annotations

import pytest
import yaml
from dagster import DagsterInstance
from k8s_checks import (
    IMAGE,
    NAMESPACE,
    SERVICE_ACCOUNT,
    check_run_job,
    helm_run_launcher_config,
    kubeconfig,
    launched_run_job,
    launcher_from_config,
    list_problems,
    load_helm_values,
    mnist_deployment,
    run_k8s_config_problems,
    security_problems,
)
from run_queue import DELIVERY_LIMIT, check_serializes_delivery

pytestmark = pytest.mark.k8s
__all__ = ["kubeconfig"]  # a fixture

# Keys of a user deployment in the dagster chart 1.13 values, copied from the chart's schema
# (helm/dagster/schema/schema/charts/...: user_deployments.py UserDeployment, plus keys of the
# subchart's values.yaml). A typo here would otherwise fail only at `helm install`.
CHART_USER_DEPLOYMENT_KEYS = {
    "name",
    "image",
    "dagsterApiGrpcArgs",
    "codeServerArgs",
    "includeConfigInLaunchedRuns",
    "port",
    "env",
    "envConfigMaps",
    "envSecrets",
    "annotations",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "labels",
    "volumeMounts",
    "volumes",
    "schedulerName",
    "initContainers",
    "sidecarContainers",
    "serviceAccount",
    "deploymentStrategy",
}
# `helm upgrade --install dagster ...`: dagster.fullname is the release name, "dagster".
HELM_RELEASE = "dagster"


def test_helm_values_use_chart_keys_and_our_names() -> None:
    values = load_helm_values()
    assert values["runLauncher"]["type"] == "CustomRunLauncher"
    k8s = helm_run_launcher_config(values)
    assert k8s["job_namespace"] == NAMESPACE and k8s["service_account_name"] == SERVICE_ACCOUNT
    assert k8s["env_config_maps"] == ["mnist-settings", "mnist-env"] and k8s["env_secrets"] == ["mnist-secrets"]
    assert k8s["run_k8s_config"]["job_spec_config"] == {"ttlSecondsAfterFinished": 3600}
    assert k8s["dagster_home"] == values["global"]["dagsterHome"]
    assert k8s["postgres_password_secret"] == values["global"]["postgresqlSecretName"]
    assert k8s["instance_config_map"] == f"{HELM_RELEASE}-instance"

    subchart = values["dagster-user-deployments"]
    assert subchart["enabled"] is True and subchart["enableSubchart"] is True
    assert subchart["serviceAccount"] == {"create": False, "name": SERVICE_ACCOUNT}
    assert subchart["rbacEnabled"] is False  # the subchart's Role is far broader than ours
    deployment = mnist_deployment(values)
    assert set(deployment) <= CHART_USER_DEPLOYMENT_KEYS, set(deployment) - CHART_USER_DEPLOYMENT_KEYS
    assert deployment["name"] == "mnist"
    assert deployment["image"] == {"repository": "mnist-mlops", "tag": "0.1.0", "pullPolicy": "IfNotPresent"}
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "mnist_assets.definitions"]
    assert deployment["port"] == 4000
    # Off: the launcher carries env, volumes and service account (see test_k8s_run_tags.py).
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": False}
    # The deployment-wide settings, as in run pods (deploy/k8s/settings.yaml).
    assert [source["name"] for source in deployment["envConfigMaps"]] == k8s["env_config_maps"]

    # No password anywhere: an external PostgreSQL, its password in a Secret the user creates.
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in values["postgresql"]
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"
    # The webserver is never exposed: ClusterIP, no Ingress.
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP" and values["ingress"]["enabled"] is False
    assert values["dagsterDaemon"]["enabled"] is True
    assert values["telemetry"] == {"enabled": False}
    assert values["global"]["dagsterHome"] == "/opt/dagster/home"


def test_helm_user_code_pod_runs_restricted() -> None:
    """The user-code pod as deployment-user.yaml places the values (see the module docstring)."""
    deployment = mnist_deployment(load_helm_values())
    pod = {
        "securityContext": deployment["podSecurityContext"],
        "containers": [
            {
                "name": "dagster",
                "securityContext": deployment["securityContext"],
                "volumeMounts": deployment["volumeMounts"],
            }
        ],
        "volumes": deployment["volumes"],
    }
    where = "helm user deployment mnist"
    problems = security_problems(pod, where) + list_problems(pod, where)
    mounts = {m["mountPath"] for m in deployment["volumeMounts"]}
    assert {"/data", "/models", "/tmp", "/opt/dagster/home"} <= mounts
    assert not problems, "\n".join(problems)


def test_helm_run_pods_are_valid_and_restricted(kubeconfig: str) -> None:
    values = load_helm_values()
    problems = run_k8s_config_problems(helm_run_launcher_config(values)["run_k8s_config"], "helm run_k8s_config")
    launcher = launcher_from_config(helm_run_launcher_config(values), kubeconfig)
    job, container_context = launched_run_job(launcher, image=IMAGE)
    problems += check_run_job(job, container_context, "run Job from the Helm values")
    sources = job["spec"]["template"]["spec"]["containers"][0].get("envFrom", [])
    if {"configMapRef": {"name": "mnist-settings"}} not in sources:
        problems.append("run Job from the Helm values: the mnist-settings ConfigMap is not carried into the run")
    assert not problems, "\n".join(problems)


def test_helm_run_queue_allows_one_delivery_run_at_a_time(tmp_path) -> None:
    daemon = load_helm_values()["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert daemon["enabled"] and coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    limits = coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    written = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    instance_yaml = {"run_coordinator": {**written, "config": {"tag_concurrency_limits": limits}}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        loaded = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert loaded == [DELIVERY_LIMIT]
    check_serializes_delivery(loaded)
