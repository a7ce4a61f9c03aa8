"""Summaries of production traffic: volume, out-of-distribution rate and trend, drift of
the predicted classes against training, confidence and (where labelled) accuracy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

# PSI rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
PSI_FLOOR = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two count (or frequency) vectors."""
    e = np.maximum(np.asarray(expected, float) / max(np.sum(expected), 1e-12), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, float) / max(np.sum(actual), 1e-12), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def chi_square(expected: np.ndarray, actual: np.ndarray) -> float:
    """Pearson's statistic of ``actual`` counts against the ``expected`` distribution."""
    total = float(np.sum(actual))
    e = np.asarray(expected, float) / np.sum(expected) * total
    mask = e > 0
    return float(np.sum((np.asarray(actual, float)[mask] - e[mask]) ** 2 / e[mask]))


@dataclass(frozen=True)
class TrafficSummary:
    start: float
    end: float
    images: int
    ood_rate: float
    ood_trend: list[tuple[float, int, float]]  # (bucket start, images, OOD rate)
    ood_slope_per_hour: float
    class_counts: list[int]
    psi: float
    chi_square: float
    mean_confidence: float
    labelled: int
    accuracy: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(
    ts: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    is_ood: np.ndarray,
    training_class_counts: Sequence[int],
    window: tuple[float, float],
    labels: Mapping[int, int] | None = None,
    buckets: int = 12,
) -> TrafficSummary:
    """Summarize predictions with timestamps in ``window`` (start, end). ``labels`` maps a
    prediction's position in these arrays to its ground-truth digit."""
    start, end = window
    inside = (ts >= start) & (ts < end)
    idx = np.flatnonzero(inside)
    counts = np.bincount(predicted[idx].astype(int), minlength=10)[:10]
    edges = np.linspace(start, end, buckets + 1)
    which = np.clip(np.searchsorted(edges, ts[idx], side="right") - 1, 0, buckets - 1)
    trend = []
    for b in range(buckets):
        in_bucket = idx[which == b]
        trend.append(
            (float(edges[b]), int(len(in_bucket)), float(np.mean(is_ood[in_bucket])) if len(in_bucket) else 0.0)
        )
    filled = [(t, rate) for t, n, rate in trend if n]
    slope = float(np.polyfit([t for t, _ in filled], [r for _, r in filled], 1)[0] * 3600) if len(filled) > 1 else 0.0
    labelled = [i for i in idx if labels and i in labels]
    accuracy = float(np.mean([predicted[i] == labels[i] for i in labelled])) if labelled else None
    return TrafficSummary(
        start=start,
        end=end,
        images=int(len(idx)),
        ood_rate=float(np.mean(is_ood[idx])) if len(idx) else 0.0,
        ood_trend=trend,
        ood_slope_per_hour=slope,
        class_counts=counts.tolist(),
        psi=psi(np.asarray(training_class_counts), counts) if len(idx) else 0.0,
        chi_square=chi_square(np.asarray(training_class_counts), counts) if len(idx) else 0.0,
        mean_confidence=float(np.mean(confidence[idx])) if len(idx) else 0.0,
        labelled=len(labelled),
        accuracy=accuracy,
    )


def drift_reasons(summary: TrafficSummary, max_ood_rate: float, max_psi: float, min_images: int) -> list[str]:
    """Why this window counts as drifted (empty if it doesn't, or if it is too small to say)."""
    if summary.images < min_images:
        return []
    reasons = []
    if summary.ood_rate > max_ood_rate:
        reasons.append(f"out-of-distribution rate {summary.ood_rate:.3f} > {max_ood_rate}")
    if summary.psi > max_psi:
        reasons.append(f"predicted-class PSI {summary.psi:.3f} > {max_psi}")
    return reasons


@dataclass(frozen=True)
class DriftState:
    """What the drift sensor remembers between ticks (stored as its cursor)."""

    episode: float | None = None  # when the current drift episode began
    triggered: bool = False  # whether this episode already requested a run
    last_triggered: float = 0.0


def drift_step(state: DriftState, drifted: bool, now: float, cooldown_s: float) -> tuple[DriftState, str]:
    """Advance the state by one tick. Returns the new state and what to do: "run" (request
    one retraining run for this episode), "cooldown", "already-triggered" or "quiet"."""
    if not drifted:
        return DriftState(last_triggered=state.last_triggered), "quiet"
    episode = state.episode if state.episode is not None else now
    if state.triggered:
        return state, "already-triggered"
    if now - state.last_triggered < cooldown_s:
        return DriftState(episode, False, state.last_triggered), "cooldown"
    return DriftState(episode, True, now), "run"
