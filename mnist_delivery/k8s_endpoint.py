"""Run the endpoint on Kubernetes as blue/green Deployments behind one public Service. A
``DeployBackend``, like ``LocalEndpoint``.

Objects, for an endpoint ``<name>`` (``mnist-serving``): Deployments ``<name>-blue`` and
``<name>-green`` (label ``mnist-mlops/track``), each with its private ClusterIP Service of the
same name and a PodDisruptionBudget over its pods; the public Service ``<name>`` selects one
color. ``candidate`` puts the version on the idle color's Deployment (created, or patched and
scaled up), waits until every replica of the new generation is available and hands out that
color's private URL. ``promote`` patches the public Service, in one request, to select the
candidate's color and to record the version (annotations): the switch is atomic and only pods
that were tested take public traffic. After a short drain the old color is scaled to 0. A
candidate left without ``promote`` (tests failed, a timeout, an exception) is scaled to 0.

Invariants: the public Service's selector says which color serves, its annotations say which
version that is (``current`` reads them: the record is in the cluster, not in a local file);
the public Service never selects a color whose rollout has not completed. One deploy or stop
at a time, across processes and pods: each holds the Lease ``<name>-deploy`` (created, or taken
over once expired, with optimistic concurrency; renewed by a thread while held; deleted on
exit). A Lease counts as expired when it has not changed for its ``leaseDurationSeconds`` as
this process observes it, as client-go's leader election does, so clocks need not agree.

Migration from the single ``<name>`` Deployment (before blue/green, its Service selected every
pod of the app): the first deploy labels its pods ``mnist-mlops/track: legacy`` (a rolling
update of the same version), points the public Service at that label, then proceeds as above;
the promote deletes the old Deployment and its PodDisruptionBudget.

``python -m mnist_delivery.k8s_endpoint`` prints the manifests shipped in deploy/k8s/serving.yaml."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import PurePath, PurePosixPath

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mnist_delivery.backend import Candidate, DeployError, Endpoint, ServerProcess
from mnist_ml.log import Log
from mnist_ml.model_contract import MODEL_NAME
from mnist_serving.options import DEFAULT_PORT, FEEDBACK_TOKEN_ENV, ServerOptions

VERSION_ANNOTATION = "mnist-mlops/model-version"
MODEL_DIR_ANNOTATION = "mnist-mlops/model-dir"
PROMOTED_ANNOTATION = "mnist-mlops/promoted-at"
TRACK_LABEL = "mnist-mlops/track"
COLORS = ("blue", "green")
LEGACY = "legacy"  # the pods of the single Deployment of before, while it is migrated
APP_LABEL = "app.kubernetes.io/name"
MERGE_PATCH = "application/merge-patch+json"  # lists replaced whole: the pod spec is exactly ours
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
    # Peak RSS 216-249 MiB (three runs) with 8 concurrent requests of 1,024 images (v2 binary and
    # JSON, uint8 and float32) for 30 s, request log on, idle 80 MiB: the shipped CNN, scored
    # 64 images per call, on two threads (296 MiB in calls of 256; 952 MiB under TensorFlow). The
    # limit is 1.54x the highest peak. Measured with `.venv/bin/python
    # benchmarks/serving_memory.py --seconds 30` (2 cores). One CPU requested: one event loop,
    # ONNX Runtime on one thread per call, two for calls of 64 images or more (batches burst onto
    # a second core when the node has one).
    memory: str = "384Mi"
    options: ServerOptions = ServerOptions()
    request_log: PurePosixPath | None = None  # the request log's folder, under data_mount
    # The feedback route's bearer token: key `token` of this Secret, as $MNIST_FEEDBACK_TOKEN.
    # Optional: without the Secret the pods start and refuse feedback (403).
    feedback_secret: str = "mnist-feedback"

    @property
    def url(self) -> str:
        """The public address (Service ``name``)."""
        return self.service_url(self.name)

    def service_url(self, service: str) -> str:
        return f"http://{service}.{self.namespace}.svc.cluster.local:{self.port}"

    def server_args(self) -> list[str]:
        """The server's options, and where it logs requests when it does."""
        log = ["--request-log-dir", str(self.request_log)] if self.options.request_log and self.request_log else []
        return [*self.options.argv(), *log]


