"""fetch_verified against a real local HTTP server and file:// mirrors."""

from __future__ import annotations

import gzip
import hashlib
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mnist_ml.download import (
    CorruptFileError,
    DownloadError,
    FetchResult,
    fetch_verified,
    payload_sha256,
)
from mnist_ml.idx import validate_idx

if TYPE_CHECKING:
    from conftest import HttpMirror

FILENAME = "labels-idx1-ubyte.gz"
RAW = struct.pack(">4BI", 0, 0, 0x08, 1, 10) + bytes(range(10))
GOOD = gzip.compress(RAW)
GOOD_SHA = hashlib.sha256(RAW).hexdigest()


def publish(mirror: HttpMirror, subdir: str, data: bytes) -> str:
    """Put `data` at <subdir>/FILENAME on the server; return that mirror's base URL."""
    folder = mirror.root / subdir
    folder.mkdir()
    (folder / FILENAME).write_bytes(data)
    return f"{mirror.url}/{subdir}"


def fetch(mirrors: list[str], dest: Path, logs: list[str] | None = None, **kw) -> FetchResult:
    """fetch_verified with the test defaults: checksum + IDX validation, fast backoff."""
    kw.setdefault("payload_sha256", GOOD_SHA)
    kw.setdefault("validate", validate_idx)
    kw.setdefault("backoff", 0.01)
    log = logs.append if logs is not None else lambda _line: None
    return fetch_verified(FILENAME, mirrors, dest, log=log, **kw)


