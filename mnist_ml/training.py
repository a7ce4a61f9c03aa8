"""Shared Keras training plumbing: seeding, the validation split, progress logging."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

Log = Callable[[str], None]


@dataclass(frozen=True)
class FitParams:
    """Knobs shared by both models. Learning rate decays along a cosine to zero."""

    learning_rate: float = 1e-3
    epochs: int = 8
    batch_size: int = 128
    validation_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class FitResult:
    model: keras.Model
    history: dict[str, list[float]]
    seconds: float


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1], the models' input contract."""
    return images.astype(np.float32) / np.float32(255.0)


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train and held-out index arrays; the same seed gives the same split."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    return order[n_val:], order[:n_val]


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
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    params: FitParams,
    log: Log,
    metrics: list[str] | None = None,
) -> FitResult:
    """Compile with Adam on a cosine-decayed learning rate and fit, logging each epoch."""
    x_train, y_train, x_val, y_val = data
    steps = params.epochs * int(np.ceil(len(x_train) / params.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=metrics or [])
    log(f"{name}: training {model.count_params():,} parameters on {len(x_train):,} images")
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=params.epochs,
        batch_size=params.batch_size,
        verbose=0,
        callbacks=[_EpochLog(name, params.epochs, log)],
    )
    seconds = time.perf_counter() - start
    return FitResult(model, {k: [float(v) for v in vs] for k, vs in history.history.items()}, seconds)
