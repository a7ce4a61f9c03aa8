"""28x28 grayscale images in one folder per class (``<root>/<class>/*.png``): how notMNIST
ships, and how users drop newly labelled digits into the data store's ``incoming/``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_ml.log import Log

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


def decode_labelled(
    labelled: Sequence[tuple[int, Path]],
    display: Callable[[Path], str],
    log: Log | None = None,
    progress_every: int = 2000,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode (label, path) pairs: (uint8 [N, 28, 28] images, int64 labels, skipped
    "<display(path)>: reason"), logging progress every ``progress_every`` files."""
    images, labels, skipped = [], [], []
    for done, (label, path) in enumerate(labelled, start=1):
        pixels = decode_image(path)
        if isinstance(pixels, str):
            skipped.append(f"{display(path)}: {pixels}")
        else:
            images.append(pixels)
            labels.append(label)
        if log and done % progress_every == 0:
            log(f"decoded {done}/{len(labelled)} images ({len(skipped)} skipped)")
    stacked = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    return stacked, np.array(labels, dtype=np.int64), skipped


def load_image_folder(root: Path, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 [N, 28, 28] images, int64 labels, skipped "path: reason") from ``root/<class>/*.png``.
    A missing root or class folder simply contributes nothing."""
    labelled = [(label, path) for label, name in enumerate(classes) for path in sorted((root / name).glob("*.png"))]
    return decode_labelled(labelled, lambda path: str(path.relative_to(root)))