def refused_url() -> str:
    """A URL on a local port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def part_files(dest: Path) -> list[Path]:
    """Temporaries left beside the downloads (dot-named, as every atomic write's)."""
    return list(dest.glob(".*"))


def test_http_download_is_verified_then_served_from_cache(http_mirror: HttpMirror, tmp_path: Path) -> None:
    base = publish(http_mirror, "good", GOOD)
    dest = tmp_path / "dest" / "nested"

    first = fetch([base], dest)

    assert first == FetchResult(dest / FILENAME, f"{base}/{FILENAME}", GOOD_SHA, False, len(GOOD))
    assert (dest / FILENAME).read_bytes() == GOOD
    second = fetch([base], dest)
    assert second == FetchResult(dest / FILENAME, None, GOOD_SHA, True, len(GOOD))
    assert len(http_mirror.requests) == 1
    assert part_files(dest) == []


def test_falls_back_to_next_mirror_after_404(http_mirror: HttpMirror, tmp_path: Path) -> None:
    good = publish(http_mirror, "good", GOOD)
    missing = f"{http_mirror.url}/missing"
    logs: list[str] = []

    result = fetch([missing, good], tmp_path, logs)

    assert result.url == f"{good}/{FILENAME}"
    assert http_mirror.requests == [f"/missing/{FILENAME}", f"/good/{FILENAME}"]  # 404 not retried
    assert any(f"{missing}/{FILENAME} failed: HTTP 404" in line for line in logs)


def test_all_mirrors_failing_lists_every_url_and_reason(http_mirror: HttpMirror, tmp_path: Path) -> None:
    wrong = publish(http_mirror, "wrong", gzip.compress(RAW[:-1] + b"\xff"))
    missing_dir = tmp_path / "nowhere"
    mirrors = [f"{http_mirror.url}/missing", wrong, refused_url(), missing_dir.as_uri()]
    dest = tmp_path / "dest"

    with pytest.raises(DownloadError) as caught:
        fetch(mirrors, dest, retries=1)

    lines = str(caught.value).splitlines()
    expected = [
        "HTTP 404 File not found",
        f"sha256 mismatch: expected {GOOD_SHA}, got ",
        "connection failed: ",
        f"file not found: {missing_dir / FILENAME}",
    ]
    for mirror, reason, line in zip(mirrors, expected, lines[1:5], strict=True):
        assert line.startswith(f"  {mirror}/{FILENAME}: {reason}")
    assert lines[3].endswith("(gave up after 2 attempts)")
    assert "file://" in lines[-1]
    assert [url for url, _ in caught.value.failures] == [f"{m}/{FILENAME}" for m in mirrors]
    assert list(dest.iterdir()) == []


def test_wrong_checksum_moves_on_to_next_mirror(http_mirror: HttpMirror, tmp_path: Path) -> None:
    wrong = publish(http_mirror, "wrong", gzip.compress(RAW[:-1] + b"\xff"))
    good = publish(http_mirror, "good", GOOD)
    logs: list[str] = []

    result = fetch([wrong, good], tmp_path, logs)

    assert result.url == f"{good}/{FILENAME}"
    assert (tmp_path / FILENAME).read_bytes() == GOOD
    assert len(http_mirror.requests) == 2  # checksum failures are not retried
    assert any("sha256 mismatch" in line for line in logs)


def test_truncated_gzip_leaves_nothing_behind(http_mirror: HttpMirror, tmp_path: Path) -> None:
    base = publish(http_mirror, "cut", GOOD[: len(GOOD) // 2])
    dest = tmp_path / "dest"

    with pytest.raises(DownloadError, match="corrupt gzip: "):
        fetch([base], dest, payload_sha256=None)

    assert not (dest / FILENAME).exists()
    assert part_files(dest) == []


def test_validator_rejection_is_permanent(http_mirror: HttpMirror, tmp_path: Path) -> None:
    base = publish(http_mirror, "good", GOOD)

    def reject(path: Path) -> None:
        raise ValueError(f"{path.name} is not wanted")

    with pytest.raises(DownloadError, match="validation failed: .*is not wanted"):
        fetch([base], tmp_path, validate=reject)
    assert len(http_mirror.requests) == 1
    assert not (tmp_path / FILENAME).exists()


def test_file_mirror(tmp_path: Path) -> None:
    shared = tmp_path / "shared data"
    shared.mkdir()
    (shared / FILENAME).write_bytes(GOOD)

    result = fetch([shared.as_uri()], tmp_path / "dest")

    assert result.url == f"{shared.as_uri()}/{FILENAME}"
    assert result.path.read_bytes() == GOOD


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_status_is_retried(http_mirror: HttpMirror, tmp_path: Path, status: int) -> None:
    base = publish(http_mirror, "flaky", GOOD)
    http_mirror.scripted[f"/flaky/{FILENAME}"] = [status]
    logs: list[str] = []

    result = fetch([base], tmp_path, logs)

    assert result.sha256 == GOOD_SHA
    assert len(http_mirror.requests) == 2
    assert any(f"HTTP {status}" in line and "retrying in 0.01s" in line for line in logs)


def test_transient_failure_gives_up_after_retries(http_mirror: HttpMirror, tmp_path: Path) -> None:
    base = publish(http_mirror, "down", GOOD)
    http_mirror.scripted[f"/down/{FILENAME}"] = [500, 500, 500]

    with pytest.raises(DownloadError, match=r"HTTP 500 .*\(gave up after 3 attempts\)"):
        fetch([base], tmp_path, retries=2)
    assert len(http_mirror.requests) == 3


def test_timeout_is_reported(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(DownloadError, match=r"timed out after 0\.2s"):
            fetch([url], tmp_path, timeout=0.2, retries=0)


def test_stale_cache_is_downloaded_again(http_mirror: HttpMirror, tmp_path: Path) -> None:
    base = publish(http_mirror, "good", GOOD)
    (tmp_path / FILENAME).write_bytes(b"half a file")
    logs: list[str] = []

    result = fetch([base], tmp_path, logs)

    assert not result.cached
    assert (tmp_path / FILENAME).read_bytes() == GOOD
    assert any("failed verification" in line for line in logs)


def test_no_mirrors(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="no mirrors configured"):
        fetch([], tmp_path)


def test_payload_sha256_hashes_decompressed_bytes(tmp_path: Path) -> None:
    plain, packed = tmp_path / "plain", tmp_path / "packed.gz"
    plain.write_bytes(RAW)
    packed.write_bytes(GOOD)

    assert payload_sha256(plain) == payload_sha256(packed) == GOOD_SHA


def test_payload_sha256_rejects_truncated_gzip(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gz"
    cut.write_bytes(GOOD[:-6])

    with pytest.raises(CorruptFileError, match=r"corrupt gzip: .*cut\.gz"):
        payload_sha256(cut)
