"""The digit classifier: the tutorial's dense network by default, a small CNN on request."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from mnist_ml.hyperparams import ARCHITECTURES, FitParams
from mnist_ml.log import Log
from mnist_ml.model_contract import INPUT_NAME
from mnist_ml.training import FitResult, fit


def build_classifier(architecture: str, hidden_units: Sequence[int], seed: int) -> keras.Model:
    """Flatten, ReLU hidden layers, 10 logits; "cnn" puts two conv blocks in front."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}: choose one of {ARCHITECTURES}")
    keras.utils.set_random_seed(seed)
    layers: list[keras.layers.Layer] = [keras.Input((28, 28), name=INPUT_NAME)]
    if architecture == "cnn":
        layers += [keras.layers.Reshape((28, 28, 1))]
        for filters in (32, 64):
            layers += [keras.layers.Conv2D(filters, 3, activation="relu"), keras.layers.MaxPooling2D()]
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(units, activation="relu") for units in hidden_units]
    layers.append(keras.layers.Dense(10, name="logits"))
    return keras.Sequential(layers, name=f"{architecture}_classifier")


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    architecture: str,
    hidden_units: Sequence[int],
    params: FitParams,
    log: Log,
) -> FitResult:
    """Train on uint8 images, holding out ``params.validation_fraction`` for validation."""
    model = build_classifier(architecture, hidden_units, params.seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return fit("classifier", model, loss, images, labels, params, log, metrics=["accuracy"])
