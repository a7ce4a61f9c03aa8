"""What servers rely on in our SavedModels, without importing TensorFlow.

Classifier ``serving_default``: input ``imgs`` float32 [None, 28, 28] in [0, 1]; outputs
``class_ids`` and ``probabilities``. Concept model ``serving_default``: input ``imgs``;
output ``score`` (reconstruction MSE); its threshold sits in ``assets.extra/concept.json``.
A registry version holds both as ``classifier/`` and ``concept_model/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SIGNATURE = "serving_default"
INPUT_NAME = "imgs"
CONCEPT_SIDECAR = Path("assets.extra") / "concept.json"
CLASSIFIER = "classifier"
CONCEPT_MODEL = "concept_model"


def read_concept_calibration(path: Path) -> dict[str, Any]:
    """The threshold and calibration facts shipped with a concept model."""
    return json.loads((Path(path) / CONCEPT_SIDECAR).read_text())