def _labels(spec: ServingSpec, track: str | None = None) -> dict[str, str]:
    labels = {APP_LABEL: spec.name, "app.kubernetes.io/part-of": "mnist-mlops"}
    return {**labels, TRACK_LABEL: track} if track else labels


def selector(spec: ServingSpec, track: str) -> dict[str, str]:
    """The pods of one color (or of the legacy Deployment, once labelled)."""
    return {APP_LABEL: spec.name, TRACK_LABEL: track}


def track_name(spec: ServingSpec, track: str) -> str:
    """The Deployment, private Service and PodDisruptionBudget of one color."""
    return spec.name if track == LEGACY else f"{spec.name}-{track}"


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


def deployment(spec: ServingSpec, model_dir: str, version: str, track: str = COLORS[0]) -> dict:
    """One color's Deployment, serving one registry version (a path on the models volume)."""
    labels = _labels(spec, track)
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
            "name": track_name(spec, track),
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {VERSION_ANNOTATION: version},
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(spec, track)},
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
                            "labelSelector": {"matchLabels": selector(spec, track)},
                        }
                    ],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def pod_disruption_budget(spec: ServingSpec, track: str = COLORS[0]) -> dict:
    """At least one pod of this color stays up through voluntary disruptions (node drains,
    upgrades). One per color, so the serving color is always covered, whichever it is; the idle
    color, scaled to 0, has no pods to protect."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": track_name(spec, track), "namespace": spec.namespace, "labels": _labels(spec, track)},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": selector(spec, track)}},
    }


def record(spec: ServingSpec, track: str, version: str, model_dir: str, promoted_at: str | None) -> dict:
    """What a promote writes on the public Service, in one patch: the color it selects and the
    version that color serves."""
    annotations = {VERSION_ANNOTATION: version, MODEL_DIR_ANNOTATION: model_dir}
    if promoted_at:
        annotations[PROMOTED_ANNOTATION] = promoted_at
    return {"metadata": {"annotations": annotations}, "spec": {"selector": selector(spec, track)}}


def service(spec: ServingSpec, track: str | None = None) -> dict:
    """The public Service (``track`` None: it selects blue until a promote switches it), or
    one color's private Service, the candidate's address for its tests. Only the public one is
    labelled with the app's name: what selects the endpoint's Services by it (the Prometheus
    ServiceMonitor) finds one Service and scrapes each serving pod once."""
    labels = {"app.kubernetes.io/part-of": "mnist-mlops", TRACK_LABEL: track} if track else _labels(spec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": track_name(spec, track) if track else spec.name,
            "namespace": spec.namespace,
            "labels": labels,
        },
        "spec": {
            "selector": selector(spec, track or COLORS[0]),
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http"}],
        },
    }


def public_service(spec: ServingSpec, track: str, version: str, model_dir: str, promoted_at: str | None = None) -> dict:
    """The public Service selecting ``track``, with the record of what that color serves."""
    recorded = record(spec, track, version, model_dir, promoted_at)
    public = service(spec)
    public["metadata"]["annotations"] = recorded["metadata"]["annotations"]
    public["spec"]["selector"] = recorded["spec"]["selector"]
    return public


def _micro_now() -> str:
    """Now, as a Kubernetes MicroTime."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DeployLease:
    """The ``coordination.k8s.io/v1`` Lease that lets one deploy or stop of the endpoint run at
    a time, across processes and pods. ``with lease:`` waits for it (at most ``timeout``
    seconds, then a ``DeployError`` naming the Lease and its holder), holds it while a thread
    renews it every third of ``duration_s``, and deletes it on exit (only if still ours: the
    delete carries its resourceVersion as a precondition). One instance per acquisition.

    A Lease is free when it does not exist, has no holder, or has not changed for its
    ``leaseDurationSeconds`` as observed here (a dead holder's). Taking it is a create, or a
    replace carrying the resourceVersion read: of two deployers racing for it, the API server
    lets one write win and answers the other 409 Conflict, which goes back to waiting."""

    def __init__(
        self,
        coordination: client.CoordinationV1Api,
        namespace: str,
        name: str,
        *,
        duration_s: int = 30,
        timeout: float = 600.0,
        poll_s: float = 0.5,
        log: Log = print,
    ) -> None:
        self.coordination, self.namespace, self.name = coordination, namespace, name
        self.duration_s, self.timeout, self.poll_s, self.log = duration_s, timeout, poll_s, log
        self.identity = f"{socket.gethostname()}/pid-{os.getpid()}/{uuid.uuid4().hex[:8]}"  # hostname: the pod
        self._version = ""  # the Lease's resourceVersion as last written by us
        self._acquired_at = ""
        self._lost = ""
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"renew-{name}", daemon=True)

    def __enter__(self) -> DeployLease:
        self._acquire()
        self._renewer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._renewer.join()
        if self._lost:
            return
        try:
            self.coordination.delete_namespaced_lease(
                self.name,
                self.namespace,
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version=self._version)),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or no longer ours: nothing to release
                raise
            self.log(f"lease/{self.name} was no longer ours to release ({exc.status} {exc.reason})")

    @property
    def held(self) -> bool:
        """False once the Lease was lost (not renewed in time, then taken over)."""
        return not self._lost

    def check(self) -> None:
        """Raise ``DeployError`` if the Lease was lost."""
        if self._lost:
            raise DeployError(self._lost)

    def _acquire(self) -> None:
        deadline, announced = time.monotonic() + self.timeout, False
        seen, seen_at = "", 0.0  # the holder's resourceVersion and when it was first seen unchanged
        while True:
            found = _read(self.coordination.read_namespaced_lease, self.name, self.namespace)
            if found is None:
                if self._claim(""):
                    return
                continue
            now = time.monotonic()
            if found.metadata.resource_version != seen:
                seen, seen_at = found.metadata.resource_version, now
            holder = found.spec.holder_identity or ""
            duration = found.spec.lease_duration_seconds or self.duration_s
            if not holder or now - seen_at >= duration:
                if holder:
                    self.log(f"lease/{self.name}: {holder} has not renewed it for {duration}s; taking it over")
                if self._claim(seen):
                    return
                continue
            if now >= deadline:
                raise DeployError(
                    f"another deploy or stop of the endpoint holds lease/{self.name} in namespace "
                    f"{self.namespace}: holder {holder}, acquired {found.spec.acquire_time}, renewed "
                    f"{found.spec.renew_time}; waited {self.timeout:.0f}s. Let it finish; if its holder is gone, "
                    f"the Lease is taken over {duration}s after its last renewal."
                )
            if not announced:
                self.log(f"waiting for lease/{self.name} in namespace {self.namespace}, held by {holder}")
                announced = True
            time.sleep(min(self.poll_s, deadline - now))

    def _body(self, renewed: str, version: str) -> dict:
        metadata = {"name": self.name, "namespace": self.namespace, **({"resourceVersion": version} if version else {})}
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_s,
            "acquireTime": self._acquired_at,
            "renewTime": renewed,
        }
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _claim(self, version: str) -> bool:
        """Create the Lease (``version`` empty) or replace the one at ``version``; False if
        another deployer wrote first (409)."""
        self._acquired_at = _micro_now()
        body = self._body(self._acquired_at, version)
        try:
            if version:
                made = self.coordination.replace_namespaced_lease(self.name, self.namespace, body)
            else:
                made = self.coordination.create_namespaced_lease(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._version = made.metadata.resource_version
        self.log(f"holding lease/{self.name} as {self.identity}")
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.duration_s / 3):
            try:
                body = self._body(_micro_now(), self._version)
                self._version = self.coordination.replace_namespaced_lease(
                    self.name, self.namespace, body
                ).metadata.resource_version
            except ApiException as exc:
                if exc.status in (404, 409):
                    self._lost = (
                        f"lost lease/{self.name} in namespace {self.namespace} ({exc.status} {exc.reason}): it was "
                        f"not renewed within {self.duration_s}s and another deployer may hold it now"
                    )
                    self.log(self._lost)
                    return
                self.log(f"could not renew lease/{self.name} ({exc.status} {exc.reason}); retrying")
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self.log(f"could not renew lease/{self.name} ({exc!r}); retrying")


