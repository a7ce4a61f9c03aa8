"""mnist_ml.run_folders on real folders: which run folders pruning keeps (the newest, the
protected ones, temporaries) and that two pruners at once delete each folder once, without
error.

Not covered: the model assets calling it with the right protected runs (tests/test_training_assets.py
checks a real run's folder survives; tests/test_one_deploy_at_a_time.py runs two pipelines)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mnist_ml.run_folders import prune_run_folders


def _runs(parent: Path, count: int) -> list[str]:
    """``count`` run folders, each with a file, the first the oldest."""
    names = [f"run-{i}" for i in range(count)]
    for age, name in enumerate(reversed(names)):
        (parent / name).mkdir(parents=True)
        (parent / name / "classifier.metrics.json").write_text("{}")
        os.utime(parent / name, (1_700_000_000 - age * 60,) * 2)
    return names


def test_keeps_the_newest_and_the_protected(tmp_path):
    names = _runs(tmp_path, 8)
    (tmp_path / ".tmp-abc").mkdir()  # a folder being written: not a run folder
    deleted = prune_run_folders(tmp_path, keep=5, protect={"run-0"})
    assert deleted == ["run-2", "run-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".tmp-abc", "run-0", *names[3:]])
    assert prune_run_folders(tmp_path, keep=5, protect={"run-0"}) == []


def test_missing_parent_prunes_nothing(tmp_path):
    assert prune_run_folders(tmp_path / "absent", keep=5) == []


def test_two_pruners_at_once_delete_each_folder_once(tmp_path):
    _runs(tmp_path, 40)
    results: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def prune(slot: int) -> None:
        barrier.wait()
        results[slot] = prune_run_folders(tmp_path, keep=5)

    threads = [threading.Thread(target=prune, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results[0] + results[1]) == sorted(f"run-{i}" for i in range(35))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"run-{i}" for i in range(35, 40))
