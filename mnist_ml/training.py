"""Shared Keras training plumbing: the validation split, uint8 input pipelines, progress logs."""

from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from mnist_ml.hyperparams import FitParams
from mnist_ml.log import Log


@dataclass(frozen=True)
class FitResult:
    model: keras.Model
    history: dict[str, list[float]]
    seconds: float


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train and held-out index arrays; the same seed gives the same split."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    return order[n_val:], order[:n_val]


def _scale(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32) / 255.0


def _batches(images: np.ndarray, labels: np.ndarray | None, params: FitParams, shuffle: bool) -> tf.data.Dataset:
    """Batches scaled to [0, 1] on the fly, so only the uint8 images sit in memory.
    Without labels the target is the input itself (an autoencoder)."""
    dataset = tf.data.Dataset.from_tensor_slices(images if labels is None else (images, labels))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=params.seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(params.batch_size)
    if labels is None:
        dataset = dataset.map(lambda x: (_scale(x), _scale(x)))
    else:
        dataset = dataset.map(lambda x, y: (_scale(x), y))
    return dataset.prefetch(tf.data.AUTOTUNE)


class _EpochLog(keras.callbacks.Callback):
    def __init__(self, name: str, epochs: int, log: Log) -> None:
        super().__init__()
        self._name, self._epochs, self._log = name, epochs, log
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        numbers = ", ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        elapsed = time.perf_counter() - self._start
        self._log(f"{self._name}: epoch {epoch + 1}/{self._epochs} ({elapsed:.1f}s) {numbers}")


def fit(
    name: str,
    model: keras.Model,
    loss: keras.losses.Loss,
    images: np.ndarray,
    labels: np.ndarray | None,
    params: FitParams,
    log: Log,
    metrics: list[str] | None = None,
) -> FitResult:
    """Hold out a validation split of the uint8 ``images``, compile with Adam on a
    cosine-decayed learning rate and fit, logging each epoch. ``labels=None`` trains
    the model to reproduce its input."""
    train_idx, val_idx = split_validation(len(images), params.validation_fraction, params.seed)
    train = _batches(images[train_idx], None if labels is None else labels[train_idx], params, shuffle=True)
    val = _batches(images[val_idx], None if labels is None else labels[val_idx], params, shuffle=False)
    steps = params.epochs * int(np.ceil(len(train_idx) / params.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=metrics or [])
    log(f"{name}: training {model.count_params():,} parameters on {len(train_idx):,} images")
    start = time.perf_counter()
    history = model.fit(
        train,
        validation_data=val,
        epochs=params.epochs,
        shuffle=False,  # the dataset reshuffles itself every epoch
        verbose=0,
        callbacks=[_EpochLog(name, params.epochs, log)],
    )
    seconds = time.perf_counter() - start
    return FitResult(model, {k: [float(v) for v in vs] for k, vs in history.history.items()}, seconds)
