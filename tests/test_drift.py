"""Traffic summaries, drift statistics and the drift sensor's episode logic."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_ml.drift import DriftState, chi_square, drift_reasons, drift_step, psi, summarize

UNIFORM = [100] * 10


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
    assert drift_reasons(empty, 0.1, 0.2, min_images=1) == []
    ts = np.arange(100.0)
    ood = summarize(ts, np.zeros(100), np.ones(100), np.ones(100, bool), UNIFORM, (0, 100))
    assert drift_reasons(ood, 0.1, 99, min_images=200) == [], "below the minimum volume nothing is said"
    reasons = drift_reasons(ood, 0.1, 0.2, min_images=50)
    assert reasons[0].startswith("out-of-distribution rate 1.000") and reasons[1].startswith("predicted-class PSI")


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
