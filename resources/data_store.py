"""Where datasets, trained models and plots live: a folder on local disk by default, the
mounted ``data`` volume on Kubernetes (same code, another ``root``: ``$MNIST_DATA_ROOT``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
from dagster import ConfigurableResource

from mnist_ml.atomic import atomic_file, replace_dir, write_bytes_atomic
from mnist_ml.download import FetchResult, fetch_verified, folder_fingerprint, mirror_fingerprint
from mnist_ml.log import Log
from resources.environment import setting


class DataStore(ConfigurableResource):
    """Every write is atomic (temporary name, then rename): a killed run never leaves a
    file or folder that passes for complete."""

    root: str = setting(
        "var/data",
        env="MNIST_DATA_ROOT",
        description="Folder for raw downloads, processed arrays, models and plots. Relative paths resolve "
        "against the working directory; on Kubernetes, the data volume's mount.",
    )

    def path(self, *parts: str) -> Path:
        return Path(self.root).resolve().joinpath(*parts)

    def fetch(
        self,
        filename: str,
        mirrors: Sequence[str],
        *,
        payload_sha256: str | None = None,
        validate: Callable[[Path], None] | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 1.0,
        log: Log = print,
    ) -> FetchResult:
        """Download ``filename`` into ``raw/`` from the first mirror that serves it verified."""
        return fetch_verified(
            filename,
            mirrors,
            self.path("raw"),
            payload_sha256=payload_sha256,
            validate=validate,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            log=log,
        )

    def mirror_fingerprint(self, filename: str, mirrors: Sequence[str], timeout: float) -> str | None:
        """A token that changes when ``filename`` changes at its first answering mirror."""
        return mirror_fingerprint(mirrors, filename, timeout)

    def incoming_fingerprint(self) -> str:
        """A token that changes when labelled images are added to ``incoming/``."""
        return folder_fingerprint(self.path("incoming"))

    def save_arrays(self, name: str, **arrays: np.ndarray) -> Path:
        """Store arrays compactly as ``processed/<name>.npz``."""
        target = self.path("processed", f"{name}.npz")
        with atomic_file(target) as out:
            np.savez_compressed(out, **arrays)
        return target

    def load_arrays(self, name: str, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of ``processed/<name>.npz``; with ``keys``, only those are decompressed."""
        path = self.path("processed", f"{name}.npz")
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize the asset that writes {name!r} first")
        with np.load(path) as data:
            return {key: data[key] for key in (keys or data.files)}

    def write_bytes(self, relative: str, data: bytes) -> Path:
        return write_bytes_atomic(self.path(relative), data)

    def publish_dir(self, relative: str) -> AbstractContextManager[Path]:
        """An empty scratch folder; on success it replaces ``relative`` whole.
        On failure the scratch folder is removed and the previous content stays."""
        return replace_dir(self.path(relative))
