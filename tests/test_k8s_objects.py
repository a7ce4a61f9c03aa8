"""The Kubernetes objects under deploy/k8s/, read as files.

What this covers:
- every object against the Kubernetes 1.30 OpenAPI schemas (``kubernetes_validate``, strict:
  unknown fields are errors), all errors of all files at once;
- the namespace of every object, the two PersistentVolumeClaims;
- every pod we define (workloads, Jobs, the InferenceService predictor): Pod Security
  "restricted", uid/gid 10001, read-only root, unique volumes and mounts;
- the InferenceService: which registry version it serves, read-only.

What this does NOT cover:
- an API server: admission (Pod Security Admission, quotas, webhooks), defaulting, and what
  controllers then do (scheduling, PVC binding: ReadWriteMany needs a storage class that has it);
- the KServe InferenceService CRD (its schema is not bundled): only the pod spec embedded in its
  predictor is validated, as a Pod;
- the Prometheus Operator's ServiceMonitor and PrometheusRule (monitoring.yaml): in
  test_prometheus_rules.py;
- the Role (test_k8s_rbac.py), the network policies (test_k8s_network_policy.py) and the
  cluster run config (test_cluster_run_config.py).
"""

from __future__ import annotations

import re

import pytest
from k8s_checks import IMAGE, NAMESPACE, describe, k8s_documents, list_problems, security_problems
from k8s_schema import schema_errors

pytestmark = pytest.mark.k8s

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


def test_every_object_under_deploy_k8s_validates_against_kubernetes_1_30() -> None:
    documents = k8s_documents()
    assert documents, "no manifests under deploy/k8s/"
    errors = []
    for name, obj in documents:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # Prometheus Operator CRDs: test_prometheus_rules.py checks them
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


def test_objects_are_in_the_mnist_namespace() -> None:
    wrong = [
        describe(name, obj)
        for name, obj in k8s_documents()
        if obj["kind"] != "Namespace" and obj["metadata"].get("namespace") != NAMESPACE
    ]
    assert not wrong


def test_pvcs_are_shared_read_write_many_volumes() -> None:
    claims = {obj["metadata"]["name"]: obj for _, obj in k8s_documents() if obj["kind"] == "PersistentVolumeClaim"}
    assert set(claims) == {"data", "models"}
    sizes = {name: claim["spec"]["resources"]["requests"]["storage"] for name, claim in claims.items()}
    assert sizes == {"data": "20Gi", "models": "5Gi"}
    for claim in claims.values():
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert "storageClassName" not in claim["spec"]  # the cluster's default class, on purpose


def test_every_pod_we_define_runs_restricted() -> None:
    problems, seen = [], 0
    for name, obj in k8s_documents():
        for spec in pod_specs(obj):
            seen += 1
            problems += security_problems(spec, describe(name, obj)) + list_problems(spec, describe(name, obj))
    assert seen, "no pod templates found under deploy/k8s/"
    assert not problems, "\n".join(problems)


def test_inference_service_serves_a_registry_version_read_only() -> None:
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


def test_serving_pods_take_the_feedback_token_from_an_optional_secret() -> None:
    """Both ways of serving read $MNIST_FEEDBACK_TOKEN from the Secret mnist-feedback (optional:
    without it the pods start and refuse feedback); the token is never in a command line."""
    serving = [obj for _, obj in k8s_documents() if obj["kind"] in {"Deployment", "InferenceService"}]
    containers = [c for obj in serving for spec in pod_specs(obj) for c in spec["containers"]]
    containers = [c for c in containers if c["command"][:3] == ["python", "-m", "mnist_serving"]]
    assert len(containers) == 2
    for container in containers:
        (token,) = [e for e in container["env"] if e["name"] == "MNIST_FEEDBACK_TOKEN"]
        assert token["valueFrom"] == {"secretKeyRef": {"name": "mnist-feedback", "key": "token", "optional": True}}
        assert not any("token" in arg.lower() for arg in container["command"])
