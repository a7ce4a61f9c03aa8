"""Static checks of the container image and the cluster deployment files.

What this covers:
- every Kubernetes object under deploy/k8s/ against the Kubernetes 1.30 OpenAPI schemas
  (``kubernetes_validate``, strict: unknown fields are errors), all errors of all files at once;
- the pods we define, and the run/step pods Dagster launches (built with dagster-k8s itself from
  deploy/dagster.yaml and from the Helm values): restricted security context, valid 1.30 Jobs;
- the Role: exactly the rules listed, no wildcards, and every Kubernetes API call that
  dagster-k8s and the serving deployer make (read from their source) is granted, nothing more;
- deploy/dagster.yaml against the installed Dagster: the instance schema, K8sRunLauncher's
  schema and the non-storage instance classes;
- the cluster run config (ConfigMap) against the repo's run_config.yaml and PipelineConfig;
- the Dockerfile, parsed statically, with .dockerignore and requirements/constraints.txt.

What this does NOT cover:
- an API server: admission (Pod Security Admission, quotas, webhooks), defaulting, and what
  controllers then do (scheduling, PVC binding: ReadWriteMany needs a storage class that has it);
- the KServe InferenceService CRD (its schema is not bundled): only the pod spec embedded in its
  predictor is validated, as a Pod;
- the Helm chart: its templates are not rendered (no helm here). The values' keys are checked
  against key lists copied from the chart's 1.13 schema, and the run pods it would launch are
  built by emulating the two templates that turn values into dagster-k8s config;
- the Postgres storages: tests/test_postgres_instance.py loads them against a real server;
- building or running the image: the Dockerfile is parsed, not built.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from k8s_schema import schema_errors
from pod_security import restricted_violations

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

# Each Role, exactly: (apiGroup, resource, verb).
LAUNCHER_RULES = {
    ("batch", "jobs", "create"),
    ("batch", "jobs", "delete"),
    ("batch", "jobs", "list"),
    ("batch", "jobs/status", "get"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "delete"),
    ("", "pods/log", "get"),
    ("", "events", "list"),
}
DEPLOYER_RULES = {
    ("apps", "deployments", "get"),
    ("apps", "deployments", "create"),
    ("apps", "deployments", "patch"),
    ("apps", "deployments", "delete"),
    ("apps", "deployments/status", "get"),
    ("", "services", "get"),
    ("", "services", "create"),
    ("", "services", "delete"),
    ("policy", "poddisruptionbudgets", "get"),
    ("policy", "poddisruptionbudgets", "create"),
    ("policy", "poddisruptionbudgets", "delete"),
}
EXPECTED_ROLES = {SERVICE_ACCOUNT: LAUNCHER_RULES, "mnist-deployer": DEPLOYER_RULES}
SERVING_SERVICE_ACCOUNT = "mnist-serving"


# ---- helpers ------------------------------------------------------------------------------------


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


# KServe fields of a predictor besides the PodSpec it inlines (serving.kserve.io/v1beta1).
KSERVE_COMPONENT_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "autoScaling",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}


def inference_service_pod(obj: dict) -> dict:
    """The predictor of an InferenceService as the Pod it describes (a PodSpec plus KServe fields)."""
    predictor = obj["spec"]["predictor"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{obj['metadata']['name']}-predictor", "namespace": obj["metadata"].get("namespace")},
        "spec": {key: value for key, value in predictor.items() if key not in KSERVE_COMPONENT_FIELDS},
    }


def pod_specs(obj: dict) -> list[dict]:
    """The pod specs an object defines (workloads, Jobs, CronJobs, InferenceService predictors)."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        return [spec]
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}:
        return [spec["template"]["spec"]]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "InferenceService":
        return [inference_service_pod(obj)["spec"]]
    return []


def load_dagster_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def load_helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
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


def launcher_from_config(config: dict, kubeconfig: str):
    """A K8sRunLauncher from its instance config, validated by its own schema; in-cluster loading
    is swapped for a kubeconfig file (the only difference from the cluster)."""
    from dagster._config import process_config, resolve_to_config_type
    from dagster_k8s import K8sRunLauncher

    result = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), config)
    assert result.success, [error.message for error in result.errors]
    return K8sRunLauncher(**{**result.value, "load_incluster_config": False, "kubeconfig_file": kubeconfig})


