"""A hello-world model on the same server stack as the endpoint (uvicorn as
``mnist_serving.server.uvicorn_server`` runs it, the body limit and the route check), to see
what the stack itself costs per request: every documented POST answers a fixed JSON body.

    python benchmarks/hello_server.py PORT
"""

from __future__ import annotations

import sys

from mnist_ml.model_contract import MODEL_NAME
from mnist_serving.body_limit import BodyLimit, Receive, Scope, Send, read_body, reply
from mnist_serving.routes import Routes
from mnist_serving.server import run, uvicorn_server
from mnist_serving.sockets import bind_listener


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        await read_body(receive)
        return await reply(send, 200, b'{"outputs":[{"name":"greeting","shape":[1],"datatype":"INT64","data":[1]}]}')
    await reply(send, 200, b'{"ready":true}')


def main() -> None:
    port = int(sys.argv[1])
    app = BodyLimit(Routes(hello, model_name=MODEL_NAME, version="1"), max_bytes=16 * 1024 * 1024)
    print(f"hello server on 127.0.0.1:{port}", flush=True)
    server = uvicorn_server(app)
    run(server, [bind_listener("127.0.0.1", port)])


if __name__ == "__main__":
    main()
