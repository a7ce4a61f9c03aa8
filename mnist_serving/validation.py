"""Turn whatever a client sent into the models' input, or say exactly what is wrong.

Accepted: shape [N, 28, 28] or [N, 784]; uint8 pixels (0-255) or floats in [0, 1]; no NaN
or inf; 1 <= N <= max_batch. Everything else is an InvalidImages error (a 4xx)."""

from __future__ import annotations

import numpy as np

from mnist_ml.datasets import to_unit_float


class InvalidImages(ValueError):
    """The request's images can't be scored; the message is safe to return to the client."""


def to_model_input(data: object, max_batch: int) -> np.ndarray:
    """float32 [N, 28, 28] in [0, 1] from a numpy array or nested lists."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise InvalidImages(f"images must be a rectangular array of numbers ({exc})") from None
    kind = array.dtype.kind
    if kind == "b":
        raise InvalidImages("images must be numbers, not booleans")
    if kind not in "iuf":
        raise InvalidImages("images must be a rectangular array of numbers")
    if array.ndim == 2 and array.shape[1] == 784:
        array = array.reshape(-1, 28, 28)
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise InvalidImages(f"expected shape [N, 28, 28] or [N, 784], got {list(array.shape)}")
    n = array.shape[0]
    if not 1 <= n <= max_batch:
        raise InvalidImages(f"batch size must be between 1 and {max_batch}, got {n}")
    if kind in "iu":
        if array.dtype != np.uint8 and (np.minimum.reduce(array, None) < 0 or np.maximum.reduce(array, None) > 255):
            raise InvalidImages("integer pixels must be in 0..255")
        return to_unit_float(array)
    pixels = array.astype(np.float32)
    if not np.isfinite(pixels).all():
        raise InvalidImages("images contain NaN or infinite values")
    if np.minimum.reduce(pixels, None) < 0.0 or np.maximum.reduce(pixels, None) > 1.0:
        raise InvalidImages("float pixels must be in [0, 1] (send uint8 for 0..255)")
    return pixels
