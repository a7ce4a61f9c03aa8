"""Kubernetes stand-ins for tests: kmock's in-memory API server over real HTTP on 127.0.0.1, a
node that runs Jobs as local processes, and a controller that marks Deployments rolled out.

Code under test talks to them exactly as it would to a cluster: the official ``kubernetes``
client over HTTP, from any thread, configured by ``api_client()`` or a kubeconfig file.

What these stand-ins do NOT do, so a test that passes against them proves nothing about it:

- No scheduling: no nodes, capacity, requests/limits, affinities, taints, quotas or
  priorities. Every Job's pod starts at once on the one simulated node.
- No admission, validation or RBAC: any well-formed JSON object is stored as sent (check
  manifests separately, e.g. with ``kubernetes-validate``); there is no authentication.
  The only admission-like check: a pod's named service account must exist (see the node).
- No defaulting beyond metadata (name from generateName, namespace, uid, resourceVersion,
  generation, creationTimestamp), apiVersion/kind, an empty or initial status and Secret
  ``stringData``: no spec defaults (Job backoffLimit/completions, pod restartPolicy, the Job
  selector and its controller-uid template labels, Deployment strategy, ...).
- No image pulls: the image is a label. The container's ``command`` + ``args`` run on this
  machine with its Python, files and network, from a given working directory, with a given
  base environment standing in for the image's ``ENV``.
- No volumes: ``volumes`` / ``volumeMounts`` are ignored (recorded as not honoured), so
  config maps are not files and nothing persists except through the shared local disk.
- No probes, lifecycle hooks, init or sidecar containers, security contexts, in-place
  restarts, resource limits or cgroups; ``restartPolicy: OnFailure`` retries as a new pod.
- No real controllers: only the two simulated here. No ReplicaSets or pods for Deployments,
  no Service endpoints, no garbage collection through ownerReferences, no TTL after
  finished, no namespace termination, no Events, no Job backoff delay between retries.
- API surface: create/get/list/watch/replace/patch/delete and the ``status`` subresource
  (plus pod ``log``) of the built-in resources kmock bundles (core v1, apps/v1, batch/v1,
  ...). No server-side apply, dryRun, pagination, field managers, deletecollection, watch
  bookmarks, delete options (propagationPolicy, grace periods, preconditions), or other
  subresources (scale, exec, attach, eviction, ...: they answer 404).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import datetime
import json
import os
import random
import re
import signal
import string
import subprocess
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp.web
import attrs
import kmock
import kubernetes
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")
Obj = dict[str, Any]

# What /version reports, and the API behaviour (e.g. Job conditions) the stand-ins follow.
SERVER_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0+kmock",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2024-04-17T00:00:00Z",
    "goVersion": "go1.22.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NAMESPACES = kmock.resource("", "v1", "namespaces")
PODS = kmock.resource("", "v1", "pods")
# Status a real API server gives new objects of these resources (others start with {}).
INITIAL_STATUS: dict[str, Obj] = {"pods": {"phase": "Pending"}, "namespaces": {"phase": "Active"}}
WATCH_HISTORY = 10_000  # events kept per resource for watches that resume from a resourceVersion

# Gap: kmock's URL parser reads ``/api/v1/namespaces/<x>`` as the namespace prefix of a
# namespaced URL, so it crashes on ``/api/v1/namespaces`` and misreads ``/api/v1/namespaces/x``.
# Workaround: such paths are re-routed to an alias plural that parses, mapped back in _handle.
_CLUSTER_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(/[^/]+(/(status|finalize))?)?/?")
_NAMESPACE_ALIAS = "namespaces-cluster-scoped"
_CLOSED = {"type": "CLOSED"}  # put on every watch bus at shutdown: open watches end cleanly
_TRUE = {"1", "t", "T", "true", "True", "TRUE"}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    """A ``Status`` error body the way the API server words it (clients read ``code``)."""
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


# ----------------------------------------------------------------------------------------
# Patches and selectors (kmock applies every dict patch as a naive recursive merge)
# ----------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``application/merge-patch+json``): null deletes a key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# patchMergeKey of the list fields of built-in types we meet (x-kubernetes-patch-merge-key).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
}
_MERGED_PRIMITIVE_LISTS = {"finalizers"}  # patchStrategy: merge on a list of strings


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge patch (the official Python client's default for dict
    bodies): like a merge patch, but lists with a merge key (containers, env, conditions, ...)
    merge item by item, and ``$patch: replace | delete`` directives are honoured. Other
    directives ($setElementOrder, $retainKeys, $deleteFromPrimitiveList) are ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in _MERGED_PRIMITIVE_LISTS:
            result[key] = list(dict.fromkeys([*(result.get(key) or []), *value]))
        elif isinstance(value, list) and (merge_key := _merge_key(key, value)):
            result[key] = _merge_list(result.get(key) or [], value, merge_key)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_key(field_name: str, items: list) -> str | None:
    if field_name == "ports":  # container ports merge on containerPort, service ports on port
        return "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in items) else "port"
    return _MERGE_KEYS.get(field_name)


def _merge_list(current: list, items: list, key: str) -> list:
    merged = copy.deepcopy(current)
    for item in items:
        if not isinstance(item, dict) or key not in item:
            merged.append(copy.deepcopy(item))
            continue
        index = next((i for i, old in enumerate(merged) if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(strategic_merge_patch({}, item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def apply_patch(obj: Obj, patch: Any, content_type: str) -> Obj:
    """Apply a PATCH body by its Content-Type, with the API server's error codes."""
    if content_type == "application/json-patch+json":
        if not isinstance(patch, list):
            raise api_error(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            import jsonpatch  # a kmock dependency

            return jsonpatch.apply_patch(obj, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise api_error(422, "Invalid", f"the JSON patch could not be applied: {exc}") from exc
    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        if not isinstance(patch, dict):
            raise api_error(400, "BadRequest", "a merge patch must be a JSON object")
        apply = strategic_merge_patch if content_type.startswith("application/strategic") else merge_patch
        return apply(obj, patch)
    raise api_error(415, "UnsupportedMediaType", f"the emulator does not support patches of type {content_type!r}")


_REQUIREMENT = re.compile(
    r"\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*"
)


@dataclass(frozen=True)
class Selectors:
    """``labelSelector`` and ``fieldSelector`` of a list or watch request (kmock ignores both).
    Labels: ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``.
    Fields: ``path=v``, ``path==v``, ``path!=v`` on any dotted path (a missing field is "")."""

    labels: tuple[tuple[str, str, frozenset[str]], ...] = ()
    fields: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Selectors:
        return cls(_parse_labels(params.get("labelSelector", "")), _parse_fields(params.get("fieldSelector", "")))

    def match(self, obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(_label_ok(labels, *r) for r in self.labels) and all(_field_ok(obj, *f) for f in self.fields)


def _split_selector(text: str) -> list[str]:
    return [part for part in re.split(r",(?![^(]*\))", text) if part.strip()]


def _parse_labels(text: str) -> tuple[tuple[str, str, frozenset[str]], ...]:
    requirements = []
    for part in _split_selector(text):
        m = _REQUIREMENT.fullmatch(part)
        if m is None or (m["neg"] and (m["op"] or m["setop"])):
            raise api_error(400, "BadRequest", f"unable to parse requirement: {part!r}")
        if m["setop"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            requirements.append((m["key"], m["setop"], values))
        elif m["op"]:
            requirements.append((m["key"], "!=" if m["op"] == "!=" else "=", frozenset([m["value"]])))
        else:
            requirements.append((m["key"], "!exists" if m["neg"] else "exists", frozenset()))
    return tuple(requirements)


def _label_ok(labels: Mapping[str, str], key: str, op: str, values: frozenset[str]) -> bool:
    present, value = key in labels, labels.get(key)
    return {
        "exists": present,
        "!exists": not present,
        "=": present and value in values,
        "in": present and value in values,
        "!=": not present or value not in values,
        "notin": not present or value not in values,
    }[op]


def _parse_fields(text: str) -> tuple[tuple[str, str, str], ...]:
    fields = []
    for part in _split_selector(text):
        m = re.fullmatch(r"\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*", part)
        if m is None:
            raise api_error(400, "BadRequest", f"invalid field selector: {part!r}")
        fields.append((m[1], "!=" if m[2] == "!=" else "=", m[3]))
    return tuple(fields)


def _field_ok(obj: Obj, path: str, op: str, expected: str) -> bool:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    actual = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return (actual == expected) == (op == "=")


# ----------------------------------------------------------------------------------------
# The API server
# ----------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class KubernetesApiEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the gaps that matter to real clients worked around. Each
    workaround is marked "Gap:" where it is made. Writes happen in ``_write`` (replacing
    kmock's merge-only bookkeeping); kmock still stores the objects and their history
    (``.objects``), records ``.requests``, serves discovery and answers errors as ``Status``,
    and user reactions (``emulator['post /api/v1/...'] << 500``) still take priority for the
    response (as in kmock, the write is applied even when a reaction answers instead)."""

    # (namespace, pod) -> the pod's log so far; filled by SimulatedNode.
    pod_logs: dict[tuple[str, str], Callable[[], str]] = attrs.field(factory=dict)
    _revision: int = attrs.field(default=0, init=False)
    _results: weakref.WeakKeyDictionary = attrs.field(factory=weakref.WeakKeyDictionary, init=False)
    _history: dict[Any, collections.deque] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=WATCH_HISTORY)), init=False
    )
    _floor: dict[Any, int] = attrs.field(factory=lambda: collections.defaultdict(int), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Gap: kmock only knows resources that already hold objects, so listing or watching an
        # empty resource answers 404. Workaround: load kmock's bundled built-in resource list.
        self.resources.load_bundled()
        # Gap: PUT (replace, and replace of /status) has no kmock action and answers 404.
        self.fallback[kmock.method.PUT] << self._serve_replace
        # Gap: the official client asks for /version/ and /apis/ with a trailing slash.
        self.fallback["get /version/"] << self._serve_server_version
        self.fallback["get /api/"] << self._serve_api
        self.fallback["get /apis/"] << self._serve_apis
        for name in DEFAULT_NAMESPACES:  # a real cluster starts with these
            self.objects[NAMESPACES, None, name] = self._new_object(NAMESPACES, None, {"metadata": {"name": name}})

    # -- plumbing ------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if _CLUSTER_NAMESPACE_PATH.fullmatch(raw_request.path):
            path = raw_request.path.replace("/namespaces", f"/{_NAMESPACE_ALIAS}", 1)
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_path(path).with_query(raw_request.query))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        request = self._canonical(request)
        if request.resource is not None and request.resource.plural and request.method.value in _VERBS:
            self._results[request] = await self._write(request)
        # Skip KubernetesEmulator._handle: it would apply the write again, as a naive merge.
        return await kmock.RawHandler._handle(self, request)

    def _canonical(self, request: kmock.Request) -> kmock.Request:
        changes: dict[str, Any] = {}
        if request.resource is not None and request.resource.plural == _NAMESPACE_ALIAS:
            changes["resource"] = NAMESPACES
        # Gap: kmock takes only ?watch=true as a watch (else it answers a list); the official
        # client sends watch=True, which the API server (Go's ParseBool) accepts.
        if request.method.value == "GET" and request.params.get("watch") in _TRUE and request.name is None:
            changes["action"] = kmock.action.WATCH
        if not changes:
            return request
        fixed = attrs.evolve(request, **changes)
        for index in range(len(self._requests) - 1, -1, -1):  # kmock matches reactions by identity
            if self._requests[index] is request:
                self._requests[index] = fixed
                break
        return fixed

    def _info(self, request: kmock.Request, verb: str) -> kmock.ResourceInfo:
        if request.resource not in self.resources:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        info = self.resources[request.resource]
        if not info.namespaced and request.namespace is not None:
            raise api_error(404, "NotFound", f"{request.resource.plural} are not namespaced")
        if verb not in info.verbs:
            raise api_error(405, "MethodNotAllowed", f"{verb} is not supported on {request.resource.plural}")
        sub = request.subresource
        if sub and not (
            (sub == "status" and "status" in info.subresources and verb in ("get", "update", "patch"))
            or (sub == "log" and request.resource == PODS and verb == "get")
        ):
            raise api_error(404, "NotFound", f"subresource {sub!r} is not emulated for this request")
        return info

    def _alive(self, resource: Any, namespace: str | None, name: str) -> kmock.Object | None:
        key = (resource, namespace, name)
        return self.objects[key] if key in self.objects and not self.objects[key].deleted else None

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _new_object(self, resource: Any, namespace: str | None, body: Obj) -> Obj:
        # Gap: kmock stores objects without server-set metadata; without metadata.namespace its
        # own watch filter drops every event. Workaround: default them as the API server does.
        info = self.resources[resource]
        obj = copy.deepcopy(body)
        obj["apiVersion"] = f"{resource.group}/{resource.version}" if resource.group else resource.version
        obj["kind"] = info.kind
        meta = obj.setdefault("metadata", {})
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_revision(), creationTimestamp=now_rfc3339())
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        if namespace is not None:
            meta["namespace"] = namespace
        if "status" in info.subresources:
            obj["status"] = copy.deepcopy(INITIAL_STATUS.get(resource.plural, {}))
        return _normalise(obj)

    # -- writes --------------------------------------------------------------------------

    async def _write(self, request: kmock.Request) -> Any:
        verb = _VERBS[request.method.value]
        info = self._info(request, verb)
        if "dryRun" in request.params:
            raise api_error(400, "BadRequest", "dryRun is not supported by the emulator")
        if request.name is None and verb != "create":
            raise api_error(405, "MethodNotAllowed", f"{verb} on a collection is not supported by the emulator")
        async with self._lock:
            if verb == "create":
                result, events = self._create(request, info)
            elif verb == "delete":
                result, events = self._delete(request)
            else:
                result, events = self._update(request, info)
            await self._publish(request.resource, events)
        return result

    def _create(self, request: kmock.Request, info: kmock.ResourceInfo) -> tuple[Any, list[Obj]]:
        body, resource = request.data, request.resource
        if not isinstance(body, dict) or request.subresource:
            raise api_error(400, "BadRequest", "expected one JSON object")
        namespace = request.namespace if info.namespaced else None
        if info.namespaced and namespace is None:
            raise api_error(405, "MethodNotAllowed", "create a namespaced object under /namespaces/<ns>/")
        meta = body.get("metadata") or {}
        if info.namespaced and meta.get("namespace") not in (None, namespace):
            raise api_error(
                400, "BadRequest", "the namespace of the provided object does not match the namespace on the request"
            )
        name = meta.get("name") or (meta.get("generateName", "") + _suffix() if meta.get("generateName") else None)
        if not name:
            raise api_error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
        if info.namespaced and not self._alive(NAMESPACES, None, namespace):
            raise api_error(404, "NotFound", f'namespaces "{namespace}" not found')
        if self._alive(resource, namespace, name):
            raise api_error(409, "AlreadyExists", f'{_qualified(resource)} "{name}" already exists')
        obj = self._new_object(resource, namespace, {**body, "metadata": {**meta, "name": name}})
        key = (resource, namespace, name)
        if key in self.objects:
            self.objects[key].create(obj)
        else:
            self.objects[key] = obj
        return kmock.Response(status=201, payload=copy.deepcopy(obj)), [_event("ADDED", obj, None)]

    def _update(self, request: kmock.Request, info: kmock.ResourceInfo) -> tuple[Any, list[Obj]]:
        resource, namespace, name = request.resource, request.namespace, request.name
        stored = self._alive(resource, namespace, name)
        if stored is None:
            raise api_error(404, "NotFound", f'{_qualified(resource)} "{name}" not found')
        old = copy.deepcopy(stored.raw)
        if request.method.value == "PUT":
            new = self._replacement(request, old)
        else:
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            new = apply_patch(old, request.data, content_type)
        # Gap: kmock lets /status writes change anything and main-resource writes change
        # status. Workaround: /status changes only status; the main resource keeps status.
        if request.subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status") or {}}
        elif "status" in info.subresources:
            new["status"] = copy.deepcopy(old.get("status") or {})
        new = _normalise(self._keep_server_fields(old, new))
        stored.history.append(new)
        events = [_event("MODIFIED", new, old)]
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            stored.delete()  # the last finalizer is gone: the object goes
            gone = copy.deepcopy(new)
            gone["metadata"]["resourceVersion"] = self._next_revision()
            events.append(_event("DELETED", gone, new))
        return copy.deepcopy(new), events

    def _replacement(self, request: kmock.Request, old: Obj) -> Obj:
        body = request.data
        if not isinstance(body, dict):
            raise api_error(400, "BadRequest", "expected one JSON object")
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, request.name):
            raise api_error(400, "BadRequest", "the name of the object does not match the name on the URL")
        # Gap: kmock has no optimistic concurrency. Workaround: a stale resourceVersion is a 409.
        if meta.get("resourceVersion") not in (None, "", old["metadata"]["resourceVersion"]):
            raise api_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {_qualified(request.resource)} "{request.name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
            )
        return copy.deepcopy(body)

    def _keep_server_fields(self, old: Obj, new: Obj) -> Obj:
        """What clients cannot change; generation moves when the spec does."""
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        meta = new.setdefault("metadata", {})
        for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        if _spec_of(old) != _spec_of(new):
            meta["generation"] = old["metadata"].get("generation", 0) + 1
        meta["resourceVersion"] = self._next_revision()
        return new

    def _delete(self, request: kmock.Request) -> tuple[Any, list[Obj]]:
        resource, namespace, name = request.resource, request.namespace, request.name
        stored = self._alive(resource, namespace, name)
        if stored is None or request.subresource:
            raise api_error(404, "NotFound", f'{_qualified(resource)} "{name}" not found')
        old = copy.deepcopy(stored.raw)
        meta = old["metadata"]
        if meta.get("finalizers"):  # marked; it goes when the last finalizer is removed
            if meta.get("deletionTimestamp"):
                return old, []
            new = copy.deepcopy(old)
            new["metadata"].update(deletionTimestamp=now_rfc3339(), resourceVersion=self._next_revision())
            stored.history.append(new)
            return copy.deepcopy(new), [_event("MODIFIED", new, old)]
        stored.delete()
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._next_revision()
        # Gap: kmock answers a delete with the object; the API server answers with a Status
        # (except for pods, which it returns).
        status = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": resource.group, "kind": resource.plural, "uid": meta["uid"]},
        }
        return (gone if resource == PODS else status), [_event("DELETED", gone, old)]

    async def _publish(self, resource: Any, events: list[Obj]) -> None:
        history = self._history[resource]
        for event in events:
            if len(history) == history.maxlen:
                self._floor[resource] = history[0]["rv"]
            history.append(event)
        if events:
            await self._buses[resource].put(*events)

    async def close_watches(self) -> None:
        """End every open watch stream, so the HTTP server can stop without waiting."""
        for bus in list(self._buses.values()):
            await bus.put(_CLOSED)

    # -- reads (kmock's fallback reactions, overridden) ----------------------------------

    def _result(self, request: kmock.Request) -> Any:
        if request not in self._results:
            raise api_error(500, "InternalError", "the emulator stored no result for this request")
        return self._results.pop(request)

    async def _serve_create(self, request: kmock.Request) -> Any:
        return self._result(request)

    async def _serve_update(self, request: kmock.Request) -> Any:
        return self._result(request)

    async def _serve_replace(self, request: kmock.Request) -> Any:
        return self._result(request)

    async def _serve_delete(self, request: kmock.Request) -> Any:
        return self._result(request)

    async def _serve_server_version(self, request: kmock.Request) -> Obj:
        return dict(SERVER_VERSION)

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        self._info(request, "get")
        async with self._lock:
            stored = self._alive(request.resource, request.namespace, request.name)
            obj = copy.deepcopy(stored.raw) if stored is not None else None
        if obj is None:
            raise api_error(404, "NotFound", f'{_qualified(request.resource)} "{request.name}" not found')
        if request.subresource == "log":
            # Gap: kmock answers pods/<name>/log with the pod object. Workaround: the log the
            # simulated node captured, as text.
            provider = self.pod_logs.get((request.namespace, request.name))
            if provider is None:
                raise api_error(400, "BadRequest", f'container in pod "{request.name}" is waiting to start')
            text = provider()
            if request.params.get("tailLines"):  # timestamps, since*, limitBytes: ignored
                text = "".join(text.splitlines(keepends=True)[-int(request.params["tailLines"]) :])
            return kmock.Response(payload=text.encode(), headers={"Content-Type": "text/plain"})
        return obj

    def _in_scope(self, key: tuple, request: kmock.Request) -> bool:
        resource, namespace, name = key
        return (
            resource == request.resource
            and request.namespace in (None, namespace)
            and request.name in (None, name)
            and not self.objects[key].deleted
        )

    async def _serve_list(self, request: kmock.Request) -> Obj:
        # Gap: kmock ignores labelSelector/fieldSelector and reports no list resourceVersion.
        info = self._info(request, "list")
        selectors = Selectors.from_params(request.params)
        async with self._lock:
            items = [copy.deepcopy(o.raw) for k, o in self.objects.items() if self._in_scope(k, request)]
            revision = self._revision
        items = sorted((i for i in items if selectors.match(i)), key=_sort_key)
        resource = request.resource
        return {
            "apiVersion": f"{resource.group}/{resource.version}" if resource.group else resource.version,
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(revision)},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        # Gap: kmock's watch ignores selectors, resourceVersion and timeoutSeconds (a client
        # waiting for the server to end the stream hangs), and loses events between its
        # snapshot and its subscription. Workaround: snapshot and subscribe under one lock,
        # replay the history after a given resourceVersion (410 Gone when it has been
        # trimmed), translate selector transitions to ADDED/DELETED, honour timeoutSeconds.
        self._info(request, "watch")
        selectors = Selectors.from_params(request.params)
        since = _revision_param(request.params.get("resourceVersion"))
        timeout = float(request.params["timeoutSeconds"]) if request.params.get("timeoutSeconds") else None
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            if since is None:
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(o.raw)}
                    for k, o in self.objects.items()
                    if self._in_scope(k, request) and selectors.match(o.raw)
                ]
                initial.sort(key=lambda e: _sort_key(e["object"]))
            elif since < self._floor[request.resource]:
                initial = [{"type": "ERROR", "object": _gone_status(since)}]
            else:
                replay = [e for e in self._history[request.resource] if e["rv"] > since]
                initial = [t for e in replay if (t := _translate(e, request, selectors))]
        try:
            yield b""  # start the response even if nothing happens
            for event in initial:
                yield event
            if initial and initial[0]["type"] == "ERROR":
                return
            async for event in _until(bus.stream(since=marker), timeout):
                if event is _CLOSED:
                    return
                if since is None or event["rv"] > since:
                    translated = _translate(event, request, selectors)
                    if translated:
                        yield translated
        finally:
            with contextlib.suppress(ValueError):
                await bus.unmark(marker)


def _event(kind: str, obj: Obj, old: Obj | None) -> Obj:
    return {"type": kind, "object": copy.deepcopy(obj), "old": old, "rv": int(obj["metadata"]["resourceVersion"])}


def _translate(event: Obj, request: kmock.Request, selectors: Selectors) -> Obj | None:
    """What one watch sees of a change: an object that starts or stops matching its
    selectors is ADDED or DELETED for that watch, as with a real API server."""
    obj, old = event["object"], event["old"]
    meta = obj["metadata"]
    if request.namespace not in (None, meta.get("namespace")) or request.name not in (None, meta["name"]):
        return None
    matches, matched = selectors.match(obj), old is not None and selectors.match(old)
    kind = event["type"]
    if kind == "MODIFIED":
        kind = "MODIFIED" if matches and matched else "ADDED" if matches else "DELETED" if matched else ""
    elif not matches:
        kind = ""
    return {"type": kind, "object": obj} if kind else None


async def _until(events: AsyncIterator[T], timeout: float | None) -> AsyncIterator[T]:
    """Yield from ``events`` until ``timeout`` seconds have passed (None: forever)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    iterator = aiter(events)
    while True:
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            return
        try:
            yield await asyncio.wait_for(anext(iterator), remaining)
        except (TimeoutError, StopAsyncIteration):
            return


def _gone_status(since: int) -> Obj:
    message = f"too old resource version: {since}"
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "reason": "Expired",
        "code": 410,
        "message": message,
    }


def _revision_param(value: str | None) -> int | None:
    """resourceVersion of a watch: unset, "" or "0" mean "start with the current state"."""
    return int(value) if value and value != "0" else None


def _normalise(obj: Obj) -> Obj:
    # Gap: the API server turns a Secret's stringData into base64 data; kmock stores it as is.
    if obj.get("kind") == "Secret" and obj.get("stringData"):
        data = obj.setdefault("data", {}) or {}
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
    return obj


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _sort_key(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("namespace") or "", obj["metadata"]["name"]


def _qualified(resource: Any) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def _suffix(length: int = 5) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))


# ----------------------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------------------


class RunningEmulator:
    """The emulator served on 127.0.0.1 (random port) by its own event loop and thread.

    Served with aiohttp's low-level server rather than ``kmock.Server``: kmock.Server also
    patches aiohttp's DNS resolver process-wide and raises when two emulators stop out of
    order. ``emulator`` lives on the loop thread: from other threads, use the methods here."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: KubernetesApiEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="k8s-emulator", daemon=True)

    def start(self, timeout: float = 30) -> RunningEmulator:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError("the Kubernetes emulator did not start") from self._error
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the server and join its thread (idempotent); raise if it did not stop cleanly."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("the Kubernetes emulator thread did not stop")
        if self._error is not None:
            raise RuntimeError("the Kubernetes emulator failed") from self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        emulator = KubernetesApiEmulator()
        async with emulator:
            # handler_cancellation: a watch whose client has gone is cancelled, not left waiting.
            server = aiohttp.web.Server(emulator, handler_cancellation=True)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2)
            await runner.setup()
            try:
                site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, shutdown_timeout=2)
                await site.start()
                host, port = runner.addresses[0][:2]
                self.url, self.emulator = f"http://{host}:{port}", emulator
                self._ready.set()
                await self._stop.wait()
                await emulator.close_watches()
            finally:
                await runner.cleanup()

    def __enter__(self) -> RunningEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- client side -----------------------------------------------------------------------

    def configuration(self) -> kubernetes.client.Configuration:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        return configuration

    def api_client(self) -> kubernetes.client.ApiClient:
        """A client for this server (plain HTTP, no auth). Close it, or use it in ``with``."""
        return kubernetes.client.ApiClient(self.configuration())

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig whose current context points here (no credentials)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace}}],
            "current-context": "kmock",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path

    # -- server side, from any thread ------------------------------------------------------

    def call(self, function: Callable[[KubernetesApiEmulator], Awaitable[T]], timeout: float = 10) -> T:
        """Run ``await function(emulator)`` on the emulator's loop and return its result."""
        assert self._loop is not None and self.emulator is not None, "not started"
        emulator = self.emulator
        return asyncio.run_coroutine_threadsafe(function(emulator), self._loop).result(timeout)

    def objects(self, resource: str, namespace: str | None = None) -> list[Obj]:
        """Copies of the stored objects of ``resource`` ("batch/v1/jobs", "v1/pods", ...)."""
        wanted = kmock.resource(resource)

        async def snapshot(emulator: KubernetesApiEmulator) -> list[Obj]:
            async with emulator._lock:
                return [
                    copy.deepcopy(obj.raw)
                    for (res, ns, _), obj in emulator.objects.items()
                    if res == wanted and namespace in (None, ns) and not obj.deleted
                ]

        return sorted(self.call(snapshot), key=_sort_key)

    def requests(self) -> list[str]:
        """Every request served so far, as "METHOD /path?query"."""

        async def lines(emulator: KubernetesApiEmulator) -> list[str]:
            return [f"{r.method.value} {r.url.path_qs}" for r in emulator]

        return self.call(lines)

    def set_pod_log(self, namespace: str, pod: str, provider: Callable[[], str]) -> None:
        async def register(emulator: KubernetesApiEmulator) -> None:
            emulator.pod_logs[namespace, pod] = provider

        self.call(register)


@contextlib.contextmanager
def running_emulator() -> Iterator[RunningEmulator]:
    """``with running_emulator() as cluster:`` an API server until the block ends."""
    cluster = RunningEmulator().start()
    try:
        yield cluster
    finally:
        cluster.stop()


# ----------------------------------------------------------------------------------------
# Simulated controllers
# ----------------------------------------------------------------------------------------


class _Controller:
    """A thread that watches one resource through the official client, reconnecting every
    second (so it notices ``stop()``) from the last resourceVersion it saw."""

    def __init__(self, cluster: RunningEmulator, namespace: str | None) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.api = cluster.api_client()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # unexpected failures, for assertions and debugging

    def _list_call(self) -> tuple[Callable, tuple]:
        raise NotImplementedError

    def _on_event(self, kind: str, obj: Obj) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._spawn(self._watch, "watch")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self.api.close()
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        if alive:
            raise RuntimeError(f"{type(self).__name__} threads did not stop: {alive}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, *args), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guarded(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # keep the failure visible instead of losing it in a thread
            self.errors.append(f"{target.__name__}: {exc!r}")

    def _watch(self) -> None:
        list_call, args = self._list_call()
        revision = None
        while not self._stop.is_set():
            try:
                stream = kubernetes.watch.Watch().stream(
                    list_call, *args, resource_version=revision, timeout_seconds=1, deserialize=False
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        revision = None  # expired: start again from the current state
                        break
                    revision = event["object"]["metadata"]["resourceVersion"]
                    self._on_event(event["type"], event["object"])
            except ApiException as exc:
                if exc.status == 410:
                    revision = None
                else:
                    self.errors.append(f"watch: {exc.status} {exc.reason}")
                    self._stop.wait(0.5)
            except (urllib3.exceptions.HTTPError, OSError):  # a dropped connection: reconnect
                self._stop.wait(0.2)

    def _update_status(self, read: Callable, replace: Callable, name: str, mutate: Callable[[Obj], Any]) -> bool:
        """Read-modify-replace an object's status as controllers do (``mutate`` gets the whole
        object and changes its status, or returns False to leave it), retrying on 409
        conflicts. False if the object is gone or left as it was."""
        for _ in range(20):
            try:
                obj = json.loads(read(name, self.namespace, _preload_content=False).data)
                obj["status"] = obj.get("status") or {}
                if mutate(obj) is False:
                    return False
                replace(name, self.namespace, obj)
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status != 409:
                    raise
        raise RuntimeError(f"could not update the status of {name}: conflicts kept coming")


@dataclass
class PodRun:
    """One pod the node ran (or tried to): what ran, with what, and what came out."""

    namespace: str
    job: str
    pod: str
    container: str
    image: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the container's own env, resolved
    cwd: Path | None = None
    log_path: Path | None = None
    pid: int | None = None
    not_honoured: list[str] = field(default_factory=list)  # parts of the spec ignored here
    returncode: int | None = None
    reason: str | None = None  # Completed, Error, StartError, DeadlineExceeded, Killed
    waiting: str | None = None  # why it has not started (CreateContainerConfigError, ...)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def output(self) -> str:
        """stdout and stderr, interleaved, as ``kubectl logs`` would show them."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


class _ContainerNotReady(Exception):
    """The kubelet cannot start the container yet (a referenced object is missing)."""


class SimulatedNode(_Controller):
    """Runs every new Job in ``namespace`` the way the Job controller and a kubelet would,
    except that the container is a local process: ``command`` + ``args`` of the pod's
    single container (without ``command``, ``entrypoint`` + ``args``, or ``entrypoint`` +
    ``cmd`` without either: the image's ENTRYPOINT and CMD, empty by default), from
    ``workdir`` (or the container's ``workingDir`` if it exists here), with ``base_env``
    (standing in for the image's ENV; default: this process's environment) plus the
    container's env.

    Env it honours: literal ``value`` with ``$(VAR)`` expansion; ``valueFrom`` ``configMapKeyRef``
    and ``secretKeyRef`` (read from the emulator; a missing non-optional one keeps the pod
    Pending with ``CreateContainerConfigError`` until it appears, as a kubelet does);
    ``fieldRef`` for metadata.name/namespace/uid, metadata.labels['k'] /
    annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP/hostIP (127.0.0.1);
    ``envFrom`` ``configMapRef`` / ``secretRef`` with ``prefix``. Not honoured (listed in
    ``PodRun.not_honoured``): ``resourceFieldRef``, other fieldRef paths, volumes and mounts,
    a ``workingDir`` that does not exist here, containers after the first.

    Status as the controllers write it: the pod is created (generateName ``<job>-``, labels
    ``job-name``, ``controller-uid`` and their ``batch.kubernetes.io/`` forms, an owner
    reference) Pending, then Running with the Job ``active: 1``, then Succeeded / Failed; the
    Job gets ``succeeded: 1`` and a ``Complete`` condition, or, once failures exceed
    ``backoffLimit`` (default 6; retried at once, no backoff delay), ``failed: n`` and a
    ``Failed`` condition (``BackoffLimitExceeded``; ``DeadlineExceeded`` after
    ``activeDeadlineSeconds``). A deleted Job has its process terminated. A named service
    account (other than "default") must exist, or no pod is created (admission would refuse
    it) until it does. ``stop()`` terminates every process it started (SIGTERM to its
    process group, SIGKILL after ``grace_s``)."""

    def __init__(
        self,
        cluster: RunningEmulator,
        namespace: str,
        workdir: Path,
        log_dir: Path,
        base_env: Mapping[str, str] | None = None,
        entrypoint: Sequence[str] = (),
        cmd: Sequence[str] = (),
        node_name: str = "simulated-node",
        grace_s: float = 10,
    ) -> None:
        super().__init__(cluster, namespace)
        self.entrypoint, self.cmd = list(entrypoint), list(cmd)
        self.workdir, self.log_dir, self.node_name, self.grace_s = Path(workdir), Path(log_dir), node_name, grace_s
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.batch, self.core = kubernetes.client.BatchV1Api(self.api), kubernetes.client.CoreV1Api(self.api)
        self._lock = threading.Lock()
        self._runs: list[PodRun] = []
        self._handled: set[str] = set()
        self._deleted: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}
        self._processes: list[subprocess.Popen] = []

    @property
    def runs(self) -> list[PodRun]:
        with self._lock:
            return list(self._runs)

    def runs_of(self, job: str) -> list[PodRun]:
        return [run for run in self.runs if run.job == job]

    def finished(self, job: str) -> bool:
        """Whether the node has finished ``job`` (succeeded, given up, or seen it deleted)."""
        with self._lock:
            done = self._done.get(job)
        return done is not None and done.is_set()

    def wait_for_job(self, job: str, timeout: float) -> list[PodRun]:
        """Block until the node has finished ``job`` (succeeded or given up); its pod runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = self._done.get(job)
            if done is not None and done.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                return self.runs_of(job)
            time.sleep(0.1 if done is None else 0)
        tail = "\n".join(run.output[-2000:] for run in self.runs_of(job))
        raise TimeoutError(f"job {job} not finished after {timeout} s; output so far:\n{tail}")

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            _terminate(process, self.grace_s)
        super().stop()

    def _list_call(self) -> tuple[Callable, tuple]:
        return self.batch.list_namespaced_job, (self.namespace,)

    def _on_event(self, kind: str, job: Obj) -> None:
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        if kind == "DELETED":
            with self._lock:
                if uid in self._deleted:
                    self._deleted[uid].set()
            return
        finished = any(c.get("type") in ("Complete", "Failed") for c in (job.get("status") or {}).get("conditions", []))
        with self._lock:
            if uid in self._handled or finished or (job.get("spec") or {}).get("suspend"):
                return
            self._handled.add(uid)
            self._deleted[uid] = threading.Event()
            self._done[name] = threading.Event()
        self._spawn(self._run_job, f"job-{name}", job)

    # -- the Job controller ----------------------------------------------------------------

    def _run_job(self, job: Obj) -> None:
        name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        spec = job.get("spec") or {}
        backoff_limit, deadline_s = spec.get("backoffLimit", 6), spec.get("activeDeadlineSeconds")
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        failures, started = 0, now_rfc3339()
        try:
            while not self._stop.is_set():
                run = self._run_pod(job, deadline)
                if run is None or self._deleted[uid].is_set() or self._stop.is_set():
                    return
                if run.returncode == 0:
                    self._set_job_status(name, started, failures, "Complete", "CompletionsReached")
                    return
                failures += 1
                if run.reason == "DeadlineExceeded":
                    self._set_job_status(name, started, failures, "Failed", "DeadlineExceeded")
                    return
                if failures > backoff_limit:
                    self._set_job_status(name, started, failures, "Failed", "BackoffLimitExceeded")
                    return
                self._set_job_status(name, started, failures)
        finally:
            self._done[name].set()

    def _set_job_status(
        self, name: str, started: str, failures: int, outcome: str | None = None, reason: str = ""
    ) -> None:
        def mutate(job: Obj) -> None:
            status = job["status"]
            status.update(startTime=started, ready=0)
            status.pop("active", None)  # omitempty: 0 is absent
            if failures:
                status["failed"] = failures
            if outcome is None:
                return
            now = now_rfc3339()
            if outcome == "Complete":
                status.update(succeeded=1, completionTime=now)
            messages = {
                "CompletionsReached": "Reached expected number of succeeded pods",
                "BackoffLimitExceeded": "Job has reached the specified backoff limit",
                "DeadlineExceeded": "Job was active longer than specified deadline",
            }
            condition = {"type": outcome, "status": "True", "reason": reason, "message": messages[reason]}
            status["conditions"] = [*status.get("conditions", []), {**condition, "lastProbeTime": now}]
            status["conditions"][-1]["lastTransitionTime"] = now

        self._write_job_status(name, mutate)

    def _mark_job_active(self, name: str, ready: bool) -> None:
        def mutate(job: Obj) -> None:
            job["status"].update(startTime=job["status"].get("startTime", now_rfc3339()), active=1, ready=int(ready))

        self._write_job_status(name, mutate)

    def _write_job_status(self, name: str, mutate: Callable[[Obj], None]) -> None:
        self._update_status(
            self.batch.read_namespaced_job_status, self.batch.replace_namespaced_job_status, name, mutate
        )

    # -- the kubelet -------------------------------------------------------------------------

    def _run_pod(self, job: Obj, deadline: float | None) -> PodRun | None:
        """One attempt: create the pod, run its container, report. None if cancelled."""
        uid = job["metadata"]["uid"]
        pod = self._create_pod(job)
        if pod is None:
            return None
        container = pod["spec"]["containers"][0]
        job_name, pod_name = job["metadata"]["name"], pod["metadata"]["name"]
        run = PodRun(self.namespace or "", job_name, pod_name, container["name"], container.get("image", ""))
        with self._lock:
            self._runs.append(run)
        try:
            self._mark_job_active(job_name, ready=False)
            process = self._start(pod, container, run, uid)
            if process is None:
                return None if run.reason is None else run
            self._mark_job_active(job_name, ready=True)
            self._wait(process, run, uid, deadline)
            return run
        finally:
            self._report_pod(run)
            run.finished.set()

    def _create_pod(self, job: Obj) -> Obj | None:
        meta, template = job["metadata"], copy.deepcopy(job["spec"]["template"])
        account = template["spec"].get("serviceAccountName")
        while account not in (None, "default") and not self._exists(self.core.read_namespaced_service_account, account):
            # Admission would refuse the pod; the Job controller retries.
            if self._stop.wait(1) or self._deleted[meta["uid"]].is_set():
                return None
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "batch.kubernetes.io/controller-uid": meta["uid"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": meta["uid"],
            "job-name": meta["name"],
        }
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{meta['name']}-",
                "labels": labels,
                "annotations": (template.get("metadata") or {}).get("annotations", {}),
                "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {**template["spec"], "nodeName": self.node_name},
        }
        response = self.core.create_namespaced_pod(self.namespace, body, _preload_content=False)
        return json.loads(response.data)

    def _exists(self, read: Callable, name: str) -> bool:
        try:
            read(name, self.namespace)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def _start(self, pod: Obj, container: Obj, run: PodRun, uid: str) -> subprocess.Popen | None:
        """Start the container's process once its config resolves; None if it never did."""
        while True:
            try:
                run.env = self._container_env(pod, container, run)
                break
            except _ContainerNotReady as exc:
                if run.waiting is None:
                    run.waiting = str(exc)
                    self._pod_status(run, "Pending", waiting=("CreateContainerConfigError", str(exc)))
                if self._stop.wait(1) or self._deleted[uid].is_set():
                    return None
        run.waiting = None
        command, args = container.get("command"), container.get("args")
        argv = [*command, *(args or [])] if command else [*self.entrypoint, *(args or self.cmd)]
        run.argv = [_expand(part, run.env) for part in argv]
        run.cwd = self._working_dir(container, run)
        self._note_not_honoured(pod, container, run)
        run.log_path = self.log_dir / f"{run.pod}.log"
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cluster.set_pod_log(run.namespace, run.pod, lambda: run.output)
        if not run.argv:
            return self._start_error(run, "no command, no args and no image entrypoint/cmd given to the node")
        if self._stop.is_set():
            return None
        try:
            with run.log_path.open("wb") as log:
                process = subprocess.Popen(
                    run.argv,
                    cwd=run.cwd,
                    env={**self.base_env, **run.env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            return self._start_error(run, f"failed to start {run.argv[0]!r}: {exc}")
        run.pid = process.pid
        with self._lock:
            self._processes.append(process)
        self._pod_status(run, "Running")
        return process

    def _start_error(self, run: PodRun, message: str) -> None:
        run.log_path.write_text(message + "\n")
        run.returncode, run.reason = 128, "StartError"
        return None

    def _wait(self, process: subprocess.Popen, run: PodRun, uid: str, deadline: float | None) -> None:
        while process.poll() is None:
            if self._stop.is_set() or self._deleted[uid].is_set():
                _terminate(process, self.grace_s)
                run.reason = "Killed"
            elif deadline is not None and time.monotonic() > deadline:
                _terminate(process, self.grace_s)
                run.reason = "DeadlineExceeded"
            else:
                time.sleep(0.2)
        run.returncode = process.returncode
        run.reason = run.reason or ("Completed" if process.returncode == 0 else "Error")

    def _report_pod(self, run: PodRun) -> None:
        if run.returncode is None:
            return
        phase = "Succeeded" if run.returncode == 0 else "Failed"
        with contextlib.suppress(ApiException):  # the pod may be gone with its Job
            self._pod_status(run, phase, terminated=(run.returncode, run.reason or ""))

    def _pod_status(
        self,
        run: PodRun,
        phase: str,
        waiting: tuple[str, str] | None = None,
        terminated: tuple[int, str] | None = None,
    ) -> None:
        now = now_rfc3339()

        def mutate(pod: Obj) -> None:
            status = pod["status"]
            started = status.get("startTime", now)
            if waiting:
                state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
            elif terminated:
                state = {"terminated": {"exitCode": terminated[0], "reason": terminated[1], "finishedAt": now}}
                state["terminated"]["startedAt"] = started
            else:
                state = {"running": {"startedAt": now}}
            running = phase == "Running"
            status.update(phase=phase, startTime=started, hostIP="127.0.0.1", podIP="127.0.0.1")
            status["conditions"] = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": str(running), "lastTransitionTime": now},
            ]
            status["containerStatuses"] = [
                {
                    "name": run.container,
                    "image": run.image,
                    "imageID": "",
                    "ready": running,
                    "started": running,
                    "restartCount": 0,
                    "state": state,
                }
            ]

        read, replace = self.core.read_namespaced_pod_status, self.core.replace_namespaced_pod_status
        self._update_status(read, replace, run.pod, mutate)

    def _working_dir(self, container: Obj, run: PodRun) -> Path:
        wanted = container.get("workingDir")
        if wanted and Path(wanted).is_dir():
            return Path(wanted)
        if wanted:
            run.not_honoured.append(f"workingDir {wanted} (not on this machine; ran in {self.workdir})")
        return self.workdir

    def _note_not_honoured(self, pod: Obj, container: Obj, run: PodRun) -> None:
        for volume in pod["spec"].get("volumes") or []:
            run.not_honoured.append(f"volume {volume.get('name')}")
        for mount in container.get("volumeMounts") or []:
            run.not_honoured.append(f"volumeMount {mount.get('name')} at {mount.get('mountPath')}")
        for extra in [*pod["spec"]["containers"][1:], *(pod["spec"].get("initContainers") or [])]:
            run.not_honoured.append(f"container {extra.get('name')} (only the first container runs)")

    # -- the container's environment -------------------------------------------------------

    def _container_env(self, pod: Obj, container: Obj, run: PodRun) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for key, value in self._env_source(source).items():
                env[prefix + key] = value
        for var in container.get("env") or []:  # later entries win, as in a container
            if "valueFrom" in (var or {}):
                value = self._value_from(pod, var["name"], var["valueFrom"], run)
                if value is not None:
                    env[var["name"]] = value
            else:
                env[var["name"]] = _expand(var.get("value") or "", env)
        return env

    def _env_source(self, source: Obj) -> dict[str, str]:
        if "configMapRef" in source:
            ref, read, decode = source["configMapRef"], self.core.read_namespaced_config_map, False
        elif "secretRef" in source:
            ref, read, decode = source["secretRef"], self.core.read_namespaced_secret, True
        else:
            return {}
        data = self._read_data(read, ref["name"], decode, ref.get("optional", False))
        return data or {}

    def _value_from(self, pod: Obj, name: str, source: Obj, run: PodRun) -> str | None:
        for kind, read, decode in (
            ("configMapKeyRef", self.core.read_namespaced_config_map, False),
            ("secretKeyRef", self.core.read_namespaced_secret, True),
        ):
            if kind in source:
                ref = source[kind]
                data = self._read_data(read, ref["name"], decode, ref.get("optional", False))
                if data is not None and ref["key"] in data:
                    return data[ref["key"]]
                if ref.get("optional"):
                    return None
                raise _ContainerNotReady(f"couldn't find key {ref['key']} in {kind[:-6]} {ref['name']}")
        if "fieldRef" in source:
            value = _field_ref(pod, source["fieldRef"]["fieldPath"])
            if value is not None:
                return value
        run.not_honoured.append(f"env {name}: valueFrom {json.dumps(source)}")
        return None

    def _read_data(self, read: Callable, name: str, decode: bool, optional: bool) -> dict[str, str] | None:
        try:
            obj = json.loads(read(name, self.namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return None
            if exc.status == 404:
                raise _ContainerNotReady(f'{"secret" if decode else "configmap"} "{name}" not found') from exc
            raise
        data = obj.get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()} if decode else dict(data)


def _field_ref(pod: Obj, path: str) -> str | None:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    return (meta.get(m[1]) or {}).get(m[2]) if m else None


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]),
        text,
    )


def _terminate(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; reap the process."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class SimulatedDeploymentController(_Controller):
    """Marks Deployments in ``namespace`` rolled out ``delay_s`` after each create or change:
    status.observedGeneration = metadata.generation, replicas / updatedReplicas /
    readyReplicas / availableReplicas = spec.replicas (default 1), conditions Available and
    Progressing True. ``hold_unavailable(name)`` keeps one rolling out but never available
    (Available False, no ready replicas) until ``release(name)``, to test rollout timeouts.
    It creates no ReplicaSets or pods and never reports ProgressDeadlineExceeded."""

    def __init__(self, cluster: RunningEmulator, namespace: str, delay_s: float = 0.2) -> None:
        super().__init__(cluster, namespace)
        self.apps = kubernetes.client.AppsV1Api(self.api)
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
        if kind in ("ADDED", "MODIFIED") and self._desired(deployment) != _rollout_view(deployment.get("status")):
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


_AVAILABLE_REASON = {False: "MinimumReplicasAvailable", True: "MinimumReplicasUnavailable"}
_MESSAGES = {
    "MinimumReplicasAvailable": "Deployment has minimum availability.",
    "MinimumReplicasUnavailable": "Deployment does not have minimum availability.",
    "NewReplicaSetAvailable": "ReplicaSet has successfully progressed.",
    "ReplicaSetUpdated": "ReplicaSet is progressing.",
}


def _rollout_view(status: Obj | None) -> Obj:
    """The part of a Deployment status the controller sets, comparable with ``_desired``."""
    status = status or {}
    view = {k: v for k, v in status.items() if k != "conditions" and v}
    conditions = [(c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions", [])]
    return {**view, "conditions": conditions} if conditions else view
