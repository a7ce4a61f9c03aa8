"""A hello-world model on the same server stack as the endpoint (KServe REST server on
uvicorn, same middlewares), to see what the stack itself costs per request.

    python benchmarks/hello_server.py PORT
"""

from __future__ import annotations

import sys

from kserve import InferOutput, InferRequest, InferResponse, Model

from mnist_serving.server import rest_server
from mnist_serving.sockets import bind_listener


class Hello(Model):
    def load(self) -> bool:
        self.ready = True
        self.enable_latency_logging = False
        return True

    def predict(self, payload: dict | InferRequest, headers: dict | None = None) -> dict | InferResponse:
        if not isinstance(payload, InferRequest):
            return {"predictions": ["hello"]}
        output = InferOutput(name="greeting", shape=[1], datatype="INT64", data=[1])
        return InferResponse(response_id="", model_name=self.name, infer_outputs=[output])


def main() -> None:
    port = int(sys.argv[1])
    model = Hello("mnist")
    model.load()
    print(f"hello server on 127.0.0.1:{port}", flush=True)
    rest_server(model, "1", max_body_bytes=16 * 1024 * 1024).run(sockets=[bind_listener("127.0.0.1", port)])


if __name__ == "__main__":
    main()
