"""``POST /v1/models/<name>/feedback``: ground-truth labels for served predictions, so
production accuracy can be measured and relabelled inputs can join the next training set.

Body: ``{"request_id": "...", "label": 7}`` (``"index": i`` for the i-th image of a batch).

Labels steer the next model, so taking them is a decision, never a default:
- The route needs ``Authorization: Bearer <token>``, the token the server was started with
  (``$MNIST_FEEDBACK_TOKEN``; on Kubernetes from a Secret). Without a configured token every
  label is refused (403). A missing or wrong token is a 401, decided before the body is read:
  nothing is written. Tokens are compared in constant time (``hmac.compare_digest`` over their
  SHA-256, so not even the length leaks) and never logged or echoed.
- One label per prediction: the first stands. The same label again is a 200 with
  ``"duplicate": true`` and writes nothing (clients may retry); a different one is a 409. The
  decision is ``FeedbackLog.add``'s, under a file lock, so of concurrent writers one wins.
Every answer is counted in ``mnist_feedback_total{outcome}``: accepted, duplicate, conflict,
rejected (a bad body, unknown request), unauthorized, disabled.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import orjson

from mnist_serving import metrics
from mnist_serving.body_limit import Receive, Scope, Send, read_body, reply
from mnist_serving.options import FEEDBACK_TOKEN_ENV
from mnist_serving.request_log import FeedbackLog, RequestLog

Answer = tuple[int, dict, tuple[tuple[bytes, bytes], ...]]  # status, JSON body, extra headers


def _answer(outcome: str, status: int, content: dict, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
    metrics.FEEDBACK.labels(outcome).inc()
    return status, content, headers


def _error(status: int, message: str, outcome: str = "rejected") -> Answer:
    headers = ((b"www-authenticate", b'Bearer realm="feedback"'),) if status == 401 else ()
    return _answer(outcome, status, {"error": message}, headers)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def bearer_matches(authorization: str | None, token_digest: bytes) -> bool:
    """True if the Authorization header is ``Bearer <token>`` with the token whose SHA-256 is given."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(_digest(credentials.strip()), token_digest)


class Feedback:
    """The feedback route as an ASGI app, taking labels from holders of ``token``; none if it is None."""

    def __init__(self, requests: RequestLog, feedback: FeedbackLog, token: str | None) -> None:
        self.requests, self.feedback = requests, feedback
        self.token_digest = _digest(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, content, headers = await self.submit(scope, receive)
        await reply(send, status, orjson.dumps(content), headers=headers)

    async def submit(self, scope: Scope, receive: Receive) -> Answer:
        if self.token_digest is None:
            return _error(403, f"feedback is disabled: set {FEEDBACK_TOKEN_ENV} where the server runs", "disabled")
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if not bearer_matches(authorization, self.token_digest):
            return _error(401, "feedback needs a valid token: Authorization: Bearer <token>", "unauthorized")
        try:
            body = orjson.loads(await read_body(receive) or b"")
        except orjson.JSONDecodeError:
            return _error(400, 'body must be JSON: {"request_id": "...", "label": 0-9, "index": 0}')
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            return _error(400, "request_id (a string from a prediction response) is required")
        request_id, label, index = body["request_id"], body.get("label"), body.get("index", 0)
        if type(label) is not int or not 0 <= label <= 9:
            return _error(400, f"label must be a digit 0-9, got {label!r}")
        images = self.requests.knows(request_id)
        if images is None:
            return _error(404, f"unknown request id {request_id!r}: not among the recent requests served")
        if type(index) is not int or not 0 <= index < images:
            return _error(400, f"index must be 0..{images - 1} for this request, got {index!r}")
        earlier = await asyncio.to_thread(self.feedback.add, request_id, index, label)  # may wait for the file lock
        answer = {"request_id": request_id, "index": index, "label": label}
        if earlier is None:
            return _answer("accepted", 200, {"accepted": True, **answer})
        if earlier == label:
            return _answer("duplicate", 200, {"accepted": True, "duplicate": True, **answer})
        return _error(409, f"prediction {index} of request {request_id!r} is already labelled {earlier}", "conflict")
