"""Where datasets, trained models and plots live: a folder on local disk by default, the
mounted ``data`` volume on Kubernetes (same code, another ``root``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from dagster import Config, ConfigurableResource
from pydantic import Field

from mnist_ml.download import FetchResult, fetch_verified, folder_fingerprint, mirror_fingerprint


class DataStoreSettings(Config):
    root: str = Field(
        default="var/data",
        description="Folder for raw downloads, processed arrays, models and plots. Relative "
        "paths resolve against the working directory; on Kubernetes, the data volume's mount.",
    )


class DataStore(ConfigurableResource, DataStoreSettings):
    """Every write is atomic (temporary name, then rename): a killed run never leaves a
    file or folder that passes for complete."""

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
        log: Callable[[str], None] = print,
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
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{name}-", suffix=".npz", delete=False) as f:
            np.savez_compressed(f, **arrays)
        os.replace(f.name, target)
        return target

    def load_arrays(self, name: str, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of ``processed/<name>.npz``; with ``keys``, only those are decompressed."""
        path = self.path("processed", f"{name}.npz")
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize the asset that writes {name!r} first")
        with np.load(path) as data:
            return {key: data[key] for key in (keys or data.files)}

    def write_bytes(self, relative: str, data: bytes) -> Path:
        target = self.path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return target

    @contextmanager
    def publish_dir(self, relative: str) -> Iterator[Path]:
        """Yield an empty scratch folder; on success it replaces ``relative`` whole.
        On failure the scratch folder is removed and the previous content stays."""
        target = self.path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            yield scratch
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        retired = target.with_name(f".{target.name}-old-{uuid.uuid4().hex}")
        if target.exists():
            os.replace(target, retired)
        os.replace(scratch, target)
        shutil.rmtree(retired, ignore_errors=True)