def launched_run_job(launcher, image: str | None = None):
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


def check_run_job(job: dict, context, where: str) -> list[str]:
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


# ---- Kubernetes objects -------------------------------------------------------------------------


def test_every_object_under_deploy_k8s_validates_against_kubernetes_1_30():
    documents = k8s_documents()
    assert documents, "no manifests under deploy/k8s/"
    errors = []
    for name, obj in documents:
        if obj.get("kind") == "InferenceService":
            # A CRD: kubernetes_validate has no schema for it. Its predictor is a PodSpec plus
            # KServe's fields: that part is validated as a Pod; the CRD's own fields are not.
            assert obj["apiVersion"] == "serving.kserve.io/v1beta1", describe(name, obj)
            errors += [
                f"{describe(name, obj)} (predictor as a Pod): {e}" for e in schema_errors(inference_service_pod(obj))
            ]
            continue
        errors += [f"{describe(name, obj)}: {e}" for e in schema_errors(obj)]
    assert not errors, "\n".join(errors)


def test_objects_are_in_the_mnist_namespace():
    wrong = [
        describe(name, obj)
        for name, obj in k8s_documents()
        if obj["kind"] != "Namespace" and obj["metadata"].get("namespace") != NAMESPACE
    ]
    assert not wrong


def test_pvcs_are_shared_read_write_many_volumes():
    claims = {obj["metadata"]["name"]: obj for _, obj in k8s_documents() if obj["kind"] == "PersistentVolumeClaim"}
    assert set(claims) == {"data", "models"}
    sizes = {name: claim["spec"]["resources"]["requests"]["storage"] for name, claim in claims.items()}
    assert sizes == {"data": "20Gi", "models": "5Gi"}
    for claim in claims.values():
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert "storageClassName" not in claim["spec"]  # the cluster's default class, on purpose


def test_every_pod_we_define_runs_restricted():
    problems, seen = [], 0
    for name, obj in k8s_documents():
        for spec in pod_specs(obj):
            seen += 1
            problems += security_problems(spec, describe(name, obj)) + list_problems(spec, describe(name, obj))
    assert seen, "no pod templates found under deploy/k8s/"
    assert not problems, "\n".join(problems)


def test_inference_service_serves_a_registry_version_read_only():
    (isvc,) = [obj for _, obj in k8s_documents() if obj["kind"] == "InferenceService"]
    assert isvc["metadata"]["name"] == "mnist"
    pod = inference_service_pod(isvc)["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    command = container["command"]
    assert command[:3] == ["python", "-m", "mnist_serving"]
    assert re.fullmatch(r"/models/mnist/\d+", command[command.index("--model-dir") + 1])
    assert command[command.index("--host") + 1] == "0.0.0.0" and command[command.index("--port") + 1] == "8080"
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert next(m for m in container["volumeMounts"] if m["name"] == "models")["readOnly"] is True


# ---- RBAC ---------------------------------------------------------------------------------------


def rbac_objects() -> dict[tuple[str, str], dict]:
    """(kind, name): object, for deploy/k8s/rbac.yaml."""
    return {(obj["kind"], obj["metadata"]["name"]): obj for name, obj in k8s_documents() if name == "rbac.yaml"}


def granted(role: dict) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def test_roles_grant_exactly_the_listed_rules_and_no_wildcards():
    objects = rbac_objects()
    accounts = {SERVICE_ACCOUNT, "mnist-deployer", SERVING_SERVICE_ACCOUNT}
    assert {name for kind, name in objects if kind == "ServiceAccount"} == accounts
    assert {name for kind, name in objects if kind == "Role"} == set(EXPECTED_ROLES)
    assert {name for kind, name in objects if kind == "RoleBinding"} == set(EXPECTED_ROLES)
    for name, rules in EXPECTED_ROLES.items():
        role = objects[("Role", name)]
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected fields (resourceNames?) in {rule}"
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in value for value in rule[field]), f"wildcard in {rule}"
        assert granted(role) == rules, name
        assert objects[("ServiceAccount", name)]["automountServiceAccountToken"] is True
        binding = objects[("RoleBinding", name)]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    # The serving pods' account: bound to nothing, no token.
    assert objects[("ServiceAccount", SERVING_SERVICE_ACCOUNT)]["automountServiceAccountToken"] is False


