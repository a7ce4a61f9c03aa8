"""Run the KServe REST server for one model version on given listening sockets.

The server answers the documented routes only (``routes``): KServe's model-repository
extension is neither constructed nor reachable, so no request can unload the model. v2 infer
requests are ours (``v2_infer``); the rest goes to KServe's handlers behind the route check."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import uvicorn
from kserve import Model, model_server
from kserve.model_repository import ModelRepository
from kserve.protocol.rest.server import RESTServer

from mnist_ml.model_contract import MODEL_NAME
from mnist_serving import metrics
from mnist_serving.body_limit import BodyLimit
from mnist_serving.drain import Drain
from mnist_serving.feedback import add_feedback_route
from mnist_serving.options import FEEDBACK_TOKEN_ENV
from mnist_serving.predictor import MnistPredictor
from mnist_serving.request_log import FeedbackLog, RequestLog
from mnist_serving.routes import MnistDataPlane, Routes
from mnist_serving.sockets import HandoffSocket
from mnist_serving.v2_infer import V2Infer

log = logging.getLogger("mnist_serving")


def rest_server(model: Model, version: str, max_body_bytes: int, outer: tuple = (), inner: tuple = ()) -> RESTServer:
    """KServe's REST server (v1, v2, health, metrics) for one loaded model, serving ``version``
    of it, on the documented routes only. Middlewares are (class, kwargs) pairs, each group run
    in order: ``outer`` on every request, then the body-size limit and the route check, then
    ``inner`` on the requests that passed them."""
    repository = ModelRepository()
    repository.update(model)
    rest = RESTServer(
        "kserve.model_server:app",
        MnistDataPlane(repository, version),
        None,  # no model-repository extension: its load/unload routes are refused by Routes
        http_port=0,  # unused: the caller passes listening sockets to run()
        timeout_keep_alive=5,
    )
    # Starlette runs the last-added middleware first.
    stack = [
        *outer,
        (BodyLimit, {"max_bytes": max_body_bytes}),
        (Routes, {"model_name": model.name, "version": version}),
    ]
    for middleware, kwargs in reversed([*stack, *inner]):
        model_server.app.add_middleware(middleware, **kwargs)
    for noisy in ("uvicorn.access", "kserve.trace"):  # a log line per request costs more than scoring
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return rest


def serve(
    version_dir: Path,
    listeners: list[socket.socket],
    *,
    public: socket.socket | None = None,
    handoff: Path | None = None,
    max_batch: int = 1024,
    max_body_bytes: int = 16 * 1024 * 1024,
    model_name: str = MODEL_NAME,
    request_log: RequestLog | None = None,
    feedback_token: str | None = None,
) -> None:
    """Load the version, then serve v1 and v2 on every listener until SIGTERM/SIGINT,
    which stops accepting, finishes requests in flight and exits. SIGUSR1 first hands
    new connections to a successor on the same socket (see ``drain``). With ``handoff``, the
    ``public`` listener (None for a candidate, until a deployer gives it one) is handed to
    successors there (see ``sockets``). With a ``request_log``, every prediction is logged
    and labels are taken at ``.../feedback`` from holders of ``feedback_token`` (none without one)."""
    model = MnistPredictor(model_name, version_dir, max_batch=max_batch, request_log=request_log)
    model.load()
    drain = Drain()
    rest = rest_server(
        model,
        model.version,
        max_body_bytes,
        outer=((drain.middleware, {}),),
        inner=((V2Infer, {"model": model, "max_body_bytes": max_body_bytes}),),
    )
    server: uvicorn.Server = rest._server  # KServe keeps its uvicorn.Server private; drain needs its listeners
    drain.install(server)
    if request_log is not None:
        feedback = FeedbackLog(request_log.directory)
        add_feedback_route(model_server.app, model_name, request_log, feedback, feedback_token)
        metrics.LOG_DROPPED.set_function(lambda: request_log.dropped)
        state = "taken with a bearer token" if feedback_token else f"refused: {FEEDBACK_TOKEN_ENV} is not set"
        log.info(f"feedback labels at /v1/models/{model_name}/feedback are {state}")
    addresses = ", ".join("http://{}:{}".format(*s.getsockname()[:2]) for s in listeners)
    log.info(f"serving {model_name} version {model.version} from {version_dir} on {addresses} (pid {os.getpid()})")

    async def main() -> None:
        if handoff is not None:
            loop = asyncio.get_running_loop()

            def serve_on(listener: socket.socket) -> None:  # called from the hand-off thread
                asyncio.run_coroutine_threadsafe(_accept_on(server, listener), loop).result(timeout=10)
                log.info("accepting on the public socket {}:{}".format(*listener.getsockname()[:2]))

            HandoffSocket(handoff, public, serve_on).start()
        await server.serve(sockets=listeners)

    rest.create_application()
    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(main())
    finally:
        if request_log is not None:
            request_log.close()


async def _accept_on(server: uvicorn.Server, listener: socket.socket) -> None:
    """Accept on one more listening socket in a running uvicorn server, as its startup does for
    the sockets it was given (uvicorn 0.54, pinned); drain and shutdown then close it too."""
    config = server.config

    def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=server.server_state, app_state=server.lifespan.state, _loop=_loop
        )

    accepting = await asyncio.get_running_loop().create_server(create_protocol, sock=listener, backlog=config.backlog)
    server.servers.append(accepting)
