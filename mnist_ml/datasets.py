"""What the MNIST files are, and how they become arrays the models train on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_ml.idx import IdxFormatError, read_idx

# sha256 of the decompressed canonical payloads: mirrors compress differently, the bytes inside don't.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
NOTMNIST_ARCHIVE = "notMNIST_small.tar.gz"
DIGITS = [str(d) for d in range(10)]


def _split(raw_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise IdxFormatError(f"{prefix} images: expected uint8 [N, 28, 28], got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise IdxFormatError(f"{prefix}: {len(images)} images but labels of shape {labels.shape}")
    if labels.size and labels.max() > 9:
        raise IdxFormatError(f"{prefix} labels: expected digits 0-9, found {int(labels.max())}")
    return images, labels.astype(np.uint8)


def load_mnist(raw_dir: Path) -> dict[str, np.ndarray]:
    """The four IDX files as ``x_train, y_train, x_test, y_test`` (uint8), cross-checked."""
    x_train, y_train = _split(raw_dir, "train")
    x_test, y_test = _split(raw_dir, "t10k")
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1], the models' input contract."""
    return images.astype(np.float32) / np.float32(255.0)


def class_counts(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    """Images per class, by class name."""
    counts = np.bincount(labels.astype(np.int64), minlength=len(names))
    return {name: int(count) for name, count in zip(names, counts, strict=True)}
