"""Prometheus metrics, exported on the server's /metrics.

The alert rules and the dashboard (deploy/prometheus/rules.yml, deploy/grafana/) read these
names and labels: rename one and those break (tests/test_prometheus_rules.py and
tests/test_prometheus_e2e.py say so). Every labelled series the rules divide by or take rates of
exists from the start at 0 (``OUTCOMES`` per protocol, the ten classes), so a first error or a
first image of a class is a rise Prometheus sees, not a new series it cannot rate.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

# mnist_requests_total{outcome}: how a prediction request ended, and so its HTTP status: ok (200),
# invalid (400: refused by validation, with a message), error (500: failed after validation).
# Not counted: what is refused before the model sees the request (404, 405, 413, 415, 503).
OUTCOMES = ("ok", "invalid", "error")
PROTOCOLS = ("v1", "v2")
NUM_CLASSES = 10

REQUESTS = Counter("mnist_requests_total", "Prediction requests", ["protocol", "outcome"])
IMAGES = Counter("mnist_images_total", "Images scored")
OOD_FLAGS = Counter("mnist_ood_flags_total", "Images flagged out of distribution by the concept model")
PREDICTED_CLASS = Counter("mnist_predicted_class_total", "Images scored, by predicted class (0-9)", ["class"])
LATENCY = Histogram(
    "mnist_request_latency_seconds",
    "Time to validate, score and encode one prediction request",
    ["protocol"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
VERSION = Gauge("mnist_model_version_info", "Model version being served (value is always 1)", ["version"])
FEEDBACK = Counter(
    "mnist_feedback_total",
    "Feedback requests by outcome: accepted, duplicate, conflict (a second, different label), rejected, "
    "unauthorized, disabled",
    ["outcome"],
)
LOG_DROPPED = Gauge("mnist_request_log_dropped", "Predictions not logged because the log queue was full")

# The labelled series, created once: a labels() lookup per request costs more than the count.
OUTCOME = {(p, o): REQUESTS.labels(p, o) for p in PROTOCOLS for o in OUTCOMES}
PROTOCOL_LATENCY = {p: LATENCY.labels(p) for p in PROTOCOLS}
CLASS_COUNT = [PREDICTED_CLASS.labels(str(digit)) for digit in range(NUM_CLASSES)]


def count_classes(class_ids: np.ndarray) -> None:
    """Add one prediction's class ids (integers in 0..9) to mnist_predicted_class_total: one
    increment per image for a few images (most requests hold one), per class for a batch."""
    if len(class_ids) <= NUM_CLASSES:
        for digit in class_ids.tolist():
            CLASS_COUNT[digit].inc()
        return
    counts = np.bincount(class_ids, minlength=NUM_CLASSES)
    for digit in np.flatnonzero(counts).tolist():
        CLASS_COUNT[digit].inc(int(counts[digit]))
