"""The label-free shift statistics of mnist_ml.shift on hand-made arrays: the ATC threshold
and estimate, the reference sketch, the KS test against it, and reading a manifest.

Not covered: a real model under a real shift (tests/test_label_free_shift.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mnist_ml.shift import (
    REFERENCE_POINTS,
    Calibration,
    atc_estimate,
    atc_threshold,
    classifier_calibration,
    ks_test,
    reference_sketch,
)


def test_atc_threshold_reproduces_held_out_accuracy():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4])
    correct = np.array([1, 1, 1, 0, 1, 1, 0, 1, 0, 0], bool)  # 6 of 10
    t = atc_threshold(confidence, correct)
    assert t == 0.6 and atc_estimate(confidence, t) == 0.6
    assert atc_estimate(np.array([]), t) is None
    assert atc_estimate(confidence, atc_threshold(confidence, np.zeros(10, bool))) == 0.0
    assert atc_estimate(confidence, atc_threshold(confidence, np.ones(10, bool))) == 1.0
    with pytest.raises(ValueError, match="no held-out predictions"):
        atc_threshold(np.array([]), np.array([], bool))


def test_calibration_from_probabilities_and_manifest():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(10) * 0.3, 2000)
    labels = np.where(rng.random(2000) < 0.7, probabilities.argmax(1), (probabilities.argmax(1) + 1) % 10)
    atc = classifier_calibration(probabilities, labels)
    assert atc["validation_accuracy"] == pytest.approx(np.mean(probabilities.argmax(1) == labels))
    assert atc_estimate(probabilities.max(1), atc["threshold"]) == pytest.approx(atc["validation_accuracy"])
    assert len(atc["reference_confidence"]["quantiles"]) == REFERENCE_POINTS
    manifest = {
        "training": {"classifier": {"atc": atc}, "concept_model": {"reference_scores": reference_sketch([1, 2])}}
    }
    calibration = Calibration.from_manifest(manifest)
    assert calibration.atc_threshold == atc["threshold"] and calibration.concept_scores["count"] == 2
    assert Calibration.from_manifest({"training": {"classifier": {}}}) is None, "older versions have none"


def test_ks_against_the_sketch_matches_the_full_sample():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=6000)
    sketch = reference_sketch(reference)
    same, moved = rng.normal(size=3000), rng.normal(0.2, 1, size=3000)
    for sample in (same, moved):
        full = stats.ks_2samp(sample, reference)
        ours = ks_test(sample, sketch)
        assert abs(ours.statistic - full.statistic) <= 2 / REFERENCE_POINTS
        assert ours.p_value == pytest.approx(full.pvalue, rel=0.5, abs=1e-3)
    assert ks_test(same, sketch).p_value > 0.01 and ks_test(moved, sketch).p_value < 1e-6
    assert ks_test(np.array([]), sketch) is None
