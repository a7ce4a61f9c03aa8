"""The endpoint's routes: exactly the documented ones.

``Routes`` (ASGI middleware, in front of everything that answers) answers 404 for every path
not in ``documented_routes`` and 405 for a documented path asked with another method, so no
other route can answer: no model-repository extension (no client can load or unload the
model), no listings, no API pages. Every route listed here is answered by ``app.Endpoints``
or, for v2 infer, ``v2_infer.V2Infer``.

Versioned v2 paths, ``/v2/models/<name>/versions/<v>`` (metadata), ``.../ready`` and
``.../infer``, answer for the served version only (404 for any other) and are rewritten to the
unversioned path, so one handler serves both spellings.

Server metadata names the Open Inference Protocol extension implemented (``EXTENSIONS``).
"""

from __future__ import annotations

import re

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
