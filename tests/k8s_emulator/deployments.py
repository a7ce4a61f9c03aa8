"""A controller that rolls Deployments out: their status, and pods from their template."""

from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
from collections.abc import Callable

import kubernetes
from kubernetes.client.exceptions import ApiException

from .controllers import Controller
from .objects import Obj, now_rfc3339
from .running import RunningEmulator


class SimulatedDeploymentController(Controller):
    """Marks Deployments in ``namespace`` rolled out ``delay_s`` after each create or change:
    status.observedGeneration = metadata.generation, replicas / updatedReplicas /
    readyReplicas / availableReplicas = spec.replicas (default 1), conditions Available and
    Progressing True. ``hold_unavailable(name)`` keeps one rolling out but never available
    (Available False, no ready replicas) until ``release(name)``, to test rollout timeouts.

    Pods: ``spec.replicas`` pods from the template (its labels and annotations, plus
    ``pod-template-hash``), owned by the Deployment itself; pods of an older template, or beyond
    the replica count, are deleted at once. They stay Pending (nothing runs them) and get no
    graceful termination. No ReplicaSets; never reports ProgressDeadlineExceeded."""

    def __init__(self, cluster: RunningEmulator, namespace: str, delay_s: float = 0.2) -> None:
        super().__init__(cluster, namespace)
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.delay_s = delay_s
        self.rollouts: list[tuple[str, int]] = []  # (name, generation) marked available
        self._held: set[str] = set()
        self._queue: collections.deque[tuple[float, str]] = collections.deque()
        self._wake = threading.Condition()

    def start(self) -> None:
        super().start()
        self._spawn(self._work, "rollouts")

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        super().stop()

    def hold_unavailable(self, name: str) -> None:
        self._held.add(name)
        self._enqueue(name, 0)

    def release(self, name: str) -> None:
        self._held.discard(name)
        self._enqueue(name, 0)

    def _list_call(self) -> tuple[Callable, tuple]:
        return self.apps.list_namespaced_deployment, (self.namespace,)

    def _on_event(self, kind: str, deployment: Obj) -> None:
        if kind == "DELETED" or self._desired(deployment) != _rollout_view(deployment.get("status")):
            self._enqueue(deployment["metadata"]["name"], self.delay_s)

    def _enqueue(self, name: str, delay: float) -> None:
        with self._wake:
            self._queue.append((time.monotonic() + delay, name))
            self._wake.notify_all()

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                while not self._queue and not self._stop.is_set():
                    self._wake.wait(0.5)
                if self._stop.is_set():
                    return
                due, name = self._queue.popleft()
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self._reconcile(name)

    def _desired(self, deployment: Obj) -> Obj:
        replicas = (deployment.get("spec") or {}).get("replicas", 1)
        held = deployment["metadata"]["name"] in self._held
        available = 0 if held else replicas
        desired = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": available,
            "availableReplicas": available,
            "unavailableReplicas": replicas - available,
            "conditions": [
                ("Available", "False" if held and replicas else "True", _AVAILABLE_REASON[held and bool(replicas)]),
                ("Progressing", "True", "ReplicaSetUpdated" if held else "NewReplicaSetAvailable"),
            ],
        }
        return {k: v for k, v in desired.items() if v}  # the API omits zero counts

    def _reconcile(self, name: str) -> None:
        marked: list[int] = []

        def mutate(deployment: Obj) -> bool:
            status, desired = deployment["status"], self._desired(deployment)
            if _rollout_view(status) == desired:
                return False  # already as it should be (the change was queued twice)
            now = now_rfc3339()
            old = {c.get("type"): c for c in status.get("conditions", [])}
            conditions = []
            for kind, value, reason in desired.pop("conditions"):
                same = old.get(kind, {}).get("status") == value
                since = old[kind].get("lastTransitionTime", now) if same else now
                condition = {"type": kind, "status": value, "reason": reason, "message": _MESSAGES[reason]}
                conditions.append({**condition, "lastUpdateTime": now, "lastTransitionTime": since})
            status.clear()
            status.update(desired, conditions=conditions)
            marked[:] = [] if name in self._held else [desired["observedGeneration"]]
            return True

        read, replace = self.apps.read_namespaced_deployment_status, self.apps.replace_namespaced_deployment_status
        if self._update_status(read, replace, name, mutate) and marked:
            self.rollouts.append((name, marked[0]))
        self._sync_pods(name)

    def _sync_pods(self, name: str) -> None:
        try:
            found = self.apps.read_namespaced_deployment(name, self.namespace, _preload_content=False)
            deployment = json.loads(found.data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            deployment = None
        pods = json.loads(self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)["items"]
        owned = [p for p in pods if _owner(p) == ("Deployment", name)]
        template = deployment["spec"]["template"] if deployment else {}
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        wanted = deployment["spec"].get("replicas", 1) if deployment else 0
        current = [p for p in owned if p["metadata"].get("labels", {}).get("pod-template-hash") == template_hash]
        for pod in [p for p in owned if p not in current[:wanted]]:
            try:
                self.core.delete_namespaced_pod(pod["metadata"]["name"], self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for _ in range(wanted - len(current)):
            self.core.create_namespaced_pod(self.namespace, _pod(deployment, template_hash))


_AVAILABLE_REASON = {False: "MinimumReplicasAvailable", True: "MinimumReplicasUnavailable"}
_MESSAGES = {
    "MinimumReplicasAvailable": "Deployment has minimum availability.",
    "MinimumReplicasUnavailable": "Deployment does not have minimum availability.",
    "NewReplicaSetAvailable": "ReplicaSet has successfully progressed.",
    "ReplicaSetUpdated": "ReplicaSet is progressing.",
}


def _owner(pod: Obj) -> tuple[str, str] | None:
    owners = pod["metadata"].get("ownerReferences") or []
    return (owners[0].get("kind"), owners[0].get("name")) if owners else None


def _pod(deployment: Obj, template_hash: str) -> Obj:
    """A pod of ``deployment``'s template, as its ReplicaSet would create it."""
    meta, template = deployment["metadata"], deployment["spec"]["template"]
    template_meta = template.get("metadata") or {}
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"], "uid": meta["uid"]}
    return {
        "metadata": {
            "generateName": f"{meta['name']}-{template_hash}-",
            "labels": {**template_meta.get("labels", {}), "pod-template-hash": template_hash},
            "annotations": dict(template_meta.get("annotations") or {}),
            "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": template["spec"],
    }


def _rollout_view(status: Obj | None) -> Obj:
    """The part of a Deployment status the controller sets, comparable with ``_desired``."""
    status = status or {}
    view = {k: v for k, v in status.items() if k != "conditions" and v}
    conditions = [(c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions", [])]
    return {**view, "conditions": conditions} if conditions else view
