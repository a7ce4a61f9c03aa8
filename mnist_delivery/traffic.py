"""Production traffic from the request log, as the monitoring asset and the sensors see it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_ml.drift import TrafficSummary, summarize
from mnist_ml.shift import Calibration
from mnist_serving.request_log import PredictionColumns, read_columns, read_feedback


@dataclass(frozen=True)
class Traffic:
    predictions: PredictionColumns
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
    predictions, malformed = read_columns(log_dir, since=now - window_s, until=now)
    served = Counter(predictions.version.tolist()).most_common(1)
    version = served[0][0] if served else None
    summary = summarize(
        predictions.ts,
        predictions.predicted,
        predictions.confidence,
        predictions.is_ood,
        training_class_counts,
        (now - window_s, now),
        labels=feedback_labels(predictions, read_feedback(log_dir)),
        buckets=buckets,
        concept_score=predictions.concept_score,
        calibration=calibration_of(version) if version is not None else None,
    )
    return Traffic(predictions, summary, malformed, version)


def feedback_labels(predictions: PredictionColumns, feedback: dict[tuple[str, int], int]) -> dict[int, int]:
    """row -> ground-truth label, for the rows of ``predictions`` that feedback labelled."""
    if not feedback:
        return {}
    labelled_requests = {request_id for request_id, _ in feedback}
    ids = predictions.request_id.tolist()
    candidates = [row for row, request_id in enumerate(ids) if request_id in labelled_requests]
    keys = {row: (ids[row], int(predictions.index[row])) for row in candidates}
    return {row: feedback[key] for row, key in keys.items() if key in feedback}


def most_out_of_distribution(predictions: PredictionColumns, count: int) -> np.ndarray:
    """The rows of up to ``count`` kept inputs with the highest concept scores, highest first
    (equal scores: oldest first)."""
    kept = predictions.kept
    return kept[np.argsort(-predictions.concept_score[kept], kind="stable")[:count]]


def relabelled_inputs(log_dir: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Production inputs with a ground-truth label from feedback, as training data:
    (uint8 images, labels, how many labels had no kept input and so can't be used)."""
    feedback = read_feedback(log_dir)
    if not feedback:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), 0
    predictions, _ = read_columns(log_dir)
    kept = predictions.kept.tolist()
    # The newest of a prediction's rows stands if it was logged twice (rows are oldest first).
    keys = zip(predictions.request_id[kept].tolist(), predictions.index[kept].tolist(), strict=True)
    row_of = dict(zip(keys, kept, strict=True))
    usable = [(row_of[key], label) for key, label in feedback.items() if key in row_of]
    images = predictions.images(np.array([row for row, _ in usable], np.int64))
    return images, np.array([label for _, label in usable], np.int64), len(feedback) - len(usable)
