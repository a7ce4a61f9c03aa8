"""A run tag cannot change a run pod's service account, volumes or security context: the
launchers of deploy/dagster.yaml and of the Helm values set
``only_allow_user_defined_k8s_config_fields``, and dagster-k8s 0.29.27 refuses a run whose
``dagster-k8s/config`` tag (or code location container context) uses any other field.

The launch path is dagster-k8s's own: ``K8sRunLauncher.get_container_context_for_run`` (what
``launch_run`` calls first), then the Job built from that context. Not covered: the API server
(nothing is created), and step pods: their op tags are not subject to the allowlist in
dagster-k8s 0.29.27, they are code (tests/test_k8s_jobs.py checks what they set)."""

from __future__ import annotations

import json

import pytest
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s.job import construct_dagster_k8s_job
from k8s_checks import (
    helm_run_launcher_config,
    kubeconfig,
    launcher_from_config,
    load_dagster_yaml,
    load_helm_values,
    mnist_deployment,
)
from kubernetes.client import ApiClient

pytestmark = pytest.mark.k8s

__all__ = ["kubeconfig"]  # a fixture

ATTEMPTS = {
    "pod_spec_config.service_account_name": {"pod_spec_config": {"service_account_name": "mnist-deployer"}},
    "pod_spec_config.volumes": {"pod_spec_config": {"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}},
    "pod_spec_config.security_context": {"pod_spec_config": {"security_context": {"runAsUser": 0}}},
    "container_config.security_context": {"container_config": {"security_context": {"privileged": True}}},
    "container_config.volume_mounts": {"container_config": {"volume_mounts": [{"name": "x", "mountPath": "/x"}]}},
}
MORE_MEMORY = {"container_config": {"resources": {"requests": {"memory": "8Gi"}, "limits": {"memory": "8Gi"}}}}


def _run(tags: dict | None, container_context: dict | None = None) -> DagsterRun:
    """A run as the webserver creates it: its tags, and the code location's origin with the
    container context the code server reports."""
    repository = RepositoryPythonOrigin(
        executable_path="python",
        code_pointer=ModuleCodePointer("mnist_assets.definitions", "defs", None),
        container_context=container_context,
    )
    return DagsterRun(
        job_name="mnist_pipeline",
        run_id="0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9",
        tags={"dagster-k8s/config": json.dumps(tags)} if tags else {},
        job_code_origin=JobPythonOrigin("mnist_pipeline", repository),
    )


def _launchers(kubeconfig: str) -> dict:
    """name: (launcher, the container context its code location reports)."""
    values = load_helm_values()
    assert mnist_deployment(values)["includeConfigInLaunchedRuns"] == {"enabled": False}  # so: none
    return {
        "deploy/dagster.yaml": launcher_from_config(load_dagster_yaml()["run_launcher"]["config"], kubeconfig),
        "helm values": launcher_from_config(helm_run_launcher_config(values), kubeconfig),
    }


@pytest.mark.parametrize("field", sorted(ATTEMPTS))
def test_a_run_tag_that_changes_the_pod_is_refused(field, kubeconfig):
    for launcher in _launchers(kubeconfig).values():
        with pytest.raises(Exception, match=f"violated the allowed list: {field}$"):
            launcher.get_container_context_for_run(_run(ATTEMPTS[field]))


def test_a_run_may_ask_for_resources_and_gets_them(kubeconfig):
    for name, launcher in _launchers(kubeconfig).items():
        context = launcher.get_container_context_for_run(_run(MORE_MEMORY))
        job = construct_dagster_k8s_job(
            context.get_k8s_job_config("mnist-mlops:0.1.0", launcher),
            args=["dagster", "api", "execute_run", "{}"],
            job_name="dagster-run-0f1e2d3c",
            component="run_worker",
            user_defined_k8s_config=context.run_k8s_config,
        )
        pod = ApiClient().sanitize_for_serialization(job)["spec"]["template"]["spec"]
        # Deep-merged over the launcher's run_k8s_config: the tag's memory, the launcher's CPU.
        wanted = {"requests": {"cpu": "1", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
        assert pod["containers"][0]["resources"] == wanted, name
        assert pod["serviceAccountName"] == "mnist-dagster", name
        assert pod["securityContext"]["runAsNonRoot"] is True, name


def test_a_code_location_that_carries_pod_config_is_refused_too(kubeconfig):
    """What the chart's includeConfigInLaunchedRuns would send (hence it is off in our values):
    the allowlist treats a code location's container context like a run tag."""
    launcher = _launchers(kubeconfig)["helm values"]
    context = {"k8s": {"service_account_name": "mnist-deployer", "namespace": "mnist"}}
    with pytest.raises(Exception, match="violated the allowed list"):
        launcher.get_container_context_for_run(_run(None, context))
