"""Training knobs, kept free of TensorFlow so configuration can load without it."""

from __future__ import annotations

from dataclasses import dataclass

ARCHITECTURES = ("dense", "cnn")


@dataclass(frozen=True)
class FitParams:
    """Knobs shared by both models. The learning rate decays along a cosine to zero."""

    learning_rate: float = 2e-3
    epochs: int = 8
    batch_size: int = 128
    validation_fraction: float = 0.1
    seed: int = 0
