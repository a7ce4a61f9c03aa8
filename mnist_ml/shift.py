"""Seeing a shift without labels: what the endpoint's outputs alone say about production.

Two signals, both calibrated at training time on held-out data and shipped in the model's
metrics (so in the registry manifest of every published version):

- Average thresholded confidence (ATC; Garg et al., 2022): on the validation split, pick the
  confidence threshold ``t`` such that the share of predictions with top probability >= ``t``
  equals the validation accuracy. In production the estimated accuracy is the share of
  predictions with confidence >= ``t``. On the validation split the estimate equals the
  accuracy by construction; under a shift it tracks real accuracy as long as the model's
  confidence degrades with its correctness (it does not see a shift the model is confidently
  wrong about).
- Two-sample Kolmogorov-Smirnov tests of the production confidence and concept scores against
  their training-time reference. The reference ships as a quantile sketch (``REFERENCE_POINTS``
  evenly spaced quantiles of the held-out values) plus the count it summarizes; the statistic
  is taken against the sketch (off by at most 1/``REFERENCE_POINTS`` from the full sample's)
  and the p-value from the asymptotic two-sample distribution with the real sample sizes.

Invariants: pure functions of numpy arrays and plain dicts (JSON-ready), no Dagster, no I/O.
With very large windows any small difference becomes "significant": read the p-value with the
statistic (the largest gap between the two CDFs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

REFERENCE_POINTS = 1000


def atc_threshold(confidence: np.ndarray, correct: np.ndarray) -> float:
    """The confidence ``t`` with share(confidence >= t) = accuracy on this held-out set."""
    confidence = np.asarray(confidence, float)
    if not len(confidence):
        raise ValueError("no held-out predictions to calibrate the ATC threshold on")
    k = int(round(float(np.mean(correct)) * len(confidence)))
    if k == 0:
        return float(np.nextafter(confidence.max(), np.inf))  # nothing right: nothing reaches t
    return float(np.sort(confidence)[::-1][k - 1])


def atc_estimate(confidence: np.ndarray, threshold: float) -> float | None:
    """Estimated accuracy: the share of predictions with confidence >= ``threshold``."""
    return float(np.mean(np.asarray(confidence) >= threshold)) if len(confidence) else None


def reference_sketch(values: np.ndarray) -> dict[str, Any]:
    """``REFERENCE_POINTS`` evenly spaced quantiles of ``values`` and their count, for KS tests."""
    probabilities = (np.arange(REFERENCE_POINTS) + 0.5) / REFERENCE_POINTS
    return {"quantiles": np.quantile(np.asarray(values, float), probabilities).tolist(), "count": int(len(values))}


@dataclass(frozen=True)
class KsResult:
    statistic: float
    p_value: float


def ks_test(sample: np.ndarray, reference: Mapping[str, Any]) -> KsResult | None:
    """Two-sample KS test of ``sample`` against a ``reference_sketch``; None for an empty sample."""
    n, m = len(sample), int(reference["count"])
    if not n:
        return None
    from scipy import stats  # here, not at the top: about 1 s that every process loading the code location paid

    statistic = float(stats.ks_2samp(sample, reference["quantiles"]).statistic)
    effective = n * m / (n + m)
    return KsResult(statistic, float(stats.kstwo.sf(statistic, max(1, round(effective)))))


@dataclass(frozen=True)
class Calibration:
    """What one model version learnt about its own outputs on held-out data."""

    atc_threshold: float
    reference_accuracy: float  # validation accuracy: the ATC estimate on unshifted data
    confidence: Mapping[str, Any]  # reference_sketch of held-out top probabilities
    concept_scores: Mapping[str, Any]  # reference_sketch of held-out concept scores

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Calibration | None:
        """From a registry manifest's training metrics; None for a version published before
        the calibration was recorded."""
        training = manifest.get("training", {})
        atc = training.get("classifier", {}).get("atc")
        scores = training.get("concept_model", {}).get("reference_scores")
        if atc is None or scores is None:
            return None
        return cls(atc["threshold"], atc["validation_accuracy"], atc["reference_confidence"], scores)


def classifier_calibration(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The classifier's ``atc`` metrics entry from its held-out probabilities and labels."""
    confidence = np.max(probabilities, axis=1)
    correct = np.argmax(probabilities, axis=1) == np.asarray(labels)
    return {
        "threshold": atc_threshold(confidence, correct),
        "validation_accuracy": float(np.mean(correct)),
        "validation_images": int(len(labels)),
        "how": "average thresholded confidence: share of held-out predictions with top probability "
        ">= threshold equals held-out accuracy",
        "reference_confidence": reference_sketch(confidence),
    }
