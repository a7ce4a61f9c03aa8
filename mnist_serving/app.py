"""The endpoint's answers on every documented route but v2 infer: health, metadata, v1 predict,
feedback and metrics, as one plain ASGI app (no web framework: each route is a dict lookup).

It sits innermost, behind ``routes.Routes`` (which has already refused every undocumented path
with 404 and every wrong method with 405, and rewritten the served version's versioned paths)
and ``v2_infer.V2Infer`` (which answers v2 infer itself). So here a path is documented and its
method is right.

Readiness: ``/v2/health/ready`` and ``/v2/models/<name>/ready`` are 200 only while the model is
ready (loaded and has answered a first prediction, ``MnistPredictor.load``), else 503; so are
the predictions. A request the model refuses is a 400 ``{"error": ...}``; an unexpected failure
propagates to uvicorn, which answers 500 and logs it (counted as ``error`` by the predictor)."""

from __future__ import annotations

import onnxruntime
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mnist_serving.body_limit import Receive, Scope, Send, read_body, reply
from mnist_serving.feedback import Feedback
from mnist_serving.predictor import MnistPredictor, Refused
from mnist_serving.routes import EXTENSIONS


def _json(content: object) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class Endpoints:
    def __init__(self, model: MnistPredictor, feedback: Feedback | None) -> None:
        self.model, self.feedback = model, feedback
        v1, v2 = f"/v1/models/{model.name}", f"/v2/models/{model.name}"
        self.server = _json(
            {"name": "mnist_serving (ONNX Runtime)", "version": onnxruntime.__version__, "extensions": EXTENSIONS}
        )
        self.handlers = {
            "/v2": self._server_metadata,
            "/v2/health/live": self._live,
            "/v2/health/ready": self._ready,
            v2: self._model_metadata,
            f"{v2}/ready": self._model_ready,
            f"{v1}:predict": self._predict,
            f"{v1}/feedback": self._feedback,
            "/metrics": self._metrics,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return None
        handler = self.handlers.get(scope["path"])
        if handler is None:
            return await reply(send, 404, f"no route {scope['path']}")
        return await handler(scope, receive, send)

    async def _server_metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        await reply(send, 200, self.server)

    async def _live(self, scope: Scope, receive: Receive, send: Send) -> None:
        await reply(send, 200, b'{"live":true}')

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        await reply(send, 200 if self.model.ready else 503, _json({"ready": self.model.ready}))

    async def _model_metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        await reply(send, 200, _json(self.model.metadata()))

    async def _model_ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        ready = self.model.ready
        await reply(send, 200 if ready else 503, _json({"name": self.model.name, "ready": ready}))

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if body is None:
            return None
        if not self.model.ready:
            return await reply(send, 503, f"model {self.model.name} is not ready")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise self.model.refuse("v1", f"the request is not valid JSON ({exc})") from None
            answer = await self.model.predict(payload, headers)
        except Refused as exc:
            return await reply(send, 400, str(exc))
        await reply(send, 200, _json(answer))

    async def _feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.feedback is None:
            return await reply(send, 404, "feedback needs the request log: this server runs without one")
        await self.feedback(scope, receive, send)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await reply(send, 200, generate_latest(), CONTENT_TYPE_LATEST.encode())
