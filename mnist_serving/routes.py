"""The endpoint's routes: exactly the documented ones, and readiness that means the model answers.

KServe's REST server registers more than this endpoint serves: the model-repository
extension (``POST /v2/repository/models/<name>/load`` and ``/unload``: any client could unload
the model), model listings, the OpenAPI pages. ``Routes`` (ASGI middleware, in front of
KServe) answers 404 for every path not in ``documented_routes`` and 405 for a documented path
asked with another method, so a route that a KServe upgrade adds stays closed until it is
listed here.

Versioned v2 paths, ``/v2/models/<name>/versions/<v>`` (metadata), ``.../ready`` and
``.../infer``, answer for the served version only (404 for any other) and are rewritten to the
unversioned path, so one handler serves both spellings.

``MnistDataPlane`` is KServe's data plane with three answers changed: ``/v2/health/ready`` is
true only while every model is ready (KServe's is true whenever the process runs, so probes
stayed green with the model unloaded), model metadata lists the served ``versions``, and server
metadata names the extension implemented (``binary_tensor_data``), not the repository one.
A model is ready once it has loaded and answered a first prediction (``MnistPredictor.load``).
"""

from __future__ import annotations

import re

from kserve.protocol.dataplane import DataPlane

from mnist_serving.body_limit import Receive, Scope, Send, reply

EXTENSIONS = ["binary_tensor_data"]  # the Open Inference Protocol extensions this server implements


def documented_routes(model_name: str) -> dict[str, frozenset[str]]:
    """path -> methods, for every route the endpoint answers (README, Endpoint)."""
    v1, v2 = f"/v1/models/{model_name}", f"/v2/models/{model_name}"
    get, post = frozenset({"GET"}), frozenset({"POST"})
    return {
        "/v2": get,  # server metadata
        "/v2/health/live": get,
        "/v2/health/ready": get,
        v2: get,  # model metadata
        f"{v2}/ready": get,
        f"{v2}/infer": post,
        f"{v1}:predict": post,
        f"{v1}/feedback": post,
        "/metrics": get,
    }


class Routes:
    """Refuses undocumented routes; maps the served version's versioned paths onto the plain ones."""

    def __init__(self, app, model_name: str, version: str) -> None:  # noqa: ANN001 - an ASGI app
        self.app, self.model_name, self.version = app, model_name, version
        self.routes = documented_routes(model_name)
        self.versioned = re.compile(rf"^/v2/models/{re.escape(model_name)}/versions/([^/]+)(/ready|/infer)?$")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        match = self.versioned.match(path)
        if match:
            if match[1] != self.version:
                served = f"this server serves version {self.version}"
                return await reply(send, 404, f"version {match[1]} of {self.model_name} is not served: {served}")
            path = f"/v2/models/{self.model_name}{match[2] or ''}"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        methods = self.routes.get(path)
        if methods is None:
            return await reply(send, 404, f"no route {path}")
        if scope["method"] not in methods:
            allow = ", ".join(sorted(methods))
            return await reply(send, 405, f"{path} takes {allow}", headers=((b"allow", allow.encode()),))
        return await self.app(scope, receive, send)


class MnistDataPlane(DataPlane):
    """KServe's data plane, ready only when its models are, listing the served version."""

    def __init__(self, model_registry, version: str) -> None:  # noqa: ANN001 - kserve's ModelRepository
        super().__init__(model_registry=model_registry)
        self.version = version

    def metadata(self) -> dict:
        return {**super().metadata(), "extensions": EXTENSIONS}

    async def ready(self) -> bool:
        names = list(self.model_registry.get_models())
        return bool(names) and all([await self.model_registry.is_model_ready(name) for name in names])

    async def model_metadata(self, model_name: str) -> dict:
        return {**await super().model_metadata(model_name), "versions": [self.version]}
