"""Run the model server for one model version on given listening sockets.

One uvicorn server, one plain ASGI stack, outermost first: ``Drain`` (closes connections
while handing over), ``BodyLimit`` (413 before parsing), ``Routes`` (the documented routes
only), ``V2Infer`` (v2 infer, JSON and binary) and ``Endpoints`` (the rest). No web framework
and no TensorFlow: the model runs in ONNX Runtime (``predictor``). Cold start is the imports,
the ONNX session and one first prediction.

Once loaded, everything allocated so far (modules, the session, the app) is moved out of the
garbage collector's reach (``gc.freeze``): a full collection then walks only what serving
allocates, so its pause no longer grows with the imports (about 19 ms before, 5 ms after, in
process under load)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path

import uvicorn

from mnist_ml.model_contract import MODEL_NAME
from mnist_serving import metrics
from mnist_serving.app import Endpoints
from mnist_serving.body_limit import BodyLimit, Receive, Scope, Send
from mnist_serving.drain import Drain
from mnist_serving.feedback import Feedback
from mnist_serving.options import FEEDBACK_TOKEN_ENV
from mnist_serving.predictor import MnistPredictor
from mnist_serving.request_log import FeedbackLog, RequestLog
from mnist_serving.routes import Routes
from mnist_serving.sockets import HandoffSocket
from mnist_serving.v2_infer import V2Infer

log = logging.getLogger("mnist_serving")
GRACEFUL_SHUTDOWN_S = 30  # requests in flight at SIGTERM get this long to finish


def uvicorn_server(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> uvicorn.Server:
    """The HTTP server for an ASGI app, as the endpoint runs it (the benchmarks' servers too)."""
    config = uvicorn.Config(
        app,
        log_config=None,  # the process's logging, as configured by __main__
        access_log=False,  # a log line per request costs more than scoring
        lifespan="off",
        ws="none",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return uvicorn.Server(config)


def run(server: uvicorn.Server, listeners: list[socket.socket], main: Coroutine | None = None) -> None:
    """Run ``main`` (default: the server on ``listeners``) in the event loop uvicorn chooses (uvloop)."""
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(main or server.serve(sockets=listeners))


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
    feedback = None
    if request_log is not None:
        feedback = Feedback(request_log, FeedbackLog(request_log.directory), feedback_token)
        metrics.LOG_DROPPED.set_function(lambda: request_log.dropped)
        state = "taken with a bearer token" if feedback_token else f"refused: {FEEDBACK_TOKEN_ENV} is not set"
        log.info(f"feedback labels at /v1/models/{model_name}/feedback are {state}")
    drain = Drain()
    app = Endpoints(model, feedback)
    app = V2Infer(app, model=model, max_body_bytes=max_body_bytes)
    app = Routes(app, model_name=model_name, version=model.version)
    app = BodyLimit(app, max_bytes=max_body_bytes)
    server = uvicorn_server(drain.middleware(app))
    drain.install(server)
    addresses = ", ".join("http://{}:{}".format(*s.getsockname()[:2]) for s in listeners)
    log.info(f"serving {model_name} version {model.version} from {version_dir} on {addresses} (pid {os.getpid()})")
    gc.freeze()  # last: what serving allocates from here on is what the collector walks

    async def main() -> None:
        if handoff is not None:
            loop = asyncio.get_running_loop()

            def serve_on(listener: socket.socket) -> None:  # called from the hand-off thread
                asyncio.run_coroutine_threadsafe(_accept_on(server, listener), loop).result(timeout=10)
                log.info("accepting on the public socket {}:{}".format(*listener.getsockname()[:2]))

            HandoffSocket(handoff, public, serve_on).start()
        await server.serve(sockets=listeners)

    try:
        run(server, listeners, main())
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
