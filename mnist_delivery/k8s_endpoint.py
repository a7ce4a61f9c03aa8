"""Run the endpoint on Kubernetes: a Deployment of the model server and a Service, pointed
at a registry version on the ``models`` volume. A ``DeployBackend``, like ``LocalEndpoint``.

A redeploy patches the Deployment's model folder; Kubernetes rolls new pods out (one extra
pod at a time, none taken away before its successor is ready) and the Service only sends
traffic to ready pods. A PodDisruptionBudget keeps one pod up through node drains.
``python -m mnist_delivery.k8s_endpoint`` prints the manifests shipped in deploy/k8s/serving.yaml."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath, PurePosixPath

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mnist_delivery.backend import DeployError, Endpoint
from mnist_ml.log import Log
from mnist_ml.model_contract import MODEL_NAME
from mnist_serving.options import DEFAULT_PORT, FEEDBACK_TOKEN_ENV, ServerOptions

VERSION_ANNOTATION = "mnist-mlops/model-version"
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


@dataclass(frozen=True)
class ServingSpec:
    """What the serving pods look like; the defaults match deploy/k8s."""

    namespace: str = "mnist"
    name: str = "mnist-serving"
    image: str = "mnist-mlops:0.1.0"  # as deploy/image.env (tests/test_k8s_image.py)
    port: int = DEFAULT_PORT
    replicas: int = 2
    models_claim: str = "models"
    data_claim: str = "data"
    data_mount: str = "/data"  # where run and step pods mount the data claim (the request log's root)
    service_account: str = "mnist-serving"  # no Role: the server never calls the API
    cpu: str = "1"
    # Peak RSS 952 MiB with 8 concurrent requests of 1,024 images (v2 binary and JSON, uint8 and
    # float32) for 30 s, request log on, idle 772 MiB; the limit is 1.6x that peak. Measured with
    # `.venv/bin/python benchmarks/serving_memory.py --seconds 30` (2 cores, TF 2.21 CPU).
    memory: str = "1536Mi"
    options: ServerOptions = ServerOptions()
    request_log: PurePosixPath | None = None  # the request log's folder, under data_mount
    # The feedback route's bearer token: key `token` of this Secret, as $MNIST_FEEDBACK_TOKEN.
    # Optional: without the Secret the pods start and refuse feedback (403).
    feedback_secret: str = "mnist-feedback"

    @property
    def url(self) -> str:
        return f"http://{self.name}.{self.namespace}.svc.cluster.local:{self.port}"

    def server_args(self) -> list[str]:
        """The server's options, and where it logs requests when it does."""
        log = ["--request-log-dir", str(self.request_log)] if self.options.request_log and self.request_log else []
        return [*self.options.argv(), *log]


