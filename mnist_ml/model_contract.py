"""The names both sides of the model spell out, in one place: what servers rely on in our
SavedModels, and what clients rely on in the endpoint. No TensorFlow, no HTTP library, so
the trainer, the server and the delivery side all import it.

SavedModels: classifier ``serving_default``: input ``imgs`` float32 [None, 28, 28] in
[0, 1]; outputs ``class_ids`` and ``probabilities``. Concept model ``serving_default``:
input ``imgs``; output ``score`` (reconstruction MSE); its threshold sits in
``assets.extra/concept.json``. A registry version holds both as ``classifier/`` and
``concept_model/``.

Endpoint: both models served as one model named ``mnist`` (``/v1/models/mnist:predict``,
``/v2/models/mnist/infer``), one input tensor ``imgs``, outputs ``class_ids``,
``probabilities``, ``concept_score`` and ``is_ood``. A request with the header
``x-mnist-traffic: test`` is served but kept out of the production request log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SIGNATURE = "serving_default"
INPUT_NAME = "imgs"
CLASSIFIER_OUTPUTS = ("class_ids", "probabilities")
CONCEPT_OUTPUTS = ("score",)
CONCEPT_SIDECAR = Path("assets.extra") / "concept.json"
CLASSIFIER = "classifier"
CONCEPT_MODEL = "concept_model"

MODEL_NAME = "mnist"  # the served model's name in the v1/v2 routes
OUTPUT_TYPES = {"class_ids": "INT64", "probabilities": "FP32", "concept_score": "FP32", "is_ood": "BOOL"}
OUTPUT_SHAPES = {"class_ids": [-1], "probabilities": [-1, 10], "concept_score": [-1], "is_ood": [-1]}
REQUEST_ID_HEADER = "x-request-id"  # the client's id for a request, echoed and logged
TRAFFIC_HEADER = "x-mnist-traffic"
TEST_TRAFFIC = "test"  # TRAFFIC_HEADER's value for deployment tests and benchmarks: served, not logged


def read_concept_calibration(path: Path) -> dict[str, Any]:
    """The threshold and calibration facts shipped with a concept model."""
    return json.loads((Path(path) / CONCEPT_SIDECAR).read_text())
