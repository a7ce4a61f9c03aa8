"""The KServe custom predictor: one registry version of the classifier and the concept model.

Every prediction returns the class id, the class probabilities, the concept score and
the out-of-distribution flag (score above the threshold shipped with the concept model).
The model is ready (``ready``, what the readiness routes report) only once it has loaded and
scored a first image. KServe routes v1 ``:predict`` here; v2 ``/infer`` requests are decoded
and encoded by ``v2_infer``, which calls ``infer`` too."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from kserve import Model
from kserve.errors import InvalidInput

from mnist_ml.model_contract import (
    CLASSIFIER,
    CONCEPT_MODEL,
    INPUT_NAME,
    OUTPUT_SHAPES,
    OUTPUT_TYPES,
    REQUEST_ID_HEADER,
    SIGNATURE,
    TEST_TRAFFIC,
    TRAFFIC_HEADER,
    read_concept_calibration,
)
from mnist_serving import metrics
from mnist_serving.request_log import RequestLog
from mnist_serving.validation import InvalidImages, to_model_input


class MnistPredictor(Model):
    """Load with ``load()``; KServe routes v1 ``:predict`` to ``predict``."""

    def __init__(
        self, name: str, version_dir: Path, max_batch: int = 1024, request_log: RequestLog | None = None
    ) -> None:
        super().__init__(name)
        self.version_dir = Path(version_dir)
        self.max_batch = max_batch
        self.request_log = request_log
        self.enable_latency_logging = False  # one log line per request would cost more than scoring
        self.version = "unknown"
        self.threshold = float("nan")

    def load(self) -> bool:
        manifest = json.loads((self.version_dir / "manifest.json").read_text())
        self.version = str(manifest["version"])
        self.threshold = float(read_concept_calibration(self.version_dir / CONCEPT_MODEL)["threshold"])
        # Keep the loaded objects: their signatures only reference the variables they own.
        self._saved = [tf.saved_model.load(str(self.version_dir / part)) for part in (CLASSIFIER, CONCEPT_MODEL)]
        classify, score = (saved.signatures[SIGNATURE] for saved in self._saved)

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)])
        def both(imgs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            classified = classify(**{INPUT_NAME: imgs})
            return classified["class_ids"], classified["probabilities"], score(**{INPUT_NAME: imgs})["score"]

        # One graph call per request; the concrete function skips tf.function's dispatch.
        self._both = both.get_concrete_function()
        self._both(tf.zeros([1, 28, 28]))  # ready means it answers: score once before saying so
        metrics.VERSION.labels(version=self.version).set(1)
        self.ready = True
        return self.ready

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for float32 [N, 28, 28] images in [0, 1]."""
        class_ids, probabilities, concept = (t.numpy() for t in self._both(tf.constant(images)))
        is_ood = concept > self.threshold
        metrics.IMAGES.inc(len(images))
        metrics.OOD_FLAGS.inc(int(is_ood.sum()))
        metrics.count_classes(class_ids)
        return {"class_ids": class_ids, "probabilities": probabilities, "concept_score": concept, "is_ood": is_ood}

    def infer(
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
            result = self.score(batch)
            request_id = request_id or headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
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
            metrics.REQUESTS.labels(protocol, "error").inc()  # the server answers 500
            raise
        metrics.REQUESTS.labels(protocol, "ok").inc()
        metrics.LATENCY.labels(protocol).observe(time.perf_counter() - start)
        return response

    def refuse(self, protocol: str, message: str) -> InvalidInput:
        """Count a request refused as invalid; returns the error to raise (a 400 with ``message``)."""
        metrics.REQUESTS.labels(protocol, "invalid").inc()
        return InvalidInput(message)

    def predict(self, payload: object, headers: dict[str, str] | None = None) -> dict:
        return self.infer("v1", headers, lambda: v1_instances(payload), self._v1_response)

    def _v1_response(self, result: dict[str, np.ndarray], request_id: str) -> dict:
        predictions = [
            {"class_id": int(c), "probabilities": p.tolist(), "concept_score": float(s), "is_ood": bool(o)}
            for c, p, s, o in zip(*result.values(), strict=True)
        ]
        return {"predictions": predictions, "model_version": self.version, "request_id": request_id}

    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 28, 28]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": n, "datatype": t, "shape": OUTPUT_SHAPES[n]} for n, t in OUTPUT_TYPES.items()]


def v1_instances(payload: object) -> Any:
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidImages('v1 requests need a JSON object with "instances"')
    return payload["instances"]
