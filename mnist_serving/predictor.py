"""The model server's model: one registry version of the classifier and the concept model.

Both models run as the one ONNX graph the version was published with (``manifest.json``'s
``onnx`` entry, checked at publish for parity with the SavedModels, see ``mnist_ml.onnx_export``),
in one ONNX Runtime call, shared by the requests that arrive together (``batching``): no
TensorFlow in the serving process. A version published without that graph cannot be served
(``load`` says so).

Every prediction returns the class id, the class probabilities, the concept score and
the out-of-distribution flag (score above the threshold shipped with the concept model).
The model is ready (``ready``, what the readiness routes report) only once it has loaded and
scored a first image. ``app`` routes v1 ``:predict`` here; v2 ``/infer`` requests are decoded
and encoded by ``v2_infer``, which calls ``infer`` too."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from mnist_ml.model_contract import (
    CONCEPT_MODEL,
    INPUT_NAME,
    OUTPUT_SHAPES,
    OUTPUT_TYPES,
    REQUEST_ID_HEADER,
    TEST_TRAFFIC,
    TRAFFIC_HEADER,
    read_concept_calibration,
)
from mnist_serving import metrics
from mnist_serving.batching import Batcher
from mnist_serving.request_log import RequestLog
from mnist_serving.validation import InvalidImages, to_model_input

# Images per ONNX Runtime call: a request with more is scored in several calls. Bounds the
# activations' memory: under 8 concurrent 1,024-image requests the CNN's server peaked at 296 MiB
# RSS in calls of 256 and 216 MiB in calls of 64 (benchmarks/serving_memory.py), and a call of 64
# costs per image what a larger one does (63 against 66-69 us for the CNN, 11.2 against 10.6-11.7 us
# for the dense network).
CALL_IMAGES = 64


# ONNX Runtime threads for a call of CALL_IMAGES images or more (requests of many images): the
# CNN's convolutions then use a second core, as TensorFlow did (in process 1.4-2.2x faster per
# call; side by side with wrk, 1,024-image batches went from 0.84x to 1.29x the TensorFlow server's
# images/s). Smaller calls, which single-image traffic makes, run on one thread: there a second
# thread only competes with the event loop (and made the dense network's calls slower).
BATCH_THREADS = 2


def onnx_session(version_dir: Path, manifest: Mapping[str, Any], threads: int = 1) -> onnxruntime.InferenceSession:
    """The version's ONNX graph in an ONNX Runtime session with ``threads`` threads per call.
    Threads do not spin while waiting for work (they would take the CPU from the event loop)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initializers are not ours to act on
    path = Path(version_dir) / manifest["onnx"]["file"]
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _starts(images: np.ndarray) -> range:
    """Where each model call's images start: one call per ``CALL_IMAGES`` (at least one call)."""
    return range(0, max(len(images), 1), CALL_IMAGES)


class Refused(ValueError):
    """A request refused as invalid and already counted: a 400 with this message."""


