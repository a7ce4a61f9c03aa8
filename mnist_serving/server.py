"""Run the KServe REST server for one model version on given listening sockets."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from kserve import Model, model_server
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer

from mnist_ml.model_contract import MODEL_NAME
from mnist_serving import metrics
from mnist_serving.binary_infer import BinaryInfer
from mnist_serving.body_limit import BodyLimit
from mnist_serving.drain import Drain
from mnist_serving.feedback import add_feedback_route
from mnist_serving.predictor import MnistPredictor
from mnist_serving.request_log import FeedbackLog, RequestLog

log = logging.getLogger("mnist_serving")


def rest_server(model: Model, max_body_bytes: int, middlewares: tuple = ()) -> RESTServer:
    """KServe's REST server (v1, v2, health, metrics) for one loaded model. ``middlewares``
    are (class, kwargs) pairs; the body-size limit always runs first."""
    repository = ModelRepository()
    repository.update(model)
    rest = RESTServer(
        "kserve.model_server:app",
        DataPlane(model_registry=repository),
        ModelRepositoryExtension(model_registry=repository),
        http_port=0,  # unused: the caller passes listening sockets to run()
        timeout_keep_alive=5,
    )
    # Starlette runs the last-added middleware first.
    for middleware, kwargs in middlewares:
        model_server.app.add_middleware(middleware, **kwargs)
    model_server.app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    for noisy in ("uvicorn.access", "kserve.trace"):  # a log line per request costs more than scoring
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return rest


def serve(
    version_dir: Path,
    listeners: list[socket.socket],
    *,
    max_batch: int = 1024,
    max_body_bytes: int = 16 * 1024 * 1024,
    model_name: str = MODEL_NAME,
    request_log: RequestLog | None = None,
) -> None:
    """Load the version, then serve v1 and v2 on every listener until SIGTERM/SIGINT,
    which stops accepting, finishes requests in flight and exits. SIGUSR1 first hands
    new connections to a successor on the same socket (see ``drain``). With a
    ``request_log``, every prediction is logged and labels are taken at ``.../feedback``."""
    model = MnistPredictor(model_name, version_dir, max_batch=max_batch, request_log=request_log)
    model.load()
    drain = Drain()
    rest = rest_server(model, max_body_bytes, middlewares=((BinaryInfer, {"model": model}), (drain.middleware, {})))
    drain.install(rest._server)  # KServe keeps its uvicorn.Server private; drain needs its listeners
    if request_log is not None:
        add_feedback_route(model_server.app, model_name, request_log, FeedbackLog(request_log.directory))
        metrics.LOG_DROPPED.set_function(lambda: request_log.dropped)
    addresses = ", ".join("http://{}:{}".format(*s.getsockname()[:2]) for s in listeners)
    log.info(f"serving {model_name} version {model.version} from {version_dir} on {addresses} (pid {os.getpid()})")
    try:
        rest.run(sockets=listeners)
    finally:
        if request_log is not None:
            request_log.close()
