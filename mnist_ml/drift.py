"""Summaries of production traffic: volume, out-of-distribution rate and trend, drift of
the predicted classes against training, confidence, (where labelled) accuracy and the
label-free estimates of ``mnist_ml.shift``; the drift measures with their warn and error
bounds; and the drift sensor's episode logic.

Invariants: no Dagster, no I/O; a window with fewer than ``min_images`` images is never
called drifted (its measures are "unknown")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mnist_ml.shift import Calibration, KsResult, atc_estimate, ks_test

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
    # Label-free (mnist_ml.shift), None without a calibrated model or traffic:
    estimated_accuracy: float | None = None  # ATC
    reference_accuracy: float | None = None  # the same estimate on held-out data
    confidence_ks: KsResult | None = None
    concept_score_ks: KsResult | None = None
    # (bucket start, estimated accuracy, confidence KS p-value, concept-score KS p-value)
    shift_trend: list[tuple[float, float | None, float | None, float | None]] = field(default_factory=list)

    @property
    def estimated_accuracy_drop_points(self) -> float | None:
        if self.estimated_accuracy is None or self.reference_accuracy is None:
            return None
        return 100 * (self.reference_accuracy - self.estimated_accuracy)

    def as_dict(self) -> dict:
        return {**asdict(self), "estimated_accuracy_drop_points": self.estimated_accuracy_drop_points}


def summarize(
    ts: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    is_ood: np.ndarray,
    training_class_counts: Sequence[int],
    window: tuple[float, float],
    labels: Mapping[int, int] | None = None,
    buckets: int = 12,
    concept_score: np.ndarray | None = None,
    calibration: Calibration | None = None,
) -> TrafficSummary:
    """Summarize predictions with timestamps in ``window`` (start, end). ``labels`` maps a
    prediction's position in these arrays to its ground-truth digit. With the serving
    version's ``calibration`` (and the concept scores), the label-free estimates too."""
    start, end = window
    idx = np.flatnonzero((ts >= start) & (ts < end))
    counts = np.bincount(predicted[idx].astype(int), minlength=10)[:10]
    edges = np.linspace(start, end, buckets + 1)
    which = np.clip(np.searchsorted(edges, ts[idx], side="right") - 1, 0, buckets - 1)
    in_buckets = [idx[which == b] for b in range(buckets)]
    trend = [
        (float(edges[b]), int(len(rows)), float(np.mean(is_ood[rows])) if len(rows) else 0.0)
        for b, rows in enumerate(in_buckets)
    ]
    filled = [(t, rate) for t, n, rate in trend if n]
    slope = float(np.polyfit([t for t, _ in filled], [r for _, r in filled], 1)[0] * 3600) if len(filled) > 1 else 0.0
    labelled = [i for i in labels if start <= ts[i] < end] if labels else []
    accuracy = float(np.mean([predicted[i] == labels[i] for i in labelled])) if labelled else None
    label_free = {}
    if calibration is not None and concept_score is not None:
        label_free = {
            "estimated_accuracy": atc_estimate(confidence[idx], calibration.atc_threshold),
            "reference_accuracy": calibration.reference_accuracy,
            "confidence_ks": ks_test(confidence[idx], calibration.confidence),
            "concept_score_ks": ks_test(concept_score[idx], calibration.concept_scores),
            "shift_trend": [
                (float(edges[b]), *_shift_point(confidence[rows], concept_score[rows], calibration))
                for b, rows in enumerate(in_buckets)
            ],
        }
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
        **label_free,
    )


def _shift_point(
    confidence: np.ndarray, scores: np.ndarray, calibration: Calibration
) -> tuple[float | None, float | None, float | None]:
    """One time bucket's estimated accuracy and KS p-values (None for an empty bucket)."""
    tests = (ks_test(confidence, calibration.confidence), ks_test(scores, calibration.concept_scores))
    return (atc_estimate(confidence, calibration.atc_threshold), *(t.p_value if t else None for t in tests))


@dataclass(frozen=True)
class DriftBounds:
    """Warn and error bounds of each drift measure. The drift sensor acts on an error-level
    crossing of the OOD rate, the class PSI or the estimated accuracy drop; the KS tests
    only show (a large window makes tiny differences significant)."""

    warn_ood_rate: float
    max_ood_rate: float
    warn_class_psi: float
    max_class_psi: float
    warn_accuracy_drop_points: float
    max_accuracy_drop_points: float
    ks_warn_p_value: float
    ks_error_p_value: float
    min_images: int


@dataclass(frozen=True)
class Measure:
    """One drift measure of a window against its bounds."""

    check: str  # the asset check on production_monitoring that shows it
    label: str
    value: float | None  # None: not measurable (no calibration, or too few images)
    warn: float
    error: float
    higher_is_worse: bool
    retrains: bool  # the drift sensor requests a run when it crosses ``error``

    def crosses(self, bound: float) -> bool:
        if self.value is None:
            return False
        return self.value > bound if self.higher_is_worse else self.value < bound

    @property
    def level(self) -> str:
        """ "error", "warn", "ok" or "unknown"."""
        if self.value is None:
            return "unknown"
        return "error" if self.crosses(self.error) else "warn" if self.crosses(self.warn) else "ok"

    def describe(self) -> str:
        """E.g. "out-of-distribution rate 0.244 > 0.2 (by 0.044)"; the bound is the level's."""
        if self.value is None:
            return f"{self.label}: unknown"
        bound = self.warn if self.level == "warn" else self.error
        sign = ">" if self.higher_is_worse else "<"
        if not self.crosses(bound):
            sign = "<=" if self.higher_is_worse else ">="
        return f"{self.label} {self.value:.3g} {sign} {bound} (by {abs(self.value - bound):.3g})"


def measures(summary: TrafficSummary, bounds: DriftBounds) -> list[Measure]:
    """Every drift measure of the window; values are None below ``min_images``."""
    enough = summary.images >= bounds.min_images

    def value(x: float | None) -> float | None:
        return x if enough else None

    def p_value(ks: KsResult | None) -> float | None:
        return value(ks.p_value if ks else None)

    ks = (bounds.ks_warn_p_value, bounds.ks_error_p_value, False, False)
    return [
        Measure(
            "ood_rate",
            "out-of-distribution rate",
            value(summary.ood_rate),
            bounds.warn_ood_rate,
            bounds.max_ood_rate,
            True,
            True,
        ),
        Measure(
            "class_psi",
            "predicted-class PSI",
            value(summary.psi),
            bounds.warn_class_psi,
            bounds.max_class_psi,
            True,
            True,
        ),
        Measure(
            "estimated_accuracy_drop",
            "estimated accuracy drop (points)",
            value(summary.estimated_accuracy_drop_points),
            bounds.warn_accuracy_drop_points,
            bounds.max_accuracy_drop_points,
            True,
            True,
        ),
        Measure("confidence_distribution", "confidence KS p-value", p_value(summary.confidence_ks), *ks),
        Measure("concept_score_distribution", "concept-score KS p-value", p_value(summary.concept_score_ks), *ks),
    ]


def drift_reasons(summary: TrafficSummary, bounds: DriftBounds) -> list[str]:
    """Why this window counts as drifted (empty if it doesn't, or if it is too small to say)."""
    return [m.describe() for m in measures(summary, bounds) if m.retrains and m.level == "error"]


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