class MnistPredictor:
    """Load with ``load()``; ``predict`` answers v1, ``infer`` any protocol."""

    def __init__(
        self, name: str, version_dir: Path, max_batch: int = 1024, request_log: RequestLog | None = None
    ) -> None:
        self.name = name
        self.version_dir = Path(version_dir)
        self.max_batch = max_batch
        self.request_log = request_log
        self.ready = False
        self.version = "unknown"
        self.threshold = float("nan")
        self.batcher = Batcher(self.score)  # concurrent requests share a model call

    def load(self) -> bool:
        manifest = json.loads((self.version_dir / "manifest.json").read_text())
        self.version = str(manifest["version"])
        if "onnx" not in manifest:
            raise ValueError(
                f"version {self.version} at {self.version_dir} has no ONNX graph (published before the endpoint "
                "served ONNX): publish the models again"
            )
        self.threshold = float(read_concept_calibration(self.version_dir / CONCEPT_MODEL)["threshold"])
        self._session = onnx_session(self.version_dir, manifest)
        self._batch_session = onnx_session(self.version_dir, manifest, BATCH_THREADS)
        self._outputs = [output.name for output in self._session.get_outputs()]
        self.score(np.zeros((1, 28, 28), np.float32), count=False)  # ready means it answers: score once first
        metrics.VERSION.labels(version=self.version).set(1)
        self.ready = True
        return self.ready

    def score(self, images: np.ndarray, count: bool = True) -> dict[str, np.ndarray]:
        """Outputs for float32 [N, 28, 28] images in [0, 1], counted in the metrics unless ``count`` is False."""
        session = self._batch_session if len(images) >= CALL_IMAGES else self._session
        calls = [session.run(self._outputs, {INPUT_NAME: images[at : at + CALL_IMAGES]}) for at in _starts(images)]
        columns = calls[0] if len(calls) == 1 else [np.concatenate(parts) for parts in zip(*calls, strict=True)]
        outputs = dict(zip(self._outputs, columns, strict=True))
        class_ids, probabilities, concept = outputs["class_ids"], outputs["probabilities"], outputs["concept_score"]
        is_ood = concept > self.threshold
        if not count:
            return {"class_ids": class_ids, "probabilities": probabilities, "concept_score": concept, "is_ood": is_ood}
        metrics.IMAGES.inc(len(images))
        metrics.OOD_FLAGS.inc(int(np.count_nonzero(is_ood)))
        metrics.count_classes(class_ids)
        return {"class_ids": class_ids, "probabilities": probabilities, "concept_score": concept, "is_ood": is_ood}

    async def infer(
        self,
        protocol: str,
        headers: Mapping[str, str] | None,
        images: Callable[[], Any],
        respond: Callable[[dict[str, np.ndarray], str], Any],
        request_id: str | None = None,
    ) -> Any:
        """Validate, score, log and respond, counting and timing the request. ``images``
        extracts the raw tensor (raising InvalidImages); ``respond`` encodes the protocol's
        answer from the outputs and the request id (``request_id``, else the client's
        x-request-id, else a new one)."""
        start = time.perf_counter()
        headers = headers or {}
        try:
            batch = to_model_input(images(), self.max_batch)
            result = await self.batcher.score(batch)
            request_id = request_id or headers.get(REQUEST_ID_HEADER) or os.urandom(16).hex()
            if self.request_log is not None and headers.get(TRAFFIC_HEADER) != TEST_TRAFFIC:
                self.request_log.record(
                    request_id,
                    self.version,
                    batch,
                    result["class_ids"],
                    result["probabilities"],
                    result["concept_score"],
                    result["is_ood"],
                )
            response = respond(result, request_id)
        except InvalidImages as exc:
            raise self.refuse(protocol, str(exc)) from None
        except Exception:
            metrics.OUTCOME[protocol, "error"].inc()  # the server answers 500
            raise
        metrics.OUTCOME[protocol, "ok"].inc()
        metrics.PROTOCOL_LATENCY[protocol].observe(time.perf_counter() - start)
        return response

    def refuse(self, protocol: str, message: str) -> Refused:
        """Count a request refused as invalid; returns the error to raise (a 400 with ``message``)."""
        metrics.OUTCOME[protocol, "invalid"].inc()
        return Refused(message)

    async def predict(self, payload: object, headers: Mapping[str, str] | None = None) -> dict:
        return await self.infer("v1", headers, lambda: v1_instances(payload), self._v1_response)

    def _v1_response(self, result: dict[str, np.ndarray], request_id: str) -> dict:
        predictions = [
            {"class_id": int(c), "probabilities": p.tolist(), "concept_score": float(s), "is_ood": bool(o)}
            for c, p, s, o in zip(*result.values(), strict=True)
        ]
        return {"predictions": predictions, "model_version": self.version, "request_id": request_id}

    def metadata(self) -> dict:
        """The v2 model metadata: name, the served version, the input and the outputs."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 28, 28]}],
            "outputs": [{"name": n, "datatype": t, "shape": OUTPUT_SHAPES[n]} for n, t in OUTPUT_TYPES.items()],
        }


def v1_instances(payload: object) -> Any:
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidImages('v1 requests need a JSON object with "instances"')
    return payload["instances"]
