"""The concept model: an autoencoder whose reconstruction error scores how unlike the
training digits an input is. A high score means out of distribution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from mnist_ml.datasets import to_unit_float
from mnist_ml.hyperparams import FitParams
from mnist_ml.log import Log
from mnist_ml.model_contract import INPUT_NAME
from mnist_ml.training import FitResult, fit, split_validation


@dataclass(frozen=True)
class ConceptTraining:
    fit: FitResult
    validation_images: np.ndarray
    """Held-out MNIST (float32, [0, 1]) the threshold is calibrated on."""


def build_autoencoder(encoder_units: Sequence[int], seed: int) -> keras.Model:
    """784 -> encoder_units -> mirrored decoder -> 784 sigmoid pixels."""
    keras.utils.set_random_seed(seed)
    decoder_units = list(encoder_units[-2::-1])
    layers: list[keras.layers.Layer] = [keras.Input((28, 28), name=INPUT_NAME), keras.layers.Flatten()]
    layers += [keras.layers.Dense(units, activation="relu") for units in (*encoder_units, *decoder_units)]
    layers += [keras.layers.Dense(784, activation="sigmoid"), keras.layers.Reshape((28, 28))]
    return keras.Sequential(layers, name="concept_autoencoder")


def train_concept_model(
    images: np.ndarray, encoder_units: Sequence[int], params: FitParams, log: Log
) -> ConceptTraining:
    """Fit the autoencoder to reproduce uint8 training digits; keep the held-out part."""
    model = build_autoencoder(encoder_units, params.seed)
    result = fit("concept model", model, keras.losses.MeanSquaredError(), images, None, params, log)
    _, val_idx = split_validation(len(images), params.validation_fraction, params.seed)
    return ConceptTraining(result, to_unit_float(images[val_idx]))


def calibrate_threshold(clean_scores: np.ndarray, percentile: float) -> float:
    """The score above which an input is flagged: ``percentile`` of held-out clean digits,
    so about ``100 - percentile`` percent of clean digits are flagged."""
    return float(np.percentile(clean_scores, percentile))