def _labels(spec: ServingSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": "mnist-mlops"}


def _volumes(spec: ServingSpec) -> tuple[list[dict], list[dict]]:
    """Volumes and mounts: every model version read-only; of the data claim only the request
    log's folder (subPath), writable; scratch space on /tmp. Nothing else of the data claim."""
    volumes = [
        {"name": "models", "persistentVolumeClaim": {"claimName": spec.models_claim, "readOnly": True}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    mounts = [{"name": "models", "mountPath": "/models", "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}]
    log = spec.request_log if spec.options.request_log else None
    if log is not None:
        if not log.is_relative_to(spec.data_mount):
            raise DeployError(f"the request log {log} must be under {spec.data_mount}, the data volume")
        volumes.append({"name": "request-log", "persistentVolumeClaim": {"claimName": spec.data_claim}})
        sub_path = str(log.relative_to(spec.data_mount))
        mounts.append({"name": "request-log", "mountPath": str(log), "subPath": sub_path})
    return volumes, mounts


def deployment(spec: ServingSpec, model_dir: str, version: str) -> dict:
    """The serving Deployment for one registry version (a path on the models volume)."""
    labels = _labels(spec)
    ready = {"httpGet": {"path": f"/v2/models/{MODEL_NAME}/ready", "port": "http"}, "periodSeconds": 5}
    command = ["python", "-m", "mnist_serving", "--model-dir", model_dir, "--host", "0.0.0.0", "--port", str(spec.port)]
    command += spec.server_args()
    volumes, mounts = _volumes(spec)
    container = {
        "name": "server",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "ports": [{"name": "http", "containerPort": spec.port}],
        "env": [
            {
                "name": FEEDBACK_TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": spec.feedback_secret, "key": "token", "optional": True}},
            }
        ],
        "readinessProbe": {**ready, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
            "initialDelaySeconds": 30,
        },
        "startupProbe": {**ready, "failureThreshold": 60},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},  # let the Service drop the pod first
        "resources": {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": {"memory": spec.memory}},
        "securityContext": RESTRICTED,
        "volumeMounts": mounts,
    }
    pod_security = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {VERSION_ANNOTATION: version},
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": spec.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": {VERSION_ANNOTATION: version}},
                "spec": {
                    "serviceAccountName": spec.service_account,
                    "automountServiceAccountToken": False,  # the server never calls the API
                    "securityContext": pod_security,
                    "terminationGracePeriodSeconds": 30,
                    # Replicas on different nodes where there are several; never blocks scheduling.
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": spec.name}},
                        }
                    ],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def pod_disruption_budget(spec: ServingSpec) -> dict:
    """At least one serving pod stays up through voluntary disruptions (node drains, upgrades)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": _labels(spec)},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": spec.name}}},
    }


def service(spec: ServingSpec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": _labels(spec)},
        "spec": {
            "selector": {"app.kubernetes.io/name": spec.name},
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http"}],
        },
    }


class KubernetesEndpoint:
    """The endpoint as a Deployment and Service, managed through the Kubernetes API."""

    def __init__(
        self, api: client.ApiClient, spec: ServingSpec, *, rollout_timeout: float = 600.0, log: Log = print
    ) -> None:
        self.apps, self.core, self.policy = client.AppsV1Api(api), client.CoreV1Api(api), client.PolicyV1Api(api)
        self.spec, self.rollout_timeout, self.log = spec, rollout_timeout, log

    def current(self) -> Endpoint | None:
        try:
            found = self.apps.read_namespaced_deployment(self.spec.name, self.spec.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        container = found.spec.template.spec.containers[0]
        model_dir = container.command[container.command.index("--model-dir") + 1]
        version = (found.metadata.annotations or {}).get(VERSION_ANNOTATION, PurePosixPath(model_dir).name)
        return self._endpoint(model_dir, version, found.metadata.creation_timestamp)

    def deploy(self, version_dir: PurePath | str, version: str) -> Endpoint:
        """Create or patch the Deployment for ``version_dir`` (a path on the models volume);
        create the Service and PodDisruptionBudget if missing; then wait for the rollout."""
        body = deployment(self.spec, str(version_dir), str(version))
        ns = self.spec.namespace
        if self.current() is None:
            self.apps.create_namespaced_deployment(ns, body)
        else:
            self.apps.patch_namespaced_deployment(self.spec.name, ns, body)
        if _missing(self.core.read_namespaced_service, self.spec.name, ns):
            self.core.create_namespaced_service(ns, service(self.spec))
        if _missing(self.policy.read_namespaced_pod_disruption_budget, self.spec.name, ns):
            self.policy.create_namespaced_pod_disruption_budget(ns, pod_disruption_budget(self.spec))
        self.log(f"rolling out version {version} to deployment/{self.spec.name} in namespace {ns}")
        self._wait_for_rollout(str(version))
        return self._endpoint(str(version_dir), str(version), None)

    def stop(self) -> Endpoint | None:
        endpoint = self.current()
        if endpoint is not None:
            self.apps.delete_namespaced_deployment(self.spec.name, self.spec.namespace)
            self.core.delete_namespaced_service(self.spec.name, self.spec.namespace)
            if not _missing(self.policy.read_namespaced_pod_disruption_budget, self.spec.name, self.spec.namespace):
                self.policy.delete_namespaced_pod_disruption_budget(self.spec.name, self.spec.namespace)
            self.log(f"deleted deployment/{self.spec.name}, its service and PDB (version {endpoint.version})")
        return endpoint

    def _wait_for_rollout(self, version: str) -> None:
        """As ``kubectl rollout status``: the new generation observed, every replica updated
        and available. On timeout the old pods keep serving (maxUnavailable is 0)."""
        deadline = time.monotonic() + self.rollout_timeout
        while time.monotonic() < deadline:
            found = self.apps.read_namespaced_deployment_status(self.spec.name, self.spec.namespace)
            status, wanted = found.status, found.spec.replicas
            if (
                (status.observed_generation or 0) >= (found.metadata.generation or 0)
                and (status.updated_replicas or 0) == wanted
                and (status.available_replicas or 0) == wanted
                and not status.unavailable_replicas
            ):
                self.log(f"version {version}: {wanted} replica(s) updated and available")
                return
            time.sleep(1)
        raise DeployError(
            f"version {version} did not roll out in {self.rollout_timeout:.0f}s; the previous pods keep serving. "
            f"See: kubectl -n {self.spec.namespace} rollout status deployment/{self.spec.name}"
        )

    def _endpoint(self, model_dir: str, version: str, started: datetime | None) -> Endpoint:
        return Endpoint(
            url=self.spec.url,
            host=f"{self.spec.name}.{self.spec.namespace}.svc.cluster.local",
            port=self.spec.port,
            pid=0,  # not a local process
            version=version,
            model_dir=model_dir,
            handoff_socket="",
            log_file=f"kubectl -n {self.spec.namespace} logs deployment/{self.spec.name}",
            started_at=(started or datetime.now(UTC)).isoformat(timespec="seconds"),
        )


def _missing(read: Callable, name: str, namespace: str) -> bool:
    """Whether ``read(name, namespace)`` finds nothing (404)."""
    try:
        read(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


SHIPPED = ServingSpec(request_log=PurePosixPath("/data/serving/requests"))


def render(spec: ServingSpec = SHIPPED, model_dir: str = "/models/mnist/1", version: str = "1") -> str:
    """The Deployment, Service and PodDisruptionBudget as YAML, for deploy/k8s/serving.yaml."""
    import yaml

    header = "# Generated by `python -m mnist_delivery.k8s_endpoint`; the deployer patches the model folder.\n"

    class Plain(yaml.SafeDumper):  # no &anchors: kubectl users read this file
        def ignore_aliases(self, data: object) -> bool:
            return True

    objects = [deployment(spec, model_dir, version), service(spec), pod_disruption_budget(spec)]
    return header + yaml.dump_all(objects, Dumper=Plain, sort_keys=False)


if __name__ == "__main__":
    print(render(), end="")
