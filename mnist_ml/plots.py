"""PNG plots people would rather look at than read. Each function returns PNG bytes."""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@functools.cache
def _pyplot() -> ModuleType:
    """matplotlib's pyplot, imported on the first plot (about 0.5 s): every process that loads
    the code location imports this module (the CLI, each run's step server), few of them plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def image_grid(images: np.ndarray, captions: Sequence[str], columns: int = 10) -> bytes:
    """Images (uint8 or float in [0, 1]) in a grid, each with a caption above it."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = _pyplot().subplots(rows, columns, figsize=(columns * 0.9, rows * 1.05), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255 if image.dtype == np.uint8 else 1)
        ax.set_title(caption, fontsize=8)
    return _png(fig)


def confusion_matrix_plot(matrix: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Counts with true classes as rows; the diagonal is what we got right."""
    fig, ax = _pyplot().subplots(figsize=(6, 5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if row == col else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _png(fig)


def training_curves(history: Mapping[str, Sequence[float]], title: str) -> bytes:
    """One panel per metric, training and validation together."""
    metrics = sorted(name for name in history if not name.startswith("val_") and name != "learning_rate")
    fig, axes = _pyplot().subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.2), squeeze=False)
    for ax, name in zip(axes.flat, metrics, strict=True):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], marker="o", label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(f"{title}: {name}")
        ax.legend()
    return _png(fig)


def latency_histogram(milliseconds: Sequence[float], title: str) -> bytes:
    """Request latencies with the p50, p95 and p99 marked."""
    fig, ax = _pyplot().subplots(figsize=(7, 3.2))
    ax.hist(milliseconds, bins=50, color="tab:blue", alpha=0.7)
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        value = float(np.percentile(milliseconds, q))
        ax.axvline(value, color="black", linestyle=style, label=f"p{q} {value:.1f} ms")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("requests")
    ax.set_title(title)
    ax.legend()
    return _png(fig)


def rate_bars(rates: Mapping[str, float], bounds: Mapping[str, float], title: str) -> bytes:
    """One bar per rate, with its required bound as a tick, so a failed gate stands out."""
    fig, ax = _pyplot().subplots(figsize=(7, 3.2))
    names = list(rates)
    ax.bar(names, [rates[n] for n in names], color="tab:green", alpha=0.7)
    for i, name in enumerate(names):
        ax.text(i, rates[name], f"{rates[name]:.3f}", ha="center", va="bottom", fontsize=8)
        if name in bounds:
            ax.hlines(bounds[name], i - 0.4, i + 0.4, colors="red", linestyles="--")
    ax.set_ylim(0, 1.08)
    ax.set_title(f"{title} (red: required bound)")
    return _png(fig)


def traffic_timeseries(
    trend: Sequence[tuple[float, int, float]],
    threshold: float,
    shift_trend: Sequence[tuple[float, float | None, float | None, float | None]] = (),
) -> bytes:
    """Images per time bucket (bars) and the out-of-distribution rate (line) with its drift bound;
    with ``shift_trend`` (bucket start, estimated accuracy, confidence and concept-score KS
    p-values) a second panel below shows the label-free estimates over the same buckets."""
    rows = 2 if shift_trend else 1
    fig, axes = _pyplot().subplots(rows, 1, figsize=(8, 3.4 * rows), sharex=True, squeeze=False)
    volume = axes[0, 0]
    starts = np.array([t for t, _, _ in trend])
    minutes = (starts - starts[0]) / 60 if len(starts) else starts
    width = (minutes[1] - minutes[0]) * 0.8 if len(minutes) > 1 else 1.0
    volume.bar(minutes, [n for _, n, _ in trend], width=width, align="edge", color="tab:gray", alpha=0.4)
    volume.set_ylabel("images")
    axes[-1, 0].set_xlabel("minutes into the window")
    rate = volume.twinx()
    rate.plot(minutes + width / 2, [r for _, _, r in trend], marker="o", color="tab:red", label="OOD rate")
    rate.axhline(threshold, color="tab:red", linestyle="--", label=f"drift bound {threshold}")
    rate.set_ylim(0, 1.05)
    rate.set_ylabel("out-of-distribution rate")
    rate.legend(loc="upper left")
    if shift_trend:
        _shift_panel(axes[1, 0], minutes + width / 2, shift_trend)
    return _png(fig)


def _shift_panel(
    accuracy: Axes, x: np.ndarray, shift_trend: Sequence[tuple[float, float | None, float | None, float | None]]
) -> None:
    """Estimated accuracy (left axis) and KS p-values (right, log axis) per bucket; gaps where empty."""

    def column(i: int) -> list[float]:
        return [np.nan if row[i] is None else row[i] for row in shift_trend]

    accuracy.plot(x, column(1), marker="o", color="tab:blue", label="estimated accuracy (ATC)")
    accuracy.set_ylim(0, 1.05)
    accuracy.set_ylabel("estimated accuracy")
    accuracy.legend(loc="lower left")
    p_values = accuracy.twinx()
    for i, name, color in ((2, "confidence", "tab:orange"), (3, "concept score", "tab:green")):
        p_values.plot(x, np.maximum(column(i), 1e-12), marker=".", color=color, label=f"KS p, {name}")
    p_values.set_yscale("log")
    p_values.set_ylim(1e-12, 2)
    p_values.set_ylabel("KS p-value vs training")
    p_values.legend(loc="lower right")


def class_distribution(training: Sequence[int], production: Sequence[int]) -> bytes:
    """Share of each predicted digit in production beside its share in the training labels."""
    fig, ax = _pyplot().subplots(figsize=(7, 3.2))
    x = np.arange(10)
    for offset, (name, counts) in zip((-0.2, 0.2), (("training", training), ("production", production)), strict=True):
        total = max(sum(counts), 1)
        ax.bar(x + offset, np.asarray(counts) / total, width=0.4, label=name)
    ax.set_xticks(x)
    ax.set_xlabel("digit (predicted, for production)")
    ax.set_ylabel("share")
    ax.legend()
    return _png(fig)


def score_histogram(scores: Mapping[str, np.ndarray], threshold: float) -> bytes:
    """Concept scores per dataset on a log axis, with the out-of-distribution threshold."""
    fig, ax = _pyplot().subplots(figsize=(7, 3.5))
    positive = np.concatenate([s[s > 0] for s in scores.values()])
    bins = np.geomspace(positive.min(), positive.max(), 80)
    for name, values in scores.items():
        ax.hist(np.clip(values, bins[0], None), bins=bins, alpha=0.55, label=name)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("reconstruction MSE (concept score)")
    ax.set_ylabel("images")
    ax.legend()
    return _png(fig)
