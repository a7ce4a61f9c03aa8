"""The floor: the same weights (a version's ONNX graph, both models in one ONNX Runtime call)
behind the thinnest server that answers the same requests on the same HTTP server (uvicorn, as
``mnist_serving.server.uvicorn_server`` runs it): no validation, metrics, request log, routes or
body limit. ``benchmarks/serving.py`` measures the endpoint against it in the same run.

Answers ``POST /v2/models/mnist/infer`` (JSON ``data`` of UINT8 pixels, or the binary tensor
extension's UINT8 bytes; all four outputs as JSON), ``POST /v1/models/mnist:predict``
(``instances`` of UINT8 pixels) and ``GET /v2/health/ready``.

    python benchmarks/thin_server.py PORT MODEL_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import orjson

from mnist_ml.model_contract import CONCEPT_MODEL, INPUT_NAME, read_concept_calibration
from mnist_serving.body_limit import Receive, Scope, Send, read_body, reply
from mnist_serving.predictor import onnx_session
from mnist_serving.server import run, uvicorn_server
from mnist_serving.sockets import bind_listener


class Thin:
    def __init__(self, model_dir: Path) -> None:
        manifest = json.loads((model_dir / "manifest.json").read_text())
        self.session = onnx_session(model_dir, manifest)  # the endpoint's session, its options too
        self.names = [output.name for output in self.session.get_outputs()]
        self.threshold = read_concept_calibration(model_dir / CONCEPT_MODEL)["threshold"]

    def score(self, pixels: object) -> dict[str, np.ndarray]:
        images = np.asarray(pixels, np.float32).reshape(-1, 28, 28) / np.float32(255)
        outputs = dict(zip(self.names, self.session.run(self.names, {INPUT_NAME: images}), strict=True))
        return {**outputs, "is_ood": outputs["concept_score"] > self.threshold}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            return await reply(send, 200, b'{"ready":true}')
        body = await read_body(receive) or b"{}"
        header_length = dict(scope["headers"]).get(b"inference-header-content-length")
        if header_length:  # v2 binary: the JSON header, then the UINT8 pixels
            pixels = np.frombuffer(body[int(header_length) :], np.uint8)
        else:
            request = orjson.loads(body)
            pixels = request["instances"] if scope["path"].startswith("/v1/") else request["inputs"][0]["data"]
        if scope["path"].startswith("/v1/"):
            out = self.score(pixels)
            columns = zip(out["class_ids"], out["probabilities"], out["concept_score"], out["is_ood"], strict=True)
            body = {
                "predictions": [
                    {"class_id": int(c), "probabilities": p.tolist(), "concept_score": float(s), "is_ood": bool(o)}
                    for c, p, s, o in columns
                ]
            }
        else:
            out = self.score(pixels)
            body = {
                "outputs": [
                    {"name": name, "shape": list(value.shape), "data": value.ravel()} for name, value in out.items()
                ]
            }
        await reply(send, 200, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def main() -> None:
    port, model_dir = int(sys.argv[1]), Path(sys.argv[2])
    server = uvicorn_server(Thin(model_dir))
    print(f"thin server on 127.0.0.1:{port}", flush=True)
    run(server, [bind_listener("127.0.0.1", port)])


if __name__ == "__main__":
    main()