@dataclass(frozen=True)
class _Slot:
    """A candidate's place: its color, the one serving beside it, and the Lease held."""

    track: str
    previous: str | None
    lease: DeployLease


class KubernetesEndpoint:
    """The endpoint as blue/green Deployments behind one public Service, through the API."""

    def __init__(
        self,
        api: client.ApiClient,
        spec: ServingSpec,
        *,
        rollout_timeout: float = 600.0,
        lock_timeout: float = 600.0,
        lease_duration_s: int = 30,
        drain_s: float = 5.0,
        log: Log = print,
    ) -> None:
        self.apps, self.core, self.policy = client.AppsV1Api(api), client.CoreV1Api(api), client.PolicyV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.spec, self.rollout_timeout, self.lock_timeout = spec, rollout_timeout, lock_timeout
        self.lease_duration_s, self.drain_s, self.log = lease_duration_s, drain_s, log

    @property
    def lease_name(self) -> str:
        return f"{self.spec.name}-deploy"

    def current(self) -> Endpoint | None:
        """What the public Service records (before a migration: the single old Deployment)."""
        public = _read(self.core.read_namespaced_service, self.spec.name, self.spec.namespace)
        if public is None:
            return None
        notes = public.metadata.annotations or {}
        track = (public.spec.selector or {}).get(TRACK_LABEL)
        if track and VERSION_ANNOTATION in notes:
            started = notes.get(PROMOTED_ANNOTATION) or public.metadata.creation_timestamp
            return self._endpoint(track, notes.get(MODEL_DIR_ANNOTATION, ""), notes[VERSION_ANNOTATION], started)
        legacy = _read(self.apps.read_namespaced_deployment, self.spec.name, self.spec.namespace)
        if legacy is None:
            return None
        model_dir, version = _served(legacy)
        return self._endpoint(LEGACY, model_dir, version, legacy.metadata.creation_timestamp)

    @contextmanager
    def candidate(self, version_dir: PurePath | str, version: str) -> Iterator[Candidate]:
        """Roll ``version_dir`` out on the idle color, beside what serves; yield it with its
        private URL. Left without ``promote``, it is scaled to 0. Holds the Lease throughout."""
        model_dir, version = str(version_dir), str(version)
        with self._lease() as lease:
            serving = self._serving_track()
            track = COLORS[1] if serving == COLORS[0] else COLORS[0]
            name, ns = track_name(self.spec, track), self.spec.namespace
            self._ensure(
                self.core.read_namespaced_service, self.core.create_namespaced_service, service(self.spec, track)
            )
            budget = pod_disruption_budget(self.spec, track)
            self._ensure(
                self.policy.read_namespaced_pod_disruption_budget,
                self.policy.create_namespaced_pod_disruption_budget,
                budget,
            )
            self._apply(deployment(self.spec, model_dir, version, track))
            self.log(
                f"candidate version {version}: rolling out deployment/{name} in namespace {ns}, "
                f"beside {serving or 'nothing'}"
            )
            found = Candidate(
                version=version,
                url=self.spec.service_url(name),
                endpoint=self._endpoint(track, model_dir, version, None),
                handle=_Slot(track, serving, lease),
            )
            try:
                if not self._rolled_out(name):
                    raise DeployError(
                        f"version {version} did not roll out in {self.rollout_timeout:.0f}s on deployment/{name}; "
                        f"it is scaled to 0 and the public Service still selects {serving or 'nothing'}. "
                        f"See: kubectl -n {ns} describe deployment/{name}"
                    )
                self.log(f"candidate version {version} ready at {found.url}")
                yield found
            finally:
                if found.promoted_at is None and lease.held:
                    self._scale(track, 0)
                    self.log(f"candidate version {version} discarded: deployment/{name} scaled to 0")
                elif found.promoted_at is None:  # the color may be another deployer's candidate now
                    self.log(f"candidate version {version} abandoned: the lease was lost, deployment/{name} left as is")

    def promote(self, candidate: Candidate) -> Endpoint:
        """Switch the public Service to the candidate's color and record its version (one
        patch), then, after ``drain_s``, scale the previous color to 0."""
        slot = candidate.handle
        if not isinstance(slot, _Slot) or candidate.promoted_at is not None:
            raise DeployError("promote takes the candidate of an open candidate() block, once")
        slot.lease.check()
        promoted_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._switch(slot.track, candidate.version, candidate.endpoint.model_dir, promoted_at)
        candidate.promoted_at = promoted_at
        self.log(f"version {candidate.version} promoted: service/{self.spec.name} selects {slot.track}")
        if slot.previous:
            time.sleep(self.drain_s)  # the old pods finish the requests they hold
            self._retire(slot.previous)
        return replace(candidate.endpoint, started_at=promoted_at)

    def deploy(self, version_dir: PurePath | str, version: str) -> Endpoint:
        with self.candidate(version_dir, version) as found:
            return self.promote(found)

    def serving(self) -> list[ServerProcess]:
        """Every pod of the endpoint (both colors, and the old single Deployment's), with the
        version it serves and its role: serving (the color the public Service selects),
        draining (terminating, or of a color scaled to 0), candidate (the other color, scaled
        up) or unrecorded (the old Deployment's, once not selected)."""
        ns = self.spec.namespace
        public = _read(self.core.read_namespaced_service, self.spec.name, ns)
        selected = (public.spec.selector or {}).get(TRACK_LABEL) if public is not None else "-"
        scaled = {}
        for color in COLORS:
            found = _read(self.apps.read_namespaced_deployment, track_name(self.spec, color), ns)
            scaled[color] = found is not None and bool(found.spec.replicas)
        pods = self.core.list_namespaced_pod(ns, label_selector=f"{APP_LABEL}={self.spec.name}").items
        listed = []
        for pod in pods:
            if pod.status is not None and pod.status.phase in ("Succeeded", "Failed"):
                continue
            track = (pod.metadata.labels or {}).get(TRACK_LABEL)
            if pod.metadata.deletion_timestamp is not None:
                role = "draining"
            elif track == selected:
                role = "serving"
            elif track in COLORS:
                role = "candidate" if scaled[track] else "draining"
            else:
                role = "unrecorded"
            version = (pod.metadata.annotations or {}).get(VERSION_ANNOTATION, "")
            listed.append(ServerProcess(pod.metadata.name, version, role))
        return listed

    def stop(self) -> Endpoint | None:
        """Delete every object of the endpoint (both colors, the old single Deployment's)."""
        ns = self.spec.namespace
        with self._lease():
            endpoint = self.current()
            for track in (*COLORS, LEGACY):
                name = track_name(self.spec, track)
                _delete(self.apps.delete_namespaced_deployment, name, ns)
                _delete(self.policy.delete_namespaced_pod_disruption_budget, name, ns)
                if track in COLORS:
                    _delete(self.core.delete_namespaced_service, name, ns)
            _delete(self.core.delete_namespaced_service, self.spec.name, ns)
            if endpoint is not None:
                self.log(f"deleted the deployments, services and PDBs of {self.spec.name} (version {endpoint.version})")
        return endpoint

    def _lease(self) -> DeployLease:
        return DeployLease(
            self.coordination,
            self.spec.namespace,
            self.lease_name,
            duration_s=self.lease_duration_s,
            timeout=self.lock_timeout,
            log=self.log,
        )

    def _serving_track(self) -> str | None:
        """The color the public Service selects; migrates the single old Deployment first."""
        ns = self.spec.namespace
        public = _read(self.core.read_namespaced_service, self.spec.name, ns)
        track = (public.spec.selector or {}).get(TRACK_LABEL) if public is not None else None
        legacy = _read(self.apps.read_namespaced_deployment, self.spec.name, ns) if track is None else None
        if legacy is None:
            return track
        model_dir, version = _served(legacy)
        self.log(
            f"migrating deployment/{self.spec.name} (version {version}) to blue/green: labelling its pods {LEGACY}"
        )
        self.apps.patch_namespaced_deployment(
            self.spec.name, ns, {"spec": {"template": {"metadata": {"labels": {TRACK_LABEL: LEGACY}}}}}
        )
        if not self._rolled_out(self.spec.name):
            raise DeployError(
                f"deployment/{self.spec.name} did not roll out with its {TRACK_LABEL} label in "
                f"{self.rollout_timeout:.0f}s; nothing else changed. See: kubectl -n {ns} rollout status "
                f"deployment/{self.spec.name}"
            )
        self._switch(LEGACY, version, model_dir, None)
        return LEGACY

    def _switch(self, track: str, version: str, model_dir: str, promoted_at: str | None) -> None:
        """Point the public Service at ``track`` and record ``version``: one patch (or create)."""
        ns = self.spec.namespace
        try:
            self.core.patch_namespaced_service(
                self.spec.name, ns, record(self.spec, track, version, model_dir, promoted_at)
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_namespaced_service(ns, public_service(self.spec, track, version, model_dir, promoted_at))

    def _retire(self, track: str) -> None:
        """Take the previous color's pods away (the old single Deployment is deleted)."""
        name, ns = track_name(self.spec, track), self.spec.namespace
        if track == LEGACY:
            _delete(self.apps.delete_namespaced_deployment, name, ns)
            _delete(self.policy.delete_namespaced_pod_disruption_budget, name, ns)
            self.log(f"deleted deployment/{name} and its PDB: migrated to blue/green")
        else:
            self._scale(track, 0)
            self.log(f"deployment/{name} scaled to 0")

    def _ensure(self, read: Callable, create: Callable, body: dict) -> None:
        ns = self.spec.namespace
        if _read(read, body["metadata"]["name"], ns) is None:
            create(ns, body)

    def _apply(self, body: dict) -> None:
        """Create the Deployment, or make it exactly ``body`` (lists replaced, not merged)."""
        name, ns = body["metadata"]["name"], self.spec.namespace
        if _read(self.apps.read_namespaced_deployment, name, ns) is None:
            self.apps.create_namespaced_deployment(ns, body)
        else:
            self.apps.patch_namespaced_deployment(name, ns, body, _content_type=MERGE_PATCH)

    def _scale(self, track: str, replicas: int) -> None:
        try:
            self.apps.patch_namespaced_deployment(
                track_name(self.spec, track), self.spec.namespace, {"spec": {"replicas": replicas}}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _rolled_out(self, name: str) -> bool:
        """As ``kubectl rollout status``: the new generation observed, every replica updated
        and available, within ``rollout_timeout``."""
        deadline = time.monotonic() + self.rollout_timeout
        while True:
            found = self.apps.read_namespaced_deployment_status(name, self.spec.namespace)
            status, wanted = found.status, found.spec.replicas
            if (
                (status.observed_generation or 0) >= (found.metadata.generation or 0)
                and (status.updated_replicas or 0) == wanted
                and (status.available_replicas or 0) == wanted
                and not status.unavailable_replicas
            ):
                self.log(f"deployment/{name}: {wanted} replica(s) updated and available")
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    def _endpoint(self, track: str, model_dir: str, version: str, started: datetime | str | None) -> Endpoint:
        when = started or datetime.now(UTC)
        return Endpoint(
            url=self.spec.url,
            host=f"{self.spec.name}.{self.spec.namespace}.svc.cluster.local",
            port=self.spec.port,
            pid=0,  # not a local process
            version=version,
            model_dir=model_dir,
            handoff_socket="",
            log_file=f"kubectl -n {self.spec.namespace} logs deployment/{track_name(self.spec, track)}",
            started_at=when if isinstance(when, str) else when.isoformat(timespec="seconds"),
        )


def _served(found: client.V1Deployment) -> tuple[str, str]:
    """(model folder, version) of a serving Deployment, from its command and annotation."""
    command = found.spec.template.spec.containers[0].command
    model_dir = command[command.index("--model-dir") + 1]
    return model_dir, (found.metadata.annotations or {}).get(VERSION_ANNOTATION, PurePosixPath(model_dir).name)


def _read(read: Callable, name: str, namespace: str) -> object | None:
    """``read(name, namespace)``, or None if there is no such object (404)."""
    try:
        return read(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _delete(delete: Callable, name: str, namespace: str) -> None:
    """``delete(name, namespace)``; nothing if it is already gone."""
    try:
        delete(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise


SHIPPED = ServingSpec(request_log=PurePosixPath("/data/serving/requests"))


def render(spec: ServingSpec = SHIPPED, model_dir: str = "/models/mnist/1", version: str = "1") -> str:
    """The serving objects as YAML, for deploy/k8s/serving.yaml: blue serving ``version``, the
    public Service selecting and recording it, both colors' private Services and budgets."""
    import yaml

    header = (
        "# Generated by `python -m mnist_delivery.k8s_endpoint`. Blue serves version 1; the deployer\n"
        "# rolls each new version out on the idle color (mnist-serving-green, created then) and switches\n"
        "# the public Service's selector to it once tested.\n"
    )

    class Plain(yaml.SafeDumper):  # no &anchors: kubectl users read this file
        def ignore_aliases(self, data: object) -> bool:
            return True

    blue = COLORS[0]
    objects = [
        deployment(spec, model_dir, version, blue),
        public_service(spec, blue, version, model_dir),
        *(service(spec, track) for track in COLORS),
        *(pod_disruption_budget(spec, track) for track in COLORS),
    ]
    return header + yaml.dump_all(objects, Dumper=Plain, sort_keys=False)


if __name__ == "__main__":
    print(render(), end="")
