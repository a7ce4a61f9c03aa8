"""28x28 grayscale images in one folder per class (``<root>/<class>/*.png``): how notMNIST
ships, and how users drop newly labelled digits into the data store's ``incoming/``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = (28, 28)


def decode_image(path: Path) -> np.ndarray | str:
    """The 28x28 uint8 pixels of an image, or the reason it cannot be used."""
    try:
        with Image.open(path) as image:
            if image.size != IMAGE_SIZE:
                return f"size {image.size[0]}x{image.size[1]}, expected 28x28"
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except UnidentifiedImageError:
        return "cannot identify image file"
    # Pillow's exception for a broken PNG depends on where the damage is.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"cannot decode: {exc}"


def load_image_folder(root: Path, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 [N, 28, 28] images, int64 labels, skipped "path: reason") from ``root/<class>/*.png``.
    A missing root or class folder simply contributes nothing."""
    images, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.png")):
            pixels = decode_image(path)
            if isinstance(pixels, str):
                skipped.append(f"{path.relative_to(root)}: {pixels}")
            else:
                images.append(pixels)
                labels.append(label)
    stacked = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    return stacked, np.array(labels, dtype=np.int64), skipped
