"""``POST /v1/models/<name>/feedback``: ground-truth labels for served predictions, so
production accuracy can be measured and relabelled inputs can join the next training set.

Body: ``{"request_id": "...", "label": 7}`` (``"index": i`` for the i-th image of a batch)."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mnist_serving import metrics
from mnist_serving.request_log import FeedbackLog, RequestLog


def _error(status: int, message: str) -> JSONResponse:
    metrics.FEEDBACK.labels("rejected").inc()
    return JSONResponse({"error": message}, status_code=status)


def add_feedback_route(app: FastAPI, model_name: str, requests: RequestLog, feedback: FeedbackLog) -> None:
    async def submit(request: Request) -> JSONResponse:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, 'body must be JSON: {"request_id": "...", "label": 0-9, "index": 0}')
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            return _error(400, "request_id (a string from a prediction response) is required")
        label, index = body.get("label"), body.get("index", 0)
        if type(label) is not int or not 0 <= label <= 9:
            return _error(400, f"label must be a digit 0-9, got {label!r}")
        images = requests.knows(body["request_id"])
        if images is None:
            return _error(404, f"unknown request id {body['request_id']!r}: not among the recent requests served")
        if type(index) is not int or not 0 <= index < images:
            return _error(400, f"index must be 0..{images - 1} for this request, got {index!r}")
        feedback.add(body["request_id"], index, label)
        metrics.FEEDBACK.labels("accepted").inc()
        return JSONResponse({"accepted": True, "request_id": body["request_id"], "index": index, "label": label})

    app.add_api_route(f"/v1/models/{model_name}/feedback", submit, methods=["POST"])
