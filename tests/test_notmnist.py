"""notMNIST: safe extraction of generated archives and tolerant PNG loading."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_ml import notmnist
from mnist_ml.notmnist import (
    MARKER,
    ArchiveFormatError,
    UnsafeArchiveError,
    load_notmnist,
    safe_extract,
)


def png(value: int, size: tuple[int, int] = (28, 28)) -> bytes:
    """A flat grayscale PNG, so each image is identifiable by its pixel value."""
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special_member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


GOOD_MEMBERS = [
    file_member("notMNIST_small/A/a1.png", png(11)),
    file_member("notMNIST_small/A/a0.png", png(10)),
    file_member("notMNIST_small/B/b0.png", png(20)),
    file_member("notMNIST_small/B/bad.png", b"this is not a png"),
    file_member("notMNIST_small/C/big.png", png(30, (32, 32))),
    file_member("notMNIST_small/J/j0.png", png(90)),
]


def test_extract_and_load_reports_broken_images(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "notMNIST_small.tar.gz", GOOD_MEMBERS)
    logs: list[str] = []

    root = safe_extract(archive, tmp_path / "data")
    data = load_notmnist(root, log=logs.append)

    assert root == tmp_path / "data" / "notMNIST_small"
    assert data.images.dtype == np.uint8
    assert data.images.shape == (4, 28, 28)
    assert data.images[:, 0, 0].tolist() == [10, 11, 20, 90]  # sorted within each letter
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [0, 0, 1, 9]
    assert data.per_class == dict.fromkeys("ABCDEFGHIJ", 0) | {"A": 2, "B": 1, "J": 1}
    assert data.skipped == [
        "notMNIST_small/B/bad.png: cannot identify image file",
        "notMNIST_small/C/big.png: size 32x32, expected 28x28",
    ]
    assert any("no folder for letters DEFGHI" in line for line in logs)
    # Same result when given the directory that contains notMNIST_small/.
    assert load_notmnist(tmp_path / "data", log=logs.append).skipped == data.skipped


def test_progress_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = safe_extract(write_tar(tmp_path / "a.tar.gz", GOOD_MEMBERS), tmp_path / "data")
    monkeypatch.setattr(notmnist, "PROGRESS_EVERY", 2)
    logs: list[str] = []

    load_notmnist(root, log=logs.append)

    assert [line for line in logs if line.startswith("decoded")] == [
        "decoded 2/6 images (0 skipped)",
        "decoded 4/6 images (1 skipped)",
        "decoded 6/6 images (2 skipped)",
    ]


def test_rerun_skips_complete_extraction_and_replaces_a_different_one(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    root = safe_extract(write_tar(tmp_path / "v1.tar.gz", GOOD_MEMBERS), dest)
    (root / "sentinel").write_text("kept if not re-extracted")

    assert safe_extract(tmp_path / "v1.tar.gz", dest) == root
    assert (root / "sentinel").exists()

    v2 = write_tar(tmp_path / "v2.tar.gz", [file_member("notMNIST_small/D/d.png", png(40))])
    assert safe_extract(v2, dest) == root
    assert sorted(p.name for p in root.iterdir()) == [MARKER, "D"]
    assert sorted(p.name for p in dest.iterdir()) == ["notMNIST_small"]  # no temp dirs left


def test_archive_without_single_top_dir_is_wrapped(tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "letters.tgz",
        [file_member("A/a.png", png(1)), file_member("E/e.png", png(5))],
    )

    root = safe_extract(archive, tmp_path / "data")
    data = load_notmnist(root, log=lambda _line: None)

    assert root == tmp_path / "data" / "letters"
    assert data.labels.tolist() == [0, 4]


@pytest.mark.parametrize(
    ("name", "kind", "linkname", "problem"),
    [
        ("../evil.png", tarfile.REGTYPE, "", "path escapes the destination"),
        ("notMNIST_small/A/../../../evil.png", tarfile.REGTYPE, "", "path escapes"),
        ("{tmp}/evil.png", tarfile.REGTYPE, "", "absolute path"),
        ("notMNIST_small/A/s.png", tarfile.SYMTYPE, "/etc/passwd", "link to '/etc/passwd'"),
        ("notMNIST_small/A/h.png", tarfile.LNKTYPE, "../evil.png", "link to '../evil.png'"),
        ("notMNIST_small/A/fifo", tarfile.FIFOTYPE, "", "device or fifo"),
        ("notMNIST_small/A/tty", tarfile.CHRTYPE, "", "device or fifo"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo", "chardev"],
)
def test_unsafe_member_is_refused_before_anything_is_written(
    tmp_path: Path, name: str, kind: bytes, linkname: str, problem: str
) -> None:
    name = name.format(tmp=tmp_path)
    bad = file_member(name, png(0)) if kind == tarfile.REGTYPE else special_member(name, kind, linkname)
    archive = write_tar(tmp_path / "evil.tar.gz", [*GOOD_MEMBERS, bad])
    dest = tmp_path / "sub" / "data"

    with pytest.raises(UnsafeArchiveError) as caught:
        safe_extract(archive, dest)

    assert f"refusing member {name!r}: {problem}" in str(caught.value)
    assert not dest.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]


@pytest.mark.parametrize("content", [b"not a tar archive at all", b"\x1f\x8b\x08\x00truncated gzip"])
def test_unreadable_archive(tmp_path: Path, content: bytes) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(content)

    with pytest.raises(ArchiveFormatError, match="cannot read tar archive"):
        safe_extract(archive, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_truncated_archive_leaves_nothing(tmp_path: Path) -> None:
    whole = write_tar(tmp_path / "whole.tar.gz", GOOD_MEMBERS).read_bytes()
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(ArchiveFormatError):
        safe_extract(archive, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_no_letter_folders(tmp_path: Path) -> None:
    (tmp_path / "notMNIST_small" / "other").mkdir(parents=True)

    with pytest.raises(ArchiveFormatError, match=r"no letter folders A\.\.J"):
        load_notmnist(tmp_path)


def test_letter_folders_without_images(tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "notes.txt").write_text("no pngs here")

    with pytest.raises(ArchiveFormatError, match="hold no .png files"):
        load_notmnist(tmp_path)


def test_only_broken_images(tmp_path: Path) -> None:
    (tmp_path / "B").mkdir()
    (tmp_path / "B" / "x.png").write_bytes(b"junk")

    with pytest.raises(ArchiveFormatError, match="none of the 1 images is usable"):
        load_notmnist(tmp_path, log=lambda _line: None)
