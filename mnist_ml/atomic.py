"""Writes a reader never sees half done.

Everything is written under a temporary name beside its target (same folder, so same
filesystem), then renamed into place in one step: readers see the old content or the
new, never part of it, and a killed process leaves at most a ``.tmp-*`` temporary that
no reader looks at. On an error the temporary is removed and the previous content stays."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into (its ``name`` is the temporary
    path, for checks before it counts); on a clean exit it is synced to disk and renamed
    to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")  # keeps the suffix: tools go by it
    try:
        with tmp.open("xb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with atomic_file(path) as out:
        out.write(data)
    return Path(path)


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def swap_in(new: Path, target: Path) -> None:
    """Rename the folder ``new`` to ``target``; a previous ``target`` is moved aside, then
    deleted, and put back if the rename fails."""
    if not (target.exists() or target.is_symlink()):
        os.rename(new, target)
        return
    trash = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-old-"))
    old = trash / target.name
    os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        os.rename(old, target)  # keep the previous content rather than nothing
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def replace_dir(path: Path) -> Iterator[Path]:
    """An empty scratch folder beside ``path``; on a clean exit it replaces ``path`` whole,
    on an error it is removed and ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        yield scratch
        swap_in(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
