"""Prometheus metrics, exported on the server's /metrics next to KServe's own."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("mnist_requests_total", "Prediction requests", ["protocol", "outcome"])
IMAGES = Counter("mnist_images_total", "Images scored")
OOD_FLAGS = Counter("mnist_ood_flags_total", "Images flagged out of distribution by the concept model")
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
