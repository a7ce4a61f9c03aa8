"""Extract and load the notMNIST letters archive (A..J glyphs, 28x28 grayscale PNGs).

Archives come from the internet, so extraction refuses anything that could write
outside its destination, and loading tolerates the dataset's known broken PNGs
while reporting exactly which ones were skipped.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from mnist_ml.atomic import swap_in
from mnist_ml.image_folder import decode_labelled
from mnist_ml.log import Log

LETTERS = "ABCDEFGHIJ"
ARCHIVE_DIR = "notMNIST_small"
MARKER = ".safe_extract.sha256"
PROGRESS_EVERY = 2000


class UnsafeArchiveError(ValueError):
    """An archive member could write outside the destination or is not a plain file/dir."""


class ArchiveFormatError(ValueError):
    """An archive or extracted tree does not have the expected shape."""


@dataclass
class NotMnist:
    """Decoded letters plus an account of what could not be used."""

    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # int64, 0..9 for A..J
    skipped: list[str]  # "<relative path>: <reason>"
    per_class: dict[str, int]


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a tar(.gz) under `dest` all-or-nothing and return the extracted root.

    Every member is checked before anything is written. The archive is unpacked
    into a temp dir inside `dest` and renamed into place, so a failure leaves
    nothing behind. A root whose marker records this archive's sha256 is reused;
    any other existing root is replaced.
    """
    digest = _file_sha256(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            name, wrapped = _root_name(archive, members)
            root = dest / name
            if root.resolve() == archive.resolve():
                raise ArchiveFormatError(f"{archive}: extracting to {root} would replace the archive")
            if not _is_complete(root, digest):
                _extract_into_place(tar, members, root, wrapped, digest)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveFormatError(f"{archive}: cannot read tar archive: {exc}") from exc
    return root


def validate_archive(archive: Path) -> None:
    """Download hook: the whole tar stream reads (no truncated gzip) and every member is safe."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveFormatError(f"{archive}: cannot read tar archive: {exc}") from exc
    for member in members:
        _check_member(archive, member)
    _root_name(archive, members)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse members that escape the destination or are not regular files/dirs."""
    problem = _member_problem(member)
    if problem:
        raise UnsafeArchiveError(f"{archive}: refusing member {member.name!r}: {problem}")


def _member_problem(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute():
        return "absolute path"
    if ".." in path.parts:
        return "path escapes the destination with '..'"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if member.isdev():
        return "device or fifo"
    if not (member.isfile() or member.isdir()):
        return f"unsupported member type {member.type!r}"
    return None


def _root_name(archive: Path, members: Sequence[tarfile.TarInfo]) -> tuple[str, bool]:
    """Name of the extracted root, and whether members must be wrapped in a new dir.

    An archive with a single top-level directory extracts to that directory;
    anything else is wrapped in a directory named after the archive.
    """
    if not members:
        raise ArchiveFormatError(f"{archive}: archive is empty")
    paths = [PurePosixPath(m.name).parts for m in members]
    tops = {parts[0] for parts in paths if parts}
    if len(tops) == 1 and any(len(parts) > 1 for parts in paths):
        return tops.pop(), False
    return re.sub(r"\.(tgz|tar(\.\w+)?)$", "", archive.name), True


def _is_complete(root: Path, digest: str) -> bool:
    marker = root / MARKER
    return marker.is_file() and marker.read_text().strip() == digest


def _extract_into_place(
    tar: tarfile.TarFile,
    members: Sequence[tarfile.TarInfo],
    root: Path,
    wrapped: bool,
    digest: str,
) -> None:
    """Unpack into a temp dir beside `root`, mark it complete, then swap it in."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".extract-"))
    try:
        tar.extractall(tmp, members=members, filter="data")
        extracted = tmp if wrapped else tmp / root.name
        (extracted / MARKER).write_text(digest + "\n")
        swap_in(extracted, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_notmnist(root: Path, *, log: Log = print) -> NotMnist:
    """Decode every 28x28 PNG under `root`'s letter folders into arrays.

    `root` may contain `notMNIST_small/A..J` or the letter folders directly.
    Unreadable or wrong-size images are skipped and listed in `skipped` rather
    than failing the run, because the public archive ships a few broken files.
    """
    labelled = _labelled_files(root, log)
    images, label_array, skipped = decode_labelled(labelled, _display, log, PROGRESS_EVERY)
    if not len(images):
        raise ArchiveFormatError(f"{root}: none of the {len(labelled)} images is usable, e.g. {skipped[0]}")
    per_class = {letter: int(np.count_nonzero(label_array == i)) for i, letter in enumerate(LETTERS)}
    log(f"loaded {len(images)} images, skipped {len(skipped)}; per class {per_class}")
    return NotMnist(images, label_array, skipped, per_class)


def _labelled_files(root: Path, log: Log) -> list[tuple[int, Path]]:
    """(label, path) for every PNG in the letter folders, in a deterministic order."""
    base = root / ARCHIVE_DIR if (root / ARCHIVE_DIR).is_dir() else root
    folders = [(i, base / letter) for i, letter in enumerate(LETTERS)]
    present = [(i, folder) for i, folder in folders if folder.is_dir()]
    if not present:
        raise ArchiveFormatError(f"{root}: no letter folders {LETTERS[0]}..{LETTERS[-1]} found in {base}")
    if len(present) < len(folders):
        missing = "".join(LETTERS[i] for i, folder in folders if not folder.is_dir())
        log(f"warning: {base} has no folder for letters {missing}")
    labelled = [(i, path) for i, folder in present for path in sorted(folder.glob("*.png"))]
    if not labelled:
        raise ArchiveFormatError(f"{root}: the letter folders in {base} hold no .png files")
    return labelled


def _display(path: Path) -> str:
    """`notMNIST_small/A/x.png` whichever directory the caller passed as root."""
    return path.relative_to(path.parents[2]).as_posix()
