"""What the Kubernetes, Dagster-instance and Helm tests share: where the deployment files are,
our names, pod checks (Pod Security "restricted" and ours on top), and the run Job dagster-k8s
builds from a launcher config (K8sRunLauncher and its Job builder, not a copy of them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from k8s_schema import schema_errors
from pod_security import restricted_violations

if TYPE_CHECKING:
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.container_context import K8sContainerContext

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_DIR = DEPLOY / "k8s"

NAMESPACE = "mnist"
SERVICE_ACCOUNT = "mnist-dagster"
IMAGE = "mnist-mlops:0.1.0"
UID = 10001

POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def k8s_documents() -> list[tuple[str, dict]]:
    """(file name, object) for every YAML document under deploy/k8s/."""
    found = []
    for path in sorted(K8S_DIR.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.name, doc))
    return found


def describe(name: str, obj: dict) -> str:
    return f"{name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def list_problems(pod_spec: dict, where: str) -> list[str]:
    """What the JSON schema cannot see: names that must be unique, mounts of undeclared volumes."""
    problems = []
    volumes = [v["name"] for v in pod_spec.get("volumes") or []]
    for name in {n for n in volumes if volumes.count(n) > 1}:
        problems.append(f"{where}: volume {name!r} declared {volumes.count(name)} times")
    for container in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        mounts = container.get("volumeMounts") or []
        paths = [m["mountPath"] for m in mounts]
        for path in {p for p in paths if paths.count(p) > 1}:
            problems.append(f"{where}: container {container.get('name')}: {path} mounted {paths.count(path)} times")
        for mount in mounts:
            if mount["name"] not in volumes:
                problems.append(f"{where}: container {container.get('name')} mounts undeclared volume {mount['name']}")
    return problems


def security_problems(pod_spec: dict, where: str) -> list[str]:
    """The Pod Security Standards "restricted" profile, and ours on top: uid/gid 10001,
    RuntimeDefault seccomp, and per container a read-only root filesystem, no added capabilities."""
    problems = [f"{where}: {violation}" for violation in restricted_violations(pod_spec)]
    pod_context = pod_spec.get("securityContext") or {}
    for key, wanted in POD_SECURITY_CONTEXT.items():
        if pod_context.get(key) != wanted:
            problems.append(f"{where}: pod securityContext.{key} is {pod_context.get(key)!r}, want {wanted!r}")
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    if not containers:
        problems.append(f"{where}: no containers")
    for container in containers:
        context = container.get("securityContext") or {}
        name = f"{where}: container {container.get('name')}"
        if context.get("runAsNonRoot") is False or context.get("runAsUser") == 0 or context.get("privileged"):
            problems.append(f"{name}: overrides the pod to run as root or privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem must be true")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities.drop must include ALL")
        if capabilities.get("add"):
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
    return problems


def load_dagster_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def load_helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def helm_run_launcher_config(values: dict) -> dict:
    """K8sRunLauncher config as the chart writes it into the instance. The chart is not rendered
    here; for a CustomRunLauncher its template (helm/dagster/templates/helpers/instance/
    _run-launcher.tpl, "dagsterYaml.runLauncher.custom") writes the config as given:
    ``config: {{ $customRunLauncherConfig.config | toYaml | nindent 2 }}``."""
    custom = values["runLauncher"]["config"]["customRunLauncher"]
    assert (custom["module"], custom["class"]) == ("dagster_k8s", "K8sRunLauncher")
    return custom["config"]


def mnist_deployment(values: dict) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kubeconfig for a cluster that is never called: K8sRunLauncher loads a config when it is
    built (in the cluster, the in-cluster one). Loading it sets the kubernetes client's process-wide
    default configuration, which is put back afterwards."""
    from kubernetes import client

    monkeypatch.setattr(client.Configuration, "_default", client.Configuration._default)
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "none", "user": {"token": "unused"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    return str(path)


def launcher_from_config(config: dict, kubeconfig: str) -> K8sRunLauncher:
    """A K8sRunLauncher from its instance config, validated by its own schema; in-cluster loading
    is swapped for a kubeconfig file (the only difference from the cluster)."""
    from dagster._config import process_config, resolve_to_config_type
    from dagster_k8s import K8sRunLauncher

    result = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), config)
    assert result.success, [error.message for error in result.errors]
    return K8sRunLauncher(**{**result.value, "load_incluster_config": False, "kubeconfig_file": kubeconfig})


def launched_run_job(launcher: K8sRunLauncher, image: str | None = None) -> tuple[dict, K8sContainerContext]:
    """The run worker Job the launcher would create, built as K8sRunLauncher._launch_k8s_job_with_args
    builds it, as a camelCase dict; and its container context. ``image`` is the one the code
    server reports (the Helm chart's user deployment)."""
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job
    from kubernetes import client

    run = DagsterRun(job_name="mnist_pipeline", run_id="0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9")
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=image, run_launcher=launcher),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0f1e2d3c",
        pod_name="dagster-run-0f1e2d3c",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": run.job_name}],
    )
    return client.ApiClient().sanitize_for_serialization(job), context


def run_k8s_config_problems(run_k8s_config: dict, where: str) -> list[str]:
    """The security contexts a launcher's run_k8s_config puts on run pods, checked as a pod."""
    fragment = {
        "securityContext": run_k8s_config["pod_spec_config"]["securityContext"],
        "containers": [{"name": "run", "securityContext": run_k8s_config["container_config"]["securityContext"]}],
    }
    return security_problems(fragment, where)


def check_run_job(job: dict, context: K8sContainerContext, where: str) -> list[str]:
    """A launched run's Job: valid for 1.30, restricted pod, our namespace, service account, volumes."""
    pod = job["spec"]["template"]["spec"]
    problems = [f"{where}: {e}" for e in schema_errors(job)]
    problems += list_problems(pod, where) + security_problems(pod, where)
    if context.namespace != NAMESPACE:
        problems.append(f"{where}: launched in namespace {context.namespace!r}, want {NAMESPACE!r}")
    if pod.get("serviceAccountName") != SERVICE_ACCOUNT:
        problems.append(f"{where}: service account {pod.get('serviceAccountName')!r}, want {SERVICE_ACCOUNT!r}")
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
    for path, claim in {"/data": "data", "/models": "models"}.items():
        if claims.get(mounts.get(path)) != claim:
            problems.append(f"{where}: {path} is not the {claim} PVC")
    for path in ("/tmp", "/opt/dagster/home"):  # writable scratch and DAGSTER_HOME on a read-only root
        if path not in mounts:
            problems.append(f"{where}: nothing writable mounted at {path}")
    if job["spec"].get("ttlSecondsAfterFinished") != 3600:
        problems.append(f"{where}: ttlSecondsAfterFinished is {job['spec'].get('ttlSecondsAfterFinished')}")
    if pod["containers"][0]["image"] != IMAGE:
        problems.append(f"{where}: image {pod['containers'][0]['image']}")
    return problems
