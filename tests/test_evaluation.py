"""Metrics checked against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mnist_assets.metadata import table
from mnist_ml.evaluation import add_uniform_noise, confusion_matrix, flag_rate, per_class_accuracy, roc_auc


def _brute_auc(neg, pos):
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for n, p in itertools.product(neg, pos)]
    return sum(pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, 6, 40).astype(float)
    pos = rng.integers(2, 9, 30).astype(float)
    assert roc_auc(neg, pos) == pytest.approx(_brute_auc(neg, pos))


def test_confusion_matrix_and_per_class_accuracy():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    matrix = confusion_matrix(labels, predictions, n_classes=4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    accuracy = per_class_accuracy(matrix)
    assert accuracy[:3].tolist() == [0.5, 1.0, 0.0]
    assert np.isnan(accuracy[3])


def test_a_class_with_no_samples_has_no_accuracy_not_zero():
    """Class 2 is never the true label but is predicted once: its accuracy is unknown (NaN),
    which the metadata tables show as "n/a", while the classes with samples keep theirs."""
    matrix = confusion_matrix(np.array([0, 0, 1]), np.array([0, 2, 1]), n_classes=3)
    accuracy = per_class_accuracy(matrix)
    assert accuracy[:2].tolist() == [0.5, 1.0]
    assert np.isnan(accuracy[2])
    rendered = table(dict(zip("012", accuracy.tolist(), strict=True)), "digit", "accuracy").value
    assert rendered.splitlines()[2:] == ["| 0 | 0.5000 |", "| 1 | 1.0000 |", "| 2 | n/a |"]


def test_flag_rate_and_noise():
    assert flag_rate(np.array([0.1, 0.2, 0.3, 0.4]), 0.25) == 0.5
    noisy = add_uniform_noise(np.full((100, 28, 28), 0.5, np.float32), 0.3, seed=0)
    assert noisy.dtype == np.float32 and noisy.min() >= 0.2 and noisy.max() <= 0.8
    assert np.abs(noisy - 0.5).mean() > 0.1
