"""A filesystem model repository: ``<root>/<model_name>/<version>/`` with integer versions
1, 2, 3..., read by our model server (``python -m mnist_serving --model-dir``).

One version holds every model of the project as sub-folders plus ``manifest.json``. That
is not the layout TF Serving or Triton load (they want one model's ``saved_model.pb``
directly in ``<model>/<version>/``); neither was run against it here. A
version folder appears whole or not at all (it is built under a hidden staging name, then
renamed), is read-only once published and is never overwritten, so a server polling the
repository can never load a half-written or altered model. What changes over time, the
aliases and the failed marks, lives outside the version folders.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mnist_ml.atomic import write_text_atomic

MANIFEST = "manifest.json"
ALIASES = "aliases.json"
FAILED_DIR = "failed"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
PRODUCTION = "production"
PREVIOUS = "previous"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ARTIFACT_KEY = re.compile(r"[a-z][a-z0-9_]*")
ALIAS_NAME = re.compile(r"[a-z][a-z0-9_-]*")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says why and what to do instead."""


@dataclass(frozen=True)
class ModelVersion:
    """One published version as a server would see it, plus its failed mark."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    failed: str | None  # the reason given to mark_failed, else None


class FileModelRepository:
    """Publishes, resolves and promotes versions of one model; safe across threads and processes.

    Every change happens under an exclusive ``flock`` on ``<model_dir>/.lock``; reads take
    no lock because every write is an atomic rename.
    """

    def __init__(self, root: Path, model_name: str = "mnist") -> None:
        if not MODEL_NAME.fullmatch(model_name):
            raise RegistryError(f"invalid model name {model_name!r}: use letters, digits, '_', '-' or '.'")
        self.root = Path(root)
        self.model_name = model_name

    @property
    def model_dir(self) -> Path:
        return self.root / self.model_name

    def publish(
        self,
        artifacts: Mapping[str, Path],
        manifest: Mapping[str, Any],
        documents: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None,
    ) -> ModelVersion:
        """Copy each artifact folder into a new version ``<key>/`` and return that version.

        ``documents`` gets the full manifest (with the version number and creation time) and
        returns text files to write beside it (file name -> text), e.g. a model card: they are
        part of the version, sealed with it. The version number is taken under the lock, so
        concurrent publishers never collide.
        """
        _check_artifacts(artifacts)
        with self._locked():
            self._remove_leftover_staging()
            version = self._next_version()
            text = _manifest_text(manifest, version, self.model_name, sorted(artifacts))
            extra = dict(documents(json.loads(text))) if documents else {}
            if set(extra) & {MANIFEST, *artifacts}:
                raise RegistryError(f"documents {sorted(extra)} would replace the manifest or an artifact")
            staging = self.model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
            try:
                _build(staging, artifacts, text, extra)
                self._rename_into_place(staging, version)
            except BaseException:
                _remove_tree(staging)
                raise
        return self.get(version)

    def versions(self) -> list[int]:
        """Complete versions, ascending: numeric folders that hold a manifest."""
        return sorted(n for n in self._numeric_dirs() if (self.model_dir / str(n) / MANIFEST).is_file())

    def get(self, version: int) -> ModelVersion:
        available = self.versions()
        if version not in available:
            listed = ", ".join(map(str, available)) or "none yet: publish one first"
            raise RegistryError(
                f"{self.model_name!r} has no version {version} in {self.model_dir}; available: {listed}"
            )
        path = self.model_dir / str(version)
        manifest = _read_json(path / MANIFEST)
        return ModelVersion(self.model_name, version, path, manifest, self._failure_reason(version))

    def aliases(self) -> dict[str, int]:
        return self._read_state()[0]

    def resolve(self, ref: str | int) -> ModelVersion:
        """An alias name, or a version number given as an int or a digit string."""
        if isinstance(ref, int) or ref.isdecimal():
            return self.get(int(ref))
        aliases = self.aliases()
        if ref not in aliases:
            known = ", ".join(sorted(aliases)) or "none yet: promote or set_alias first"
            raise RegistryError(f"{self.model_name!r} has no alias {ref!r}; known aliases: {known}")
        return self.get(aliases[ref])

    def set_alias(self, alias: str, version: int) -> None:
        """Point a free-form alias such as ``candidate`` at a good version.

        ``production`` and ``previous`` are refused: only promote and rollback may move
        them, or the history that rollback relies on would no longer match.
        """
        if not ALIAS_NAME.fullmatch(alias):
            raise RegistryError(f"invalid alias {alias!r}: use lowercase letters, digits, '_' or '-', starting a-z")
        if alias in (PRODUCTION, PREVIOUS):
            raise RegistryError(f"alias {alias!r} is managed by promote() and rollback(); call those instead")
        with self._locked():
            self._check_usable(version)
            aliases, history = self._read_state()
            self._write_state({**aliases, alias: version}, history)

    def promote(self, version: int) -> dict[str, int]:
        """Make ``version`` production; the old production becomes ``previous``."""
        with self._locked():
            self._check_usable(version)
            aliases, history = self._read_state()
            current = aliases.get(PRODUCTION)
            if current != version:
                if current is not None:
                    aliases[PREVIOUS] = current
                aliases[PRODUCTION] = version
                history.append(version)
                self._write_state(aliases, history)
            return aliases

    def rollback(self) -> ModelVersion:
        """Make ``previous`` production again and pick the next fallback from the history.

        The new ``previous`` is the newest earlier production that is not marked failed,
        so a rollback can never land on a version known to be bad.
        """
        with self._locked():
            aliases, history = self._read_state()
            if PREVIOUS not in aliases:
                raise RegistryError(f"{self.model_name!r} has no previous version to roll back to; promote one instead")
            target = self.get(aliases[PREVIOUS])
            if target.failed is not None:
                raise RegistryError(
                    f"previous version {target.version} is marked failed ({target.failed}); "
                    "promote a known-good version instead"
                )
            if history and history[-1] == aliases.get(PRODUCTION):
                history.pop()  # the production being rolled back
            aliases[PRODUCTION] = target.version
            fallbacks = (v for v in reversed(history) if v != target.version and self._failure_reason(v) is None)
            fallback = next(fallbacks, None)
            if fallback is None:
                del aliases[PREVIOUS]
            else:
                aliases[PREVIOUS] = fallback
            self._write_state(aliases, history)
        return target

    def mark_failed(self, version: int, reason: str) -> None:
        """Record that ``version`` must not serve again; its folder stays as it is, for forensics."""
        with self._locked():
            self.get(version)
            record = {"version": version, "reason": reason, "marked_at": _now()}
            _write_json(self.model_dir / FAILED_DIR / f"{version}.json", record)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with open(self.model_dir / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield  # closing the handle releases the lock

    def _numeric_dirs(self) -> list[int]:
        if not self.model_dir.is_dir():
            return []
        return [int(p.name) for p in self.model_dir.iterdir() if p.name.isascii() and p.name.isdigit() and p.is_dir()]

    def _next_version(self) -> int:
        """One past every numeric folder, complete or not: a number is never reused."""
        return max(self._numeric_dirs(), default=0) + 1

    def _remove_leftover_staging(self) -> None:
        """Staging folders seen while holding the lock belong to runs that were killed."""
        for leftover in self.model_dir.glob(f"{STAGING_PREFIX}*"):
            _remove_tree(leftover)

    def _rename_into_place(self, staging: Path, version: int) -> None:
        # os.rename would silently replace an empty folder, so check first (under the lock).
        target = self.model_dir / str(version)
        if target.exists():
            raise RegistryError(f"{target} already exists; versions are never overwritten, so publish again")
        os.rename(staging, target)

    def _check_usable(self, version: int) -> None:
        reason = self.get(version).failed
        if reason is not None:
            raise RegistryError(f"version {version} is marked failed ({reason}); publish or pick another version")

    def _failure_reason(self, version: int) -> str | None:
        path = self.model_dir / FAILED_DIR / f"{version}.json"
        return _read_json(path)["reason"] if path.exists() else None

    def _read_state(self) -> tuple[dict[str, int], list[int]]:
        path = self.model_dir / ALIASES
        if not path.exists():
            return {}, []
        state = _read_json(path)
        return dict(state["aliases"]), list(state["history"])

    def _write_state(self, aliases: Mapping[str, int], history: list[int]) -> None:
        _write_json(self.model_dir / ALIASES, {"aliases": dict(sorted(aliases.items())), "history": history})


def _check_artifacts(artifacts: Mapping[str, Path]) -> None:
    """Reject bad input before anything is written."""
    if not artifacts:
        raise RegistryError("no artifacts to publish: pass e.g. {'classifier': Path('models/classifier')}")
    for key, source in artifacts.items():
        if not ARTIFACT_KEY.fullmatch(key):
            raise RegistryError(f"invalid artifact key {key!r}: use lowercase letters, digits or '_', starting a-z")
        if not Path(source).is_dir():
            raise RegistryError(f"artifact {key!r} must be an existing folder (a SavedModel), got {source}")


def _manifest_text(manifest: Mapping[str, Any], version: int, model_name: str, keys: list[str]) -> str:
    """Serialize up front, so a manifest that is not JSON fails before any copying."""
    full = {**manifest, "version": version, "model_name": model_name, "created_at": _now(), "artifacts": keys}
    return json.dumps(full, indent=2, sort_keys=True) + "\n"


def _build(staging: Path, artifacts: Mapping[str, Path], manifest_text: str, documents: Mapping[str, str]) -> None:
    """Fill the staging folder and make it read-only, so the version is final when it appears."""
    staging.mkdir()
    for key, source in artifacts.items():
        shutil.copytree(source, staging / key)
    (staging / MANIFEST).write_text(manifest_text)
    for name, text in documents.items():
        (staging / name).write_text(text)
    for folder, _, files in os.walk(staging, topdown=False):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


def _remove_tree(path: Path) -> None:
    """Remove a folder even if it was already made read-only."""
    for folder, _, _ in os.walk(path):
        os.chmod(folder, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path} is not valid JSON ({exc}); restore it from a backup or delete it") from exc


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _now() -> str:
    return datetime.now(UTC).isoformat()
