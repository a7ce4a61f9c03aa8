"""Metrics for both models, in numpy so they run anywhere (assets, server tests, benchmarks)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall per true class; a class with no examples gets NaN rather than a fake 0."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def roc_auc(negative_scores: np.ndarray, positive_scores: np.ndarray) -> float:
    """Probability that a positive scores above a negative (Mann-Whitney U), ties count half."""
    scores = np.concatenate([negative_scores, positive_scores])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = scores[order]
    # Average the ranks of tied scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first[counts > 1], counts[counts > 1], strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    n_neg, n_pos = len(negative_scores), len(positive_scores)
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_neg * n_pos))


def flag_rate(scores: np.ndarray, threshold: float) -> float:
    """Share of inputs scored above the threshold (flagged as out of distribution)."""
    return float(np.mean(scores > threshold))


def add_uniform_noise(images: np.ndarray, amplitude: float, seed: int) -> np.ndarray:
    """The tutorial's noisy digits: float images plus U(-amplitude, amplitude), clipped to [0, 1]."""
    noise = np.random.default_rng(seed).uniform(-amplitude, amplitude, images.shape)
    return np.clip(images + noise, 0.0, 1.0).astype(np.float32)


def ood_report(clean: np.ndarray, shifted: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC, detection rate on the shifted set and false-positive rate on the clean set."""
    return {
        "roc_auc": roc_auc(clean, shifted),
        "detection_rate": flag_rate(shifted, threshold),
        "false_positive_rate": flag_rate(clean, threshold),
    }
