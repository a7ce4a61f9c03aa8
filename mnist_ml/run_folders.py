"""Run-scoped folders: each training run writes under ``<parent>/<run id>/``, so two runs never
write the same files, and old run folders are pruned, the newest kept.

Invariants:
- a folder is deleted by first renaming it to a ``.tmp-`` name in the same parent (one atomic
  step), then removing that: a reader finds a run folder whole or not at all, never half
  deleted. Names starting with ``.`` (temporaries, as in ``mnist_ml.atomic``) are never run
  folders;
- a protected name is never deleted, whatever its age;
- two pruners at once are safe: a folder the other one took first is skipped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Collection
from pathlib import Path


def _modified(folder: Path) -> float:
    """Modification time; a folder another pruner just took counts as the oldest."""
    try:
        return folder.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def prune_run_folders(parent: Path, keep: int, protect: Collection[str] = ()) -> list[str]:
    """Delete the run folders under ``parent`` beyond the ``keep`` most recently modified,
    except those named in ``protect``; return the names deleted, newest first."""
    if not parent.is_dir():
        return []
    folders = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    folders.sort(key=_modified, reverse=True)
    deleted = []
    for folder in folders[keep:]:
        if folder.name in protect:
            continue
        trash = parent / f".tmp-pruned-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            continue
        shutil.rmtree(trash)
        deleted.append(folder.name)
    return deleted
