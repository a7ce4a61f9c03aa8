"""The filesystem model registry on real files: atomic, never-overwritten versions, aliases,
rollback and concurrent publishers."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mnist_ml.registry import FileModelRepository, RegistryError
from resources.model_registry import ModelRegistry


def _model(folder: Path, payload: str) -> Path:
    """A stand-in SavedModel folder with a nested file."""
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_text(payload)
    (folder / "variables" / "variables.index").write_text(f"{payload}-vars")
    return folder


@pytest.fixture
def artifacts(tmp_path: Path) -> dict[str, Path]:
    return {
        "classifier": _model(tmp_path / "src" / "classifier", "clf"),
        "concept_model": _model(tmp_path / "src" / "concept_model", "concept"),
    }


@pytest.fixture
def repo(tmp_path: Path) -> FileModelRepository:
    return FileModelRepository(tmp_path / "models")


def _entries(repo: FileModelRepository) -> set[str]:
    return {p.name for p in repo.model_dir.iterdir()}


def test_publish_numbers_versions_and_copies_contents(repo, artifacts):
    first = repo.publish(artifacts, {"accuracy": 0.98})
    second = repo.publish(artifacts, {"accuracy": 0.99})

    assert (first.version, second.version) == (1, 2)
    assert repo.versions() == [1, 2]
    assert second.path == repo.model_dir / "2"
    assert (second.path / "classifier" / "saved_model.pb").read_text() == "clf"
    assert (second.path / "concept_model" / "variables" / "variables.index").read_text() == "concept-vars"
    on_disk = json.loads((second.path / "manifest.json").read_text())
    assert on_disk == second.manifest
    assert on_disk["accuracy"] == 0.99
    assert on_disk["version"] == 2
    assert on_disk["model_name"] == "mnist"
    assert on_disk["artifacts"] == ["classifier", "concept_model"]
    assert on_disk["created_at"].endswith("+00:00")
    assert second.failed is None


def test_published_version_is_read_only(repo, artifacts):
    path = repo.publish(artifacts, {}).path

    for folder, _, files in os.walk(path):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o555
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o444
    if os.geteuid() != 0:  # root ignores permission bits
        with pytest.raises(PermissionError):
            (path / "classifier" / "extra.txt").write_text("overwrite")


def test_bad_artifacts_are_rejected_before_anything_is_written(repo, artifacts, tmp_path):
    not_a_folder = tmp_path / "model.keras"
    not_a_folder.write_text("x")

    with pytest.raises(RegistryError, match="existing folder"):
        repo.publish({**artifacts, "extra": not_a_folder}, {})
    with pytest.raises(RegistryError, match="invalid artifact key"):
        repo.publish({"../escape": artifacts["classifier"]}, {})
    assert not repo.model_dir.exists()


def test_failed_publish_leaves_no_trace_and_earlier_versions_intact(repo, artifacts, monkeypatch):
    repo.publish(artifacts, {"run": 1})
    real_copytree = shutil.copytree
    copied = []

    def copy_then_fail(src, dst, *args, **kwargs):
        if copied:
            raise OSError("disk full")
        copied.append(dst)
        return real_copytree(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        repo.publish(artifacts, {"run": 2})

    assert len(copied) == 1  # it did fail midway
    assert _entries(repo) == {"1", ".lock"}
    assert repo.versions() == [1]
    assert repo.get(1).manifest["run"] == 1
    assert (repo.model_dir / "1" / "classifier" / "saved_model.pb").read_text() == "clf"


def test_staging_left_by_a_killed_run_is_ignored_then_cleaned(repo, artifacts):
    leftover = repo.model_dir / ".staging-x"
    (leftover / "classifier").mkdir(parents=True)
    os.chmod(leftover / "classifier", 0o555)  # killed after making it read-only

    assert repo.versions() == []
    assert repo.publish(artifacts, {}).version == 1
    assert not leftover.exists()


def test_half_written_version_is_not_listed_and_its_number_not_reused(repo, artifacts):
    repo.publish(artifacts, {})
    (repo.model_dir / "2" / "classifier").mkdir(parents=True)  # no manifest: incomplete

    assert repo.versions() == [1]
    assert repo.publish(artifacts, {}).version == 3
    assert repo.versions() == [1, 3]


def test_existing_version_folder_is_never_overwritten(repo, artifacts):
    repo.publish(artifacts, {})
    squatter = repo.model_dir / "2"
    squatter.mkdir()  # an empty folder os.rename would silently replace

    assert repo.publish(artifacts, {}).version == 3
    assert list(squatter.iterdir()) == []


def test_promote_and_rollback(repo, artifacts):
    for _ in range(2):
        repo.publish(artifacts, {})

    repo.promote(1)
    assert repo.promote(2) == {"production": 2, "previous": 1}
    repo.mark_failed(2, "accuracy dropped in production")
    rolled_back = repo.rollback()

    assert rolled_back.version == 1
    assert repo.aliases() == {"production": 1}
    assert json.loads((repo.model_dir / "aliases.json").read_text())["history"] == [1]
    assert repo.get(2).failed == "accuracy dropped in production"
    assert (repo.model_dir / "2" / "manifest.json").exists()  # marking failed keeps the folder
    with pytest.raises(RegistryError, match="no previous version"):
        repo.rollback()


def test_rollback_skips_failed_versions_when_choosing_the_next_previous(repo, artifacts):
    for version in (1, 2, 3):
        repo.publish(artifacts, {})
        repo.promote(version)
    repo.mark_failed(1, "bad")

    repo.rollback()

    assert repo.aliases() == {"production": 2}


def test_failed_versions_cannot_be_promoted_or_aliased(repo, artifacts):
    repo.publish(artifacts, {})
    repo.mark_failed(1, "nan outputs")

    with pytest.raises(RegistryError, match="marked failed"):
        repo.promote(1)
    with pytest.raises(RegistryError, match="marked failed"):
        repo.set_alias("candidate", 1)
    assert repo.aliases() == {}


def test_set_alias_validates_name_and_version(repo, artifacts):
    repo.publish(artifacts, {})

    repo.set_alias("candidate", 1)
    assert repo.aliases() == {"candidate": 1}
    with pytest.raises(RegistryError, match="invalid alias"):
        repo.set_alias("Candidate!", 1)
    with pytest.raises(RegistryError, match="promote"):
        repo.set_alias("production", 1)
    with pytest.raises(RegistryError, match="no version 5"):
        repo.set_alias("candidate", 5)


def test_resolve_by_alias_number_or_digit_string(repo, artifacts):
    repo.publish(artifacts, {})
    repo.publish(artifacts, {})
    repo.promote(2)

    assert repo.resolve("production").version == 2
    assert repo.resolve(2).version == 2
    assert repo.resolve("2").version == 2
    with pytest.raises(RegistryError, match="known aliases: production"):
        repo.resolve("staging")


def test_missing_version_error_lists_available_ones(repo, artifacts):
    with pytest.raises(RegistryError, match="available: none yet"):
        repo.get(1)
    repo.publish(artifacts, {})
    repo.publish(artifacts, {})

    with pytest.raises(RegistryError, match=r"no version 99 .*available: 1, 2"):
        repo.get(99)


def test_concurrent_publishes_get_distinct_versions(tmp_path, artifacts):
    start = threading.Barrier(4)

    def publish(worker: int) -> int:
        start.wait()
        # Each worker uses its own repository object, as separate processes would.
        return FileModelRepository(tmp_path / "models").publish(artifacts, {"worker": worker}).version

    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(publish, range(4)))

    assert sorted(versions) == [1, 2, 3, 4]
    repo = FileModelRepository(tmp_path / "models")
    assert {repo.get(v).manifest["worker"] for v in versions} == {0, 1, 2, 3}


def test_resource_resolves_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    repo = ModelRegistry(root="store", model_name="digits").repository()

    assert repo.model_dir == tmp_path / "store" / "digits"
    assert repo.model_dir.is_absolute()
