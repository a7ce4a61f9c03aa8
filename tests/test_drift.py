"""Traffic summaries, drift statistics, the warn/error levels of each drift measure and the
drift sensor's episode logic, on hand-made arrays (exact values).

Not covered: real logs and real models (tests/test_monitoring.py, tests/test_label_free_shift.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_ml.drift import DriftBounds, DriftState, chi_square, drift_reasons, drift_step, measures, psi, summarize
from mnist_ml.shift import Calibration, reference_sketch

UNIFORM = [100] * 10


def bounds(min_images: int, max_ood_rate: float = 0.1, max_psi: float = 0.2) -> DriftBounds:
    return DriftBounds(max_ood_rate / 2, max_ood_rate, max_psi / 2, max_psi, 2.0, 5.0, 0.01, 1e-4, min_images)


def test_psi_and_chi_square():
    assert psi(UNIFORM, UNIFORM) == pytest.approx(0.0)
    skewed = [910] + [10] * 9
    # (0.91 - 0.1) ln(9.1) + 9 (0.01 - 0.1) ln(0.1)
    assert psi(UNIFORM, skewed) == pytest.approx(0.81 * np.log(9.1) + 9 * 0.09 * np.log(10), rel=1e-6)
    assert chi_square(UNIFORM, UNIFORM) == 0
    assert chi_square(UNIFORM, skewed) == pytest.approx((910 - 100) ** 2 / 100 + 9 * 90**2 / 100)


def test_summary_of_a_window():
    ts = np.array([0, 10, 20, 30, 40, 50, 60, 70, 200.0])  # the last one is outside the window
    predicted = np.array([1, 1, 2, 3, 4, 5, 6, 7, 9])
    confidence = np.full(9, 0.9)
    is_ood = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1], bool)
    summary = summarize(ts, predicted, confidence, is_ood, UNIFORM, (0, 80), labels={0: 1, 1: 7, 8: 9}, buckets=2)
    assert summary.images == 8
    assert summary.ood_rate == 0.5
    assert summary.ood_trend == [(0.0, 4, 0.0), (40.0, 4, 1.0)]
    assert summary.ood_slope_per_hour == pytest.approx(1.0 / 40 * 3600)
    assert summary.class_counts == [0, 2, 1, 1, 1, 1, 1, 1, 0, 0]
    assert summary.labelled == 2 and summary.accuracy == 0.5  # index 8 is outside the window
    assert summary.mean_confidence == pytest.approx(0.9)


def test_empty_window_and_thresholds():
    empty = summarize(np.array([]), np.array([]), np.array([]), np.array([], bool), UNIFORM, (0, 10))
    assert empty.images == 0 and empty.accuracy is None and empty.psi == 0
    assert drift_reasons(empty, bounds(min_images=1)) == []
    ts = np.arange(100.0)
    ood = summarize(ts, np.zeros(100), np.ones(100), np.ones(100, bool), UNIFORM, (0, 100))
    assert drift_reasons(ood, bounds(min_images=200, max_psi=99)) == [], "below the minimum volume nothing is said"
    assert {m.level for m in measures(ood, bounds(min_images=200))} == {"unknown"}
    reasons = drift_reasons(ood, bounds(min_images=50))
    assert reasons[0] == "out-of-distribution rate 1 > 0.1 (by 0.9)" and reasons[1].startswith("predicted-class PSI")
    assert len(reasons) == 2, "no calibration: the accuracy estimate is unknown, never a reason"


def test_label_free_summary_levels_and_reasons():
    """A calibrated window: the ATC estimate, its drop against held-out, KS p-values per window and
    per bucket; warn and error levels from the bounds; only error-level retraining measures are reasons."""
    rng = np.random.default_rng(0)
    held_out = rng.uniform(0.5, 1.0, 5000)
    calibration = Calibration(0.6, 0.8, reference_sketch(held_out), reference_sketch(held_out))
    ts = np.arange(1000.0)
    confident = rng.uniform(0.5, 1.0, 1000)  # as held out: estimate about 0.8
    summary = summarize(
        ts,
        np.arange(1000) % 10,
        confident,
        np.zeros(1000, bool),
        UNIFORM,
        (0, 1000),
        buckets=4,
        concept_score=confident,
        calibration=calibration,
    )
    assert summary.estimated_accuracy == pytest.approx(np.mean(confident >= 0.6))
    assert abs(summary.estimated_accuracy_drop_points) < 5
    assert summary.confidence_ks.p_value > 0.01 and summary.concept_score_ks.p_value > 0.01
    assert [row[0] for row in summary.shift_trend] == [0.0, 250.0, 500.0, 750.0]
    assert all(row[1] is not None and row[2] > 1e-4 for row in summary.shift_trend)
    assert drift_reasons(summary, bounds(min_images=100)) == []

    unsure = rng.uniform(0.5, 0.7, 1000)  # estimate about 0.5: 30 points below held-out
    shifted = summarize(
        ts,
        np.arange(1000) % 10,
        unsure,
        np.zeros(1000, bool),
        UNIFORM,
        (0, 1000),
        concept_score=confident,
        calibration=calibration,
    )
    assert shifted.estimated_accuracy_drop_points == pytest.approx(100 * (0.8 - np.mean(unsure >= 0.6)))
    levels = {m.check: m.level for m in measures(shifted, bounds(min_images=100))}
    assert levels == {
        "ood_rate": "ok",
        "class_psi": "ok",
        "estimated_accuracy_drop": "error",
        "confidence_distribution": "error",
        "concept_score_distribution": "ok",
    }
    (reason,) = drift_reasons(shifted, bounds(min_images=100))  # the KS tests show, never retrain
    assert reason.startswith("estimated accuracy drop (points) ") and "> 5.0 (by " in reason
    mild = DriftBounds(0.05, 0.1, 0.1, 0.2, 2.0, 99.0, 0.01, 1e-300, 100)
    levels = {m.check: m.level for m in measures(shifted, mild)}
    assert levels["estimated_accuracy_drop"] == "warn" and levels["confidence_distribution"] == "warn"


def test_one_run_per_episode_with_a_cooldown():
    state = DriftState()
    state, action = drift_step(state, drifted=False, now=100, cooldown_s=600)
    assert action == "quiet"
    state, action = drift_step(state, drifted=True, now=1000, cooldown_s=600)
    assert action == "run" and state.episode == 1000 and state.last_triggered == 1000
    state, action = drift_step(state, drifted=True, now=1030, cooldown_s=600)
    assert action == "already-triggered"
    state, action = drift_step(state, drifted=False, now=1060, cooldown_s=600)
    assert action == "quiet" and state.episode is None
    state, action = drift_step(state, drifted=True, now=1090, cooldown_s=600)
    assert action == "cooldown" and state.episode == 1090, "a new episode inside the cooldown waits"
    state, action = drift_step(state, drifted=True, now=1700, cooldown_s=600)
    assert action == "run" and state.episode == 1090, "and runs once the cooldown is over"