_VERBS = {"read": "get", "list": "list", "create": "create", "delete": "delete", "patch": "patch", "replace": "update"}


def rbac_for_call(group: str, method: str) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) an API client method needs: read_namespaced_job_status is
    ('batch', 'jobs/status', 'get')."""
    action, namespaced, kind = method.partition("_namespaced_")
    assert namespaced, f"{method}: not a namespaced call; a Role cannot grant it"
    for suffix in ("_status", "_log"):
        if kind.endswith(suffix):
            return group, f"{kind.removesuffix(suffix).replace('_', '')}s/{suffix[1:]}", _VERBS[action]
    return group, f"{kind.replace('_', '')}s", _VERBS[action]


def api_calls(tree: ast.AST, clients: dict[str, str]) -> set[tuple[str, str, str]]:
    """RBAC needs of ``<x>.<client>.<method>`` for the client attributes given, whether called
    there or passed on to be called (``_missing(self.core.read_namespaced_service, ...)``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr in clients:
            found.add(rbac_for_call(clients[node.value.attr], node.attr))
    return found


def dagster_k8s_needs() -> set[tuple[str, str, str]]:
    """What the launcher and the executor call on DagsterKubernetesClient, down to the API calls."""
    import dagster_k8s

    package = Path(dagster_k8s.__file__).parent
    client_tree = ast.parse((package / "client.py").read_text())
    (cls,) = [n for n in client_tree.body if isinstance(n, ast.ClassDef) and n.name == "DagsterKubernetesClient"]
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    used = set()
    for module in ("launcher.py", "executor.py"):
        for node in ast.walk(ast.parse((package / module).read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = node.func.value
                name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
                if name in {"_api_client", "api_client"} and node.func.attr in methods:
                    used.add(node.func.attr)
    assert used, "found no DagsterKubernetesClient calls in dagster_k8s's launcher and executor"
    pending, seen = list(used), set()
    while pending:  # methods that call other methods of the client
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(methods[name]):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in methods
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "self"
            ):
                pending.append(node.func.attr)
    needs = set()
    for name in seen:
        needs |= api_calls(methods[name], {"batch_api": "batch", "core_api": ""})
    return needs


def serving_deployer_needs() -> set[tuple[str, str, str]]:
    source = ROOT / "mnist_serving" / "k8s_endpoint.py"
    assert source.is_file(), "mnist_serving/k8s_endpoint.py is gone: drop its rules from deploy/k8s/rbac.yaml"
    return api_calls(ast.parse(source.read_text()), {"apps": "apps", "core": "", "policy": "policy"})


@pytest.mark.parametrize(
    ("role", "code_needs"), [(SERVICE_ACCOUNT, dagster_k8s_needs), ("mnist-deployer", serving_deployer_needs)]
)
def test_role_grants_what_the_code_calls_and_nothing_more(role, code_needs):
    needs = code_needs()
    rules = granted(rbac_objects()[("Role", role)])
    assert not needs - rules, f"{role}: called but not granted: {sorted(needs - rules)}"
    assert not rules - needs, f"{role}: granted but never called: {sorted(rules - needs)}"


def test_only_the_delivery_steps_run_as_the_deployer():
    """Every op that deploys (calls the deployer) runs as mnist-deployer in mnist_pipeline_k8s;
    the others, and every run pod, as mnist-dagster."""
    from dagster_k8s.job import get_user_defined_k8s_config

    from mnist_assets.definitions import defs
    from mnist_assets.k8s import DEPLOYER_SERVICE_ACCOUNT

    job = defs.resolve_job_def("mnist_pipeline_k8s")
    accounts = {  # as k8s_job_executor reads the op tags
        node.name: get_user_defined_k8s_config(node.definition.tags).pod_spec_config.get("service_account_name")
        for node in job.nodes
    }
    assert DEPLOYER_SERVICE_ACCOUNT == "mnist-deployer" and ("Role", DEPLOYER_SERVICE_ACCOUNT) in rbac_objects()
    deployers = {name for name, account in accounts.items() if account == DEPLOYER_SERVICE_ACCOUNT}
    assert deployers == {"model_deployment", "deployment_test_results"}
    assert {account for name, account in accounts.items() if name not in deployers} == {None}  # the run's own
    assert not job.tags.get("dagster-k8s/config"), "a job tag would change the run pod"


# ---- deploy/dagster.yaml ------------------------------------------------------------------------


def test_dagster_yaml_matches_the_instance_schema():
    from dagster._config import process_config
    from dagster._config.field_utils import Shape
    from dagster._core.instance.config import dagster_instance_config_schema

    result = process_config(Shape(dagster_instance_config_schema()), load_dagster_yaml())
    assert result.success, [error.message for error in result.errors]


def test_run_launcher_validates_against_k8s_run_launcher_config(kubeconfig):
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
    assert launcher.env_config_maps == ["mnist-env"]
    assert launcher.env_secrets == ["mnist-secrets"]
    assert launcher.dagster_home == "/opt/dagster/home"  # the image's DAGSTER_HOME


def test_run_pods_launched_from_dagster_yaml_are_valid_and_restricted(kubeconfig):
    config = load_dagster_yaml()["run_launcher"]["config"]
    run_k8s_config = config["run_k8s_config"]
    fragment = {
        "securityContext": run_k8s_config["pod_spec_config"]["securityContext"],
        "containers": [{"name": "run", "securityContext": run_k8s_config["container_config"]["securityContext"]}],
    }
    problems = security_problems(fragment, "dagster.yaml run_k8s_config")
    job, context = launched_run_job(launcher_from_config(config, kubeconfig))
    problems += check_run_job(job, context, "run Job from deploy/dagster.yaml")
    assert not problems, "\n".join(problems)


def test_other_instance_classes_load():
    from dagster._serdes.config_class import ConfigurableClassData

    instance = load_dagster_yaml()
    assert instance["telemetry"] == {"enabled": False}
    for key in ("local_artifact_storage", "compute_logs"):
        block = instance[key]
        loaded = ConfigurableClassData(block["module"], block["class"], yaml.safe_dump(block.get("config", {})))
        assert loaded.rehydrate() is not None
    assert instance["local_artifact_storage"]["config"]["base_dir"].startswith("/data/")


# ---- Helm values --------------------------------------------------------------------------------

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
HELM_RELEASE = "dagster"  # `helm upgrade --install dagster ...`: resource prefix "dagster"


def helm_run_launcher_config(values: dict) -> dict:
    """K8sRunLauncher config as the chart writes it into the instance: a CustomRunLauncher's
    config goes in as written (templates/helpers/instance/_run-launcher.tpl)."""
    custom = values["runLauncher"]["config"]["customRunLauncher"]
    assert (custom["module"], custom["class"]) == ("dagster_k8s", "K8sRunLauncher")
    return custom["config"]


def mnist_deployment(values: dict) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_helm_values_use_chart_keys_and_our_names():
    values = load_helm_values()
    assert values["runLauncher"]["type"] == "CustomRunLauncher"
    k8s = helm_run_launcher_config(values)
    assert k8s["job_namespace"] == NAMESPACE and k8s["service_account_name"] == SERVICE_ACCOUNT
    assert k8s["env_config_maps"] == ["mnist-env"] and k8s["env_secrets"] == ["mnist-secrets"]
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
    assert {"name": "MNIST_RUN_CONFIG", "value": "/config/run_config.yaml"} in deployment["env"]
    config_volume = next(v for v in deployment["volumes"] if "configMap" in v)
    assert config_volume["configMap"]["name"] == "mnist-run-config"
    mount = next(m for m in deployment["volumeMounts"] if m["name"] == config_volume["name"])
    assert mount["mountPath"] == "/config"

    # No password anywhere: an external PostgreSQL, its password in a Secret the user creates.
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in values["postgresql"]
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"
    # The webserver is never exposed: ClusterIP, no Ingress.
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP" and values["ingress"]["enabled"] is False
    assert values["dagsterDaemon"]["enabled"] is True
    assert values["telemetry"] == {"enabled": False}
    assert values["global"]["dagsterHome"] == "/opt/dagster/home"


def test_helm_user_code_pod_runs_restricted():
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
    assert {"/data", "/models", "/tmp", "/opt/dagster/home", "/config"} <= mounts
    assert not problems, "\n".join(problems)


def test_helm_run_pods_are_valid_and_restricted(kubeconfig):
    values = load_helm_values()
    run_k8s_config = helm_run_launcher_config(values)["run_k8s_config"]
    fragment = {
        "securityContext": run_k8s_config["pod_spec_config"]["securityContext"],
        "containers": [{"name": "run", "securityContext": run_k8s_config["container_config"]["securityContext"]}],
    }
    problems = security_problems(fragment, "helm run_k8s_config")
    launcher = launcher_from_config(helm_run_launcher_config(values), kubeconfig)
    job, container_context = launched_run_job(launcher, image=IMAGE)
    problems += check_run_job(job, container_context, "run Job from the Helm values")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    if env.get("MNIST_RUN_CONFIG") != "/config/run_config.yaml":
        problems.append("run Job from the Helm values: MNIST_RUN_CONFIG not carried into the run")
    assert not problems, "\n".join(problems)


# ---- the cluster run config ---------------------------------------------------------------------

# Where the cluster run config differs from run_config.yaml; every such line says CLUSTER.
CLUSTER_OVERRIDES = {
    ("data_store", "root"): "/data",
    ("registry", "root"): "/models",
    ("serving", "backend"): "kubernetes",
    ("serving", "host"): "0.0.0.0",
    ("serving", "state_dir"): "/data/serving",
}


def test_cluster_run_config_is_run_config_yaml_with_cluster_paths():
    from mnist_assets.config import PipelineConfig

    (config_map,) = [obj for name, obj in k8s_documents() if name == "run-config.yaml"]
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "mnist-run-config"
    text = config_map["data"]["run_config.yaml"]
    cluster = yaml.safe_load(text)
    expected = copy.deepcopy(yaml.safe_load((ROOT / "run_config.yaml").read_text()))
    for (section, key), value in CLUSTER_OVERRIDES.items():
        expected[section][key] = value
    assert cluster == expected, "deploy/k8s/run-config.yaml differs from run_config.yaml beyond the CLUSTER lines"
    PipelineConfig.model_validate(cluster)
    for (_, key), value in CLUSTER_OVERRIDES.items():
        (line,) = [line for line in text.splitlines() if re.match(rf"\s+{key}: {re.escape(value)}\b", line)]
        assert "# CLUSTER" in line, line


# ---- the image ----------------------------------------------------------------------------------


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[dict]]:
    """Global ARGs, and the stages: {"from", "name", "instructions": [(INSTRUCTION, arguments)]}."""
    logical, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[dict] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"from": image, "name": name, "instructions": []})
        else:
            assert stages, f"{instruction} before the first FROM"
            stages[-1]["instructions"].append((instruction, rest))
    return args, stages


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops ``path`` (or a folder holding it) from the build context."""
    prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    for pattern in patterns:
        regex = re.escape(pattern.strip("/"))
        regex = (
            regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        )
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            return True
    return False


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_dockerfile_is_multi_stage_from_a_pinned_slim_base(dockerfile):
    _, stages = dockerfile
    assert len(stages) >= 2
    names = set()
    for stage in stages:
        image = stage["from"]
        if image not in names:  # not an earlier stage
            assert "$" not in image, f"unresolved base image {image}"
            reference = image.split("@")[0]
            assert ":" in reference.rsplit("/", 1)[-1], f"{image}: no tag"
            tag = reference.rsplit(":", 1)[1]
            assert tag != "latest", image
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", reference), f"{image}: not a pinned 3.11 slim"
        if stage["name"]:
            names.add(stage["name"])


def test_dockerfile_installs_with_the_constraints_in_a_venv(dockerfile):
    _, stages = dockerfile
    builder = stages[0]["instructions"]
    runs = " ".join(rest for instruction, rest in builder if instruction == "RUN")
    assert "python -m venv /opt/venv" in runs
    assert re.search(r'pip install --no-cache-dir -c requirements/constraints\.txt "\.\[cpu\]"', runs), runs
    tools = re.search(r"pip install --no-cache-dir -c requirements/constraints\.txt pip setuptools wheel", runs)
    assert tools and tools.start() < runs.index('".[cpu]"'), "the build tools are installed first, pinned"
    assert "-e " not in runs and "--editable" not in runs
    assert any(i == "COPY" and "requirements/constraints.txt" in rest for i, rest in builder)
    final = stages[-1]["instructions"]
    assert any(i == "COPY" and rest.startswith("--from=builder /opt/venv /opt/venv") for i, rest in final)


def test_dockerfile_final_stage_runs_as_10001_with_the_grpc_server(dockerfile):
    _, stages = dockerfile
    final = stages[-1]["instructions"]
    kinds = [instruction for instruction, _ in final]
    users = [rest for instruction, rest in final if instruction == "USER"]
    assert users, "no USER in the final stage"
    assert users[-1] == str(UID)
    last_user = len(kinds) - 1 - kinds[::-1].index("USER")
    assert "RUN" not in kinds[last_user:], "a RUN after the last USER runs as root"
    setup = " ".join(rest for instruction, rest in final if instruction == "RUN")
    assert "--uid 10001" in setup and "--gid 10001" in setup and "nologin" in setup
    env = " ".join(rest for instruction, rest in final if instruction == "ENV")
    for setting in ("PATH=/opt/venv/bin:$PATH", "PYTHONUNBUFFERED=1", "DAGSTER_HOME=/opt/dagster/home"):
        assert setting in env
    assert ("WORKDIR", "/app") in final
    exposed = {port for instruction, rest in final if instruction == "EXPOSE" for port in rest.split()}
    assert {"8080", "4000"} <= exposed
    commands = [rest for instruction, rest in final if instruction in {"CMD", "ENTRYPOINT"}]
    assert commands, "no CMD or ENTRYPOINT"
    cmd = json.loads([rest for instruction, rest in final if instruction == "CMD"][-1])
    assert cmd == ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "mnist_assets.definitions"]


def test_dockerfile_fetches_nothing_and_holds_no_secrets(dockerfile):
    args, stages = dockerfile
    everything = [(i, rest) for stage in stages for i, rest in stage["instructions"]]
    for instruction, rest in everything:
        assert not (instruction == "ADD" and re.search(r"https?://", rest)), rest
        if instruction in {"ENV", "ARG"}:
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY|WEBHOOK)", rest, re.I), rest
    assert "latest" not in " ".join(args.values())


def test_dockerfile_copies_exist_and_are_not_dockerignored(dockerfile):
    _, stages = dockerfile
    patterns = dockerignore_patterns()
    assert not [p for p in patterns if p.startswith("!")], "negated patterns: extend ignored() first"
    problems = []
    for stage in stages:
        for instruction, rest in stage["instructions"]:
            if instruction != "COPY" or rest.startswith("--from"):
                continue
            for source in [w for w in rest.split() if not w.startswith("--")][:-1]:
                path = ROOT / source
                if not path.exists():
                    problems.append(f"COPY {source}: not in the repo")
                    continue
                files = [path] if path.is_file() else sorted(path.rglob("*.py"))
                problems += [
                    f"COPY {source}: {f.relative_to(ROOT)} is dropped by .dockerignore"
                    for f in files
                    if ignored(str(f.relative_to(ROOT)), patterns)
                ]
    assert not problems, "\n".join(problems)


def test_dockerignore_keeps_local_state_out():
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", "var", "var/data/processed/mnist.npz", "tests/test_serving.py"):
        assert ignored(path, patterns), path
    for path in ("benchmarks/results/x.json", "mnist_ml/__pycache__/idx.cpython-311.pyc", "x/data.tar", "a.npz"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "mnist_ml/idx.py", "requirements/constraints.txt", "run_config.yaml"):
        assert not ignored(path, patterns), path
