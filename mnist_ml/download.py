"""Fetch a file from a list of mirrors, verified and written atomically.

Downloads are the flakiest step of the pipeline, so every byte is checked before
it reaches its final name, and each mirror's failure is reported precisely
enough to act on without rerunning with a debugger.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests
import urllib3

from mnist_ml.atomic import atomic_file
from mnist_ml.log import Log

CHUNK_SIZE = 1 << 20
UNKNOWN_LENGTH_REPORT_EVERY = 8 << 20
GZIP_MAGIC = b"\x1f\x8b"
HINT = (
    "hint: check network access and the mirrors configured for this dataset, "
    "or add a file:// mirror pointing at a local copy, "
    "e.g. file:///path/to/shared/data/mnist"
)

Validator = Callable[[Path], None]


class CorruptFileError(ValueError):
    """A compressed file cannot be decoded, e.g. a truncated gzip stream."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"corrupt gzip: {path}: {detail}")
        self.path = path
        self.detail = detail


class DownloadError(RuntimeError):
    """Every mirror failed; the message lists each URL with its reason."""

    def __init__(self, filename: str, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = list(failures)
        if failures:
            lines = [f"could not fetch {filename} from any of {len(failures)} mirror(s):"]
            lines += [f"  {url}: {reason}" for url, reason in failures]
        else:
            lines = [f"could not fetch {filename}: no mirrors configured"]
        super().__init__("\n".join([*lines, HINT]))


@dataclass(frozen=True)
class FetchResult:
    """Where a verified file now lives and where it came from."""

    path: Path
    url: str | None  # None when served from the cache
    sha256: str  # of the payload: decompressed bytes if gzip
    cached: bool
    bytes: int  # size of the file on disk


@dataclass(frozen=True)
class _Plan:
    """What every attempt needs to know, bundled to keep signatures short."""

    final: Path
    expected_sha256: str | None
    validate: Validator | None
    timeout: float
    log: Log


class _MirrorFailure(Exception):
    """One attempt at one URL failed; `transient` says whether a retry may help."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


def payload_sha256(path: Path) -> str:
    """SHA-256 of the payload: the decompressed bytes for gzip, else the raw bytes.

    Hashing the payload lets one checksum cover a `.gz` and a plain copy of the
    same data, and decompressing to the end proves the gzip stream is complete.
    """
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        if not is_gzip:
            return hashlib.file_digest(raw, "sha256").hexdigest()
        try:
            with gzip.GzipFile(fileobj=raw) as unzipped:
                return hashlib.file_digest(unzipped, "sha256").hexdigest()
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise CorruptFileError(path, str(exc)) from exc


def fetch_verified(
    filename: str,
    mirrors: Sequence[str],
    dest_dir: Path,
    *,
    payload_sha256: str | None = None,
    validate: Validator | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    log: Log = print,
) -> FetchResult:
    """Return `dest_dir/filename`, verified, downloading it from the first mirror that works.

    A cached copy is reused only if it passes the same checks as a fresh download.
    Transient failures are retried `retries` more times per mirror with exponential
    backoff; permanent ones (4xx, missing file, bad checksum, corrupt data, failed
    `validate`) move straight on to the next mirror. Raises DownloadError naming
    every mirror and why it failed.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    plan = _Plan(dest_dir / filename, payload_sha256, validate, timeout, log)
    cached = _from_cache(plan)
    if cached is not None:
        return cached
    failures: list[tuple[str, str]] = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{filename}"
        try:
            return _fetch_with_retries(url, plan, retries, backoff)
        except _MirrorFailure as exc:
            log(f"{url} failed: {exc.reason}")
            failures.append((url, exc.reason))
    raise DownloadError(filename, failures)


def _from_cache(plan: _Plan) -> FetchResult | None:
    """The existing final file if it verifies; None (after saying why) otherwise."""
    if not plan.final.exists():
        return None
    try:
        digest = _verify(plan.final, plan)
    except _MirrorFailure as exc:
        plan.log(f"cached {plan.final} failed verification ({exc.reason}); downloading again")
        return None
    plan.log(f"using cached {plan.final}")
    return FetchResult(plan.final, None, digest, True, plan.final.stat().st_size)


def _verify(path: Path, plan: _Plan) -> str:
    """Check payload checksum and `validate`; return the payload sha256."""
    try:
        digest = payload_sha256(path)
    except CorruptFileError as exc:
        raise _MirrorFailure(f"corrupt gzip: {exc.detail}", transient=False) from exc
    expected = plan.expected_sha256
    if expected is not None and digest != expected.lower():
        raise _MirrorFailure(f"sha256 mismatch: expected {expected}, got {digest}", transient=False)
    if plan.validate is not None:
        try:
            plan.validate(path)
        # Whatever the caller's validator raises, it is rejecting the file.
        except Exception as exc:
            raise _MirrorFailure(f"validation failed: {exc}", transient=False) from exc
    return digest


def _fetch_with_retries(url: str, plan: _Plan, retries: int, backoff: float) -> FetchResult:
    """Try one URL, retrying only transient failures, sleeping backoff * 2**attempt."""
    attempt = 0
    while True:
        try:
            return _attempt(url, plan)
        except _MirrorFailure as exc:
            if not exc.transient:
                raise
            if attempt >= retries:
                tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                raise _MirrorFailure(f"{exc.reason} (gave up after {tries})", transient=True) from exc
            delay = backoff * 2**attempt
            plan.log(f"  {exc.reason}; retrying in {delay:g}s")
            time.sleep(delay)
        attempt += 1


def _attempt(url: str, plan: _Plan) -> FetchResult:
    """Download into a temp file next to the target, verify, then rename into place."""
    plan.log(f"fetching {url}")
    started = time.monotonic()
    with atomic_file(plan.final) as part:
        size = _transfer(url, part, plan)
        part.flush()
        digest = _verify(Path(part.name), plan)
    plan.log(f"  saved {plan.final} ({size / 1e6:.1f} MB in {time.monotonic() - started:.1f}s)")
    return FetchResult(plan.final, url, digest, False, size)


def _transfer(url: str, out: BinaryIO, plan: _Plan) -> int:
    """Copy the bytes at `url` into `out`; return how many were written."""
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        return _transfer_http(url, out, plan)
    if scheme == "file":
        return _transfer_file(url, out, plan)
    raise _MirrorFailure(f"unsupported URL scheme {scheme!r}", transient=False)


def _transfer_http(url: str, out: BinaryIO, plan: _Plan) -> int:
    """Stream an HTTP(S) body byte-for-byte (no Content-Encoding decoding)."""
    try:
        with requests.get(url, stream=True, timeout=plan.timeout) as resp:
            _check_status(resp)
            chunks = resp.raw.stream(CHUNK_SIZE, decode_content=False)
            return _copy(chunks, out, _content_length(resp), plan.log)
    except (requests.Timeout, urllib3.exceptions.TimeoutError) as exc:
        raise _MirrorFailure(f"timed out after {plan.timeout:g}s", transient=True) from exc
    except (requests.ConnectionError, urllib3.exceptions.HTTPError) as exc:
        raise _MirrorFailure(f"connection failed: {_cause(exc)}", transient=True) from exc
    except requests.RequestException as exc:
        raise _MirrorFailure(f"request failed: {exc}", transient=False) from exc


def _cause(exc: Exception) -> str:
    """Unwrap urllib3's "Max retries exceeded" wrapper, which only repeats the URL."""
    wrapped = exc.args[0] if exc.args else None
    return str(getattr(wrapped, "reason", None) or exc)


def _check_status(resp: requests.Response) -> None:
    """Raise for error statuses; only 5xx and 429 are worth retrying."""
    if resp.ok:
        return
    code = resp.status_code
    reason = f"HTTP {code} {resp.reason or ''}".rstrip()
    raise _MirrorFailure(reason, transient=code >= 500 or code == 429)


def _content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _transfer_file(url: str, out: BinaryIO, plan: _Plan) -> int:
    """Copy a local file named by a file:// URL."""
    source = Path(url2pathname(urlparse(url).path))
    try:
        fd = os.open(source, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise _MirrorFailure(f"file not found: {source}", transient=False) from exc
    except OSError as exc:
        raise _MirrorFailure(f"cannot open {source}: {exc}", transient=False) from exc
    with os.fdopen(fd, "rb") as src:
        chunks = iter(lambda: src.read(CHUNK_SIZE), b"")
        return _copy(chunks, out, os.fstat(fd).st_size, plan.log)


def _copy(chunks: Iterable[bytes], out: BinaryIO, total: int | None, log: Log) -> int:
    """Write chunks to `out`, logging progress every ~10% (or 8 MiB if size unknown)."""
    step = max(total // 10, 1) if total else UNKNOWN_LENGTH_REPORT_EVERY
    done = 0
    next_report = step
    for chunk in chunks:
        out.write(chunk)
        done += len(chunk)
        if done >= next_report:
            log(_progress_line(done, total))
            next_report = (done // step + 1) * step
    return done


def _progress_line(done: int, total: int | None) -> str:
    if not total:
        return f"  {done / 1e6:.1f} MB"
    return f"  {done / 1e6:.1f} / {total / 1e6:.1f} MB ({100 * done // total}%)"


def mirror_fingerprint(mirrors: Sequence[str], filename: str, timeout: float = 10.0) -> str | None:
    """A cheap token that changes when ``filename`` changes at the first mirror that answers:
    size and modification time for file:// URLs, ETag, Last-Modified and length from an HTTP
    HEAD otherwise. None when no mirror answers (unknown is not a change)."""
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{filename}"
        if urlparse(url).scheme == "file":
            source = Path(url2pathname(urlparse(url).path))
            if source.is_file():
                stat = source.stat()
                return f"{url} size={stat.st_size} mtime={stat.st_mtime_ns}"
            continue
        try:
            response = requests.head(url, timeout=timeout, allow_redirects=True)
        except requests.RequestException:
            continue
        if response.ok:
            headers = [response.headers.get(h, "") for h in ("ETag", "Last-Modified", "Content-Length")]
            return f"{url} " + " ".join(headers)
    return None


def folder_fingerprint(folder: Path, pattern: str = "**/*") -> str:
    """Count, total size and newest modification of the files under ``folder``."""
    files = [p for p in folder.glob(pattern) if p.is_file()] if folder.is_dir() else []
    stats = [p.stat() for p in files]
    newest = max((s.st_mtime_ns for s in stats), default=0)
    return f"files={len(files)} bytes={sum(s.st_size for s in stats)} newest={newest}"
