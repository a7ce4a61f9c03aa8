"""Production traffic from the request log, as the monitoring asset and the sensors see it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_ml.drift import TrafficSummary, summarize
from mnist_ml.shift import Calibration
from mnist_serving.request_log import LoggedPrediction, read_feedback, read_predictions


@dataclass(frozen=True)
class Traffic:
    predictions: list[LoggedPrediction]
    summary: TrafficSummary
    malformed_lines: int
    version: str | None  # the model version that served most of the window


def window_traffic(
    log_dir: Path,
    training_class_counts: Sequence[int],
    window_s: float,
    now: float,
    buckets: int = 12,
    calibration_of: Callable[[str], Calibration | None] = lambda version: None,
) -> Traffic:
    """Predictions logged in the last ``window_s`` seconds before ``now``, summarized, with
    feedback labels joined in for production accuracy. ``calibration_of(version)`` gives the
    label-free references of the version that served most of the window (None: no estimate)."""
    predictions, malformed = read_predictions(log_dir, since=now - window_s, until=now)
    feedback = read_feedback(log_dir)
    labels = {
        i: feedback[(p.request_id, p.index)] for i, p in enumerate(predictions) if (p.request_id, p.index) in feedback
    }
    served = Counter(p.version for p in predictions).most_common(1)
    version = served[0][0] if served else None
    summary = summarize(
        np.array([p.ts for p in predictions], float),
        np.array([p.predicted for p in predictions], int),
        np.array([p.confidence for p in predictions], float),
        np.array([p.is_ood for p in predictions], bool),
        training_class_counts,
        (now - window_s, now),
        labels=labels,
        buckets=buckets,
        concept_score=np.array([p.concept_score for p in predictions], float),
        calibration=calibration_of(version) if version is not None else None,
    )
    return Traffic(predictions, summary, malformed, version)


def relabelled_inputs(log_dir: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Production inputs with a ground-truth label from feedback, as training data:
    (uint8 images, labels, how many labels had no kept input and so can't be used)."""
    feedback = read_feedback(log_dir)
    if not feedback:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), 0
    kept = {(p.request_id, p.index): p.image for p in read_predictions(log_dir)[0] if p.image is not None}
    usable = [(kept[key], label) for key, label in feedback.items() if key in kept]
    images = np.stack([image for image, _ in usable]) if usable else np.zeros((0, 28, 28), np.uint8)
    return images.astype(np.uint8), np.array([label for _, label in usable], np.int64), len(feedback) - len(usable)
