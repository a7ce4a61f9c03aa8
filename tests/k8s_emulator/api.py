"""The API server: kmock's emulator with the gaps that matter to real clients worked around,
each marked "Gap:" where it is made."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import random
import re
import string
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp.web
import attrs
import kmock

from .objects import Obj, T, api_error, now_rfc3339, sort_key
from .patches import apply_patch
from .selectors import Selectors

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
        # Gap: kmock ignores delete options. Workaround: their preconditions (uid,
        # resourceVersion) are honoured, a mismatch is a 409; other options are still ignored.
        options = request.data if isinstance(request.data, dict) else {}
        for key, wanted in (options.get("preconditions") or {}).items():
            if wanted is not None and meta.get(key) != wanted:
                raise api_error(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {_qualified(resource)} "{name}": Precondition failed: '
                    f"{key}: {wanted}, {key} in object meta: {meta.get(key)}",
                )
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
        items = sorted((i for i in items if selectors.match(i)), key=sort_key)
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
                initial.sort(key=lambda e: sort_key(e["object"]))
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


def _qualified(resource: Any) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def _suffix(length: int = 5) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))
