"""A record of every prediction the endpoint serves, and the ground-truth labels sent back for them.

Serving must not wait for the disk: ``RequestLog.record`` only picks the inputs to keep (flagged
ones and a sample) and keeps the request's arrays; once an interval they are turned into JSON lines
in one go, and a background thread appends them to files. Only the kept inputs are held, as uint8
pixels: what waits for the writer is small whatever the batch size, and bounded in number.
Each process writes its own files (``requests-<UTC time>-<pid>-<seq>.jsonl``), so the two servers
that overlap during a redeploy never share one. A crash can lose what was still queued and leave
a half-written last line, which the readers skip; lines written before it stay intact, because
a file is only ever appended to, one whole batch of lines per ``write()``.

Reading is by column (``read_columns``): a window of a million predictions is one numpy array
per field, not an object per line, and the kept inputs stay base64 text until someone asks for
their pixels. Lines are parsed in chunks and checked a column at a time; a chunk with an
unreadable line is parsed again line by line, so what counts as unreadable does not depend on
which path read it (tests/test_request_log.py compares both with a plain line-by-line reader).
"""

from __future__ import annotations

import binascii
import contextlib
import fcntl
import gc
import itertools
import logging
import operator
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import orjson

from mnist_serving.grouping import consecutive_groups

FEEDBACK = "feedback.jsonl"
PREFIX = "requests-"
SUFFIX = ".jsonl"
IMAGE_SHAPE = (28, 28)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
_NO_PIXELS = np.zeros((0, PIXELS), np.uint8)
MAX_LINES_PER_WRITE = 20_000  # bounds the writer's memory when it catches up on a backlog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedPrediction:
    ts: float  # unix seconds
    request_id: str
    index: int  # position of the image in its request
    version: str  # model version that served it
    predicted: int
    confidence: float  # top class probability
    concept_score: float
    is_ood: bool
    image: np.ndarray | None  # uint8 [28, 28] when the input was kept, else None


class _Request(NamedTuple):
    ts: float
    request_id: str
    version: str
    kept: np.ndarray  # indexes of the images whose input is logged
    pixels: np.ndarray  # uint8 [len(kept), PIXELS]: those inputs
    class_ids: np.ndarray
    probabilities: np.ndarray
    concept_scores: np.ndarray
    is_ood: np.ndarray


class RequestLog:
    """Append-only JSON-lines log of predictions.

    ``record`` keeps the request's arrays. Once per ``flush_interval_s``, the thread that records
    (the server's event loop) turns everything recorded since into lines in one vectorized call
    (``_encode``: about 4 us per single-image request, so well under a millisecond per interval)
    and hands them to a writer thread, which only appends them to the file. While nothing is
    recorded, the writer thread encodes what is left itself, so the last predictions before a
    quiet spell are on disk within an interval too.

    Why the encoding is not the writer thread's: the writer then held the GIL for about half a ms
    every interval, right when the event loop wanted it back from an ONNX Runtime call, and the
    server answered about a third fewer single-image requests than with the log off (1,640-1,740
    against 2,460-2,710 a second, side by side with wrk; now 3,209 against 3,354,
    benchmarks/serving.py).

    Call ``close()`` when serving stops: it writes what is still waiting. The result arrays passed
    to ``record`` are kept as they are until written, so the caller must not modify them after.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_file_bytes: int = 64 * 2**20,
        max_files: int = 20,
        sample_rate: float = 0.05,
        flush_interval_s: float = 0.05,  # short: one interval's encoding stays under a ms (_encode)
        queue_size: int = 100_000,
        known_ids: int = 100_000,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        if max_files < 1:
            raise ValueError(f"max_files must be at least 1 (the file being written), got {max_files}")
        self.directory = Path(directory)
        self.max_file_bytes, self.max_files = max_file_bytes, max_files
        self.sample_rate, self.flush_interval_s = sample_rate, flush_interval_s
        self.queue_size, self.known_ids = queue_size, known_ids
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # guards _known, _pending, _waiting, _encoded_at and _dropped
        self._known: OrderedDict[str, int] = OrderedDict()
        self._pending: list[_Request] = []  # recorded, not encoded yet
        self._waiting = 0  # requests recorded and not yet taken by the writer: at most queue_size
        self._encoded_at = time.monotonic()
        self._dropped = 0
        self._encoding = threading.Lock()  # one encoder at a time, so chunks reach the writer in order
        self._chunks: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()  # lines, requests; None: stop
        self._closing = threading.Event()
        self._pid = os.getpid()
        self._seq = 0
        self._file: Any = None  # the open prediction file, opened on the first write after a rotation
        self._path: Path | None = None
        self._size = 0
        self._preload_known_ids()
        self._writer = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._writer.start()

    def record(
        self,
        request_id: str,
        version: str,
        images: np.ndarray,
        class_ids: np.ndarray,
        probabilities: np.ndarray,
        concept_scores: np.ndarray,
        is_ood: np.ndarray,
    ) -> None:
        """Keep one served request for writing; never waits for the disk. ``images`` are the model
        input: [N, 28, 28] (or [N, 784]) uint8 pixels or floats in [0, 1]; the inputs flagged OOD,
        and others with the sample rate, are copied as uint8 pixels, the rest is not kept. Once an
        interval, the caller also encodes what was recorded (see the class)."""
        n = len(images)
        if not len(class_ids) == len(probabilities) == len(concept_scores) == len(is_ood) == n:
            raise ValueError(
                f"request {request_id!r}: {n} images but {len(class_ids)} class ids, {len(probabilities)} "
                f"probability rows, {len(concept_scores)} concept scores and {len(is_ood)} OOD flags"
            )
        kept = np.flatnonzero(np.asarray(is_ood, dtype=bool).reshape(-1) | (self._rng.random(n) < self.sample_rate))
        pixels = _uint8_pixels(images[kept]) if len(kept) else _NO_PIXELS
        item = _Request(
            time.time(), request_id, version, kept, pixels, class_ids, probabilities, concept_scores, is_ood
        )
        with self._lock:
            self._remember(request_id, n)
            if self._closing.is_set() or self._waiting >= self.queue_size:  # after close() nobody would write it
                self._dropped += 1
                return
            self._pending.append(item)
            self._waiting += 1
            due = time.monotonic() - self._encoded_at >= self.flush_interval_s
        if due:
            self._encode_pending()

    def knows(self, request_id: str) -> int | None:
        """The number of images of ``request_id`` if it is one of the last ``known_ids`` requests
        served (by this process, or found in the directory at start-up), else None."""
        with self._lock:
            return self._known.get(request_id)

    def close(self) -> None:
        """Write everything waiting, then stop the writer thread. Safe to call twice."""
        if not self._closing.is_set():
            self._closing.set()  # from here on, record() drops: what is pending now is all there is
            self._encode_pending()
            self._chunks.put(None)
        self._writer.join()

    @property
    def dropped(self) -> int:
        """Requests not logged because too many waited for the disk (or the log was closed)."""
        return self._dropped

    def _remember(self, request_id: str, n: int) -> None:
        """Call with ``_lock`` held."""
        self._known[request_id] = n
        self._known.move_to_end(request_id)
        if len(self._known) > self.known_ids:
            self._known.popitem(last=False)

    def _preload_known_ids(self) -> None:
        """Remember the newest requests already in the directory, so feedback for requests the
        previous server served is still accepted after a redeploy. Reads the newest files only."""
        per_file: list[dict[str, int]] = []
        for path in reversed(_prediction_files(self.directory)):
            per_file.append(_image_counts(path))
            if sum(map(len, per_file)) >= self.known_ids:
                break
        with self._lock:
            for counts in reversed(per_file):
                for request_id, n in counts.items():
                    self._remember(request_id, n)

    def _encode_pending(self) -> None:
        """Encode what was recorded and hand it to the writer, at most ``MAX_LINES_PER_WRITE``
        lines (but at least one request) per chunk, so one write's memory stays bounded."""
        with self._encoding:
            with self._lock:
                requests, self._pending = self._pending, []
                self._encoded_at = time.monotonic()
            for chunk in consecutive_groups(requests, _lines_of_request, MAX_LINES_PER_WRITE):
                self._chunks.put((b"".join(self._lines(chunk)), len(chunk)))

    def _run(self) -> None:
        while True:
            try:
                item = self._chunks.get(timeout=self.flush_interval_s)
            except queue.Empty:  # nothing recorded for an interval: encode the rest ourselves
                with self._lock:
                    idle = bool(self._pending) and time.monotonic() - self._encoded_at >= self.flush_interval_s
                if idle:
                    self._encode_pending()
                continue
            if item is None:
                break
            data, requests = item
            with self._lock:
                self._waiting -= requests
            if not data:
                continue
            try:
                self._append(data)
            except OSError:
                log.exception("could not write %d prediction bytes to %s; they are lost", len(data), self.directory)
        if self._file is not None:
            self._file.close()

    def _lines(self, requests: list[_Request]) -> list[bytes]:
        """One JSON line per image, encoded for all the requests at once. Bad arrays cost their
        own request only, never the others or the writer thread."""
        try:
            return _encode(requests)
        except Exception:
            if len(requests) > 1:  # find the bad one: encode each request on its own
                return [line for request in requests for line in self._lines([request])]
            log.exception("could not encode request %r for the request log; it is skipped", requests[0].request_id)
            return []

    def _append(self, data: bytes) -> None:
        if self._file is None:
            self._open_next()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)
        if self._size >= self.max_file_bytes:
            self._file.close()
            self._file, self._size = None, 0
            self._seq += 1

    def _open_next(self) -> None:
        """Create a new file of our own (never one another writer has), then apply retention."""
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            path = self.directory / f"{PREFIX}{stamp}-{self._pid}-{self._seq:04d}{SUFFIX}"
            try:
                self._file = open(path, "ab", opener=_create_new)  # noqa: SIM115 - kept open across writes
                break
            except FileExistsError:  # same pid in another container sharing the volume
                self._seq += 1
        self._path = path
        self._delete_oldest()

    def _delete_oldest(self) -> None:
        """Keep at most ``max_files`` prediction files, counting the one being written."""
        others = [path for path in _prediction_files(self.directory) if path != self._path]
        for path in others[: max(0, len(others) + 1 - self.max_files)]:
            path.unlink(missing_ok=True)


class FeedbackLog:
    """Ground-truth labels for served predictions, appended to <directory>/feedback.jsonl, at
    most one per prediction (request id, index): the first label stands.

    ``add`` decides under an exclusive ``flock`` on the file: it reads what other writers
    (threads, the two servers of a redeploy, replicas sharing the volume) appended since it last
    looked, then appends its line only if the prediction has no label yet, as one ``write()``.
    Of two writers racing to label one prediction exactly one wins, and the file never holds two
    labels for one prediction. The labels read so far stay in memory (one small entry each)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FEEDBACK
        self._labels: dict[tuple[str, int], int] = {}
        self._offset = 0  # bytes of the file read into _labels
        self._lock = threading.Lock()  # guards _labels and _offset among this process's threads

    def add(self, request_id: str, index: int, label: int) -> int | None:
        """Store ``label`` unless the prediction has one: returns the label it already had (and
        writes nothing), or None when this one was stored."""
        key = (request_id, int(index))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a+b") as out:
            fcntl.flock(out, fcntl.LOCK_EX)  # released when the file closes
            self._catch_up(out)
            if key in self._labels:
                return self._labels[key]
            line = orjson.dumps({"ts": time.time(), "id": request_id, "i": key[1], "label": int(label)})
            if _ends_mid_line(out):  # a writer crashed mid-line: end that line rather than extend it
                line = b"\n" + line
            out.write(line + b"\n")
            out.flush()
            self._labels[key] = int(label)
            self._offset = out.tell()
        return None

    def _catch_up(self, file: BinaryIO) -> None:
        """Read the lines appended since the last look (all of them if the file was replaced)."""
        size = file.seek(0, os.SEEK_END)
        if size < self._offset:
            self._labels, self._offset = {}, 0
        file.seek(self._offset)
        _first_labels(file.read(size - self._offset).splitlines(keepends=True), self._labels)
        self._offset = size


@dataclass(frozen=True)
class PredictionColumns:
    """Logged predictions as one array per field: row ``r`` of every array is one prediction,
    oldest first. Inputs stay base64 text until ``images`` decodes the rows asked for."""

    ts: np.ndarray  # float64, unix seconds
    request_id: np.ndarray  # object (str)
    index: np.ndarray  # int64: position of the image in its request
    version: np.ndarray  # object (str): model version that served it
    predicted: np.ndarray  # int64
    confidence: np.ndarray  # float64: top class probability
    concept_score: np.ndarray  # float64
    is_ood: np.ndarray  # bool
    kept: np.ndarray  # int64, ascending: the rows whose input was kept
    encoded_inputs: np.ndarray  # object (str): base64 of those inputs, each known to decode to PIXELS bytes

    def __len__(self) -> int:
        return len(self.ts)

    def images(self, rows: np.ndarray) -> np.ndarray:
        """uint8 [len(rows), 28, 28]: the inputs of ``rows`` (each one of ``kept``; KeyError if not)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        at = np.searchsorted(self.kept, rows)
        if np.any(at >= len(self.kept)) or not np.array_equal(self.kept[at], rows):
            raise KeyError(f"rows without a kept input among {rows.tolist()[:10]}")
        pixels = b"".join(binascii.a2b_base64(text) for text in self.encoded_inputs[at])
        return np.frombuffer(pixels, np.uint8).reshape(len(rows), *IMAGE_SHAPE)


_KEYS = ("ts", "id", "i", "v", "cls", "conf", "score", "ood")
_TYPES = (float, str, int, str, int, float, float, bool)  # the JSON types we write, checked exactly
_DTYPES = (np.float64, object, np.int64, object, np.int64, np.float64, np.float64, bool)
_ENCODED = 4 * -(-PIXELS // 3)  # base64 characters of one input: 1,046 digits and "=="
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_PARSE_ERRORS = (ValueError, TypeError, KeyError, OverflowError)
_CHUNK_LINES = 32_768  # parsed at once: bounds the memory of their dicts, and the lines one bad line slows
_GET_FIELDS = operator.itemgetter(*_KEYS)


class _Part(NamedTuple):
    """Some lines' predictions as columns (``_KEYS`` order), their kept rows and inputs."""

    columns: list[np.ndarray]
    kept: np.ndarray
    encoded_inputs: np.ndarray


def read_columns(
    directory: Path, since: float | None = None, until: float | None = None
) -> tuple[PredictionColumns, int]:
    """Every logged prediction with ``since <= ts < until``, oldest first (a request's images in
    order), as columns, and the number of lines that could not be read (a crash mid-write leaves
    one): those are skipped, never fatal. A line is read when it is a JSON object with each field
    of the JSON type we write (an integer outside int64 counts as unreadable) and an ``"x"``, if
    any, that base64-decodes to one 28x28 input."""
    parts = [_part([()] * len(_KEYS), [], [])]  # so that an empty directory concatenates
    malformed = 0
    with _collector_paused():
        for path in _prediction_files(directory):
            lines = list(_lines_of(path))
            body = lines[:-1]  # only the last line can be cut short: parsed on its own
            for chunk in [*(body[at : at + _CHUNK_LINES] for at in range(0, len(body), _CHUNK_LINES)), lines[-1:]]:
                part, bad = _parse(chunk)
                parts.append(part)
                malformed += bad
    offsets = np.cumsum([0] + [len(part.columns[0]) for part in parts])
    columns = [np.concatenate([part.columns[k] for part in parts]) for k in range(len(_KEYS))]
    kept = np.concatenate([part.kept + offset for part, offset in zip(parts, offsets[:-1], strict=True)])
    encoded = np.concatenate([part.encoded_inputs for part in parts])
    ts = columns[0]
    inside = np.ones(len(ts), bool)
    if since is not None:
        inside &= ts >= since
    if until is not None:
        inside &= ts < until
    rows = np.flatnonzero(inside)
    order = rows[np.argsort(ts[rows], kind="stable")]  # stable: a request's images stay in order
    position = np.full(len(ts), -1, np.int64)
    position[order] = np.arange(len(order))
    moved = position[kept]
    still = np.flatnonzero(moved >= 0)
    by_row = still[np.argsort(moved[still], kind="stable")]
    return (
        PredictionColumns(*(column[order] for column in columns), moved[by_row], encoded[by_row]),
        malformed,
    )


def read_predictions(
    directory: Path, since: float | None = None, until: float | None = None
) -> tuple[list[LoggedPrediction], int]:
    """``read_columns`` as one ``LoggedPrediction`` per prediction (slow for large logs: for tests
    and small windows)."""
    columns, malformed = read_columns(directory, since, until)
    images = dict(zip(columns.kept.tolist(), columns.images(columns.kept), strict=True))
    c = columns
    fields = (c.ts, c.request_id, c.index, c.version, c.predicted, c.confidence, c.concept_score, c.is_ood)
    predictions = [
        LoggedPrediction(*values, image=images.get(row))
        for row, values in enumerate(zip(*(column.tolist() for column in fields), strict=True))
    ]
    return predictions, malformed


def _parse(lines: list[bytes]) -> tuple[_Part, int]:
    """The readable lines' predictions and the number of unreadable lines. All lines are checked
    at once, column by column; only when one fails is each line parsed on its own."""
    try:
        return _parse_all(lines), 0
    except _PARSE_ERRORS:
        pass
    rows: list[tuple[Any, ...]] = []
    malformed = 0
    for line in lines:
        try:
            rows.append(_checked(orjson.loads(line)))
        except _PARSE_ERRORS:
            malformed += 1
    kept = [row for row, values in enumerate(rows) if values[-1] is not None]
    columns = list(zip(*rows, strict=True))[: len(_KEYS)] if rows else [()] * len(_KEYS)
    return _part(columns, kept, [rows[row][-1] for row in kept]), malformed


def _parse_all(lines: list[bytes]) -> _Part:
    """All the lines' predictions; raises one of ``_PARSE_ERRORS`` if any line is unreadable,
    or has an ``"x"`` that is not exactly one canonical base64 input (left to ``_checked``)."""
    records = list(map(orjson.loads, lines))
    columns = list(zip(*map(_GET_FIELDS, records), strict=True)) if records else [()] * len(_KEYS)
    for column, kind in zip(columns, _TYPES, strict=True):
        if not set(map(type, column)) <= {kind}:
            raise TypeError(f"a {kind.__name__} column holds another type")
    more = np.flatnonzero(np.fromiter(map(len, records), np.int64, len(records)) > len(_KEYS)).tolist()
    with_input = [(row, records[row]["x"]) for row in more if "x" in records[row]]  # the others have only _KEYS
    encoded = [text for _, text in with_input]
    if not set(map(type, encoded)) <= {str} or not set(map(len, encoded)) <= {_ENCODED}:
        raise ValueError("an input that is not one base64 image")
    text = "".join(encoded).encode("ascii")
    padding = np.frombuffer(text, np.uint8).reshape(len(encoded), _ENCODED)[:, -2:]
    if text.translate(None, _BASE64) or text.count(b"=") != padding.size or not np.all(padding == ord("=")):
        raise ValueError("an input that is not canonical base64")
    return _part(columns, [row for row, _ in with_input], encoded)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Parsing makes a dict per line, and no reference cycles: left on, the cyclic garbage
    collector would walk the growing heap again and again (about a third of the read time).
    It is process-wide, so other threads' garbage waits for the end too."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _checked(record: Any) -> tuple[Any, ...]:
    """One line's fields in ``_KEYS`` order, then its base64 input or None; raises if unreadable."""
    values = tuple(_field(record, key, kind) for key, kind in zip(_KEYS, _TYPES, strict=True))
    encoded = None
    if "x" in record:
        encoded = _field(record, "x", str)
        size = len(binascii.a2b_base64(encoded))
        if size != PIXELS:
            raise ValueError(f"an input of {size} bytes, not {PIXELS}")
    for value, kind in zip(values, _TYPES, strict=True):
        if kind is int and not -(2**63) <= value < 2**63:
            raise OverflowError(f"{value} does not fit an int64")
    return (*values, encoded)


def _part(columns: Iterable[Iterable[Any]], kept: list[int], encoded: list[str]) -> _Part:
    arrays = [np.array(column, dtype) for column, dtype in zip(columns, _DTYPES, strict=True)]
    return _Part(arrays, np.array(kept, np.int64), np.array(encoded, object))


def read_feedback(directory: Path) -> dict[tuple[str, int], int]:
    """(request_id, index) -> label; the first label for a prediction stands, as ``FeedbackLog``
    decides (files written before it refused a second label may hold more). Bad lines are skipped."""
    labels: dict[tuple[str, int], int] = {}
    _first_labels(_lines_of(Path(directory) / FEEDBACK), labels)
    return labels


def _first_labels(lines: Iterable[bytes], labels: dict[tuple[str, int], int]) -> None:
    """Add each whole line's label to ``labels`` unless its prediction has one. A line cut short
    by a crash (no newline) or malformed is skipped."""
    for line in lines:
        if not line.endswith(b"\n"):
            continue
        try:
            record = orjson.loads(line)
            labels.setdefault((_field(record, "id", str), _field(record, "i", int)), _field(record, "label", int))
        except (ValueError, TypeError, KeyError):
            continue


def _encode(requests: list[_Request]) -> list[bytes]:
    """The requests' lines, in order, with the ``"x"`` member for their kept inputs.

    The work is done once for all the requests recorded in an interval, not once per request:
    each column of per-image values (over all of them) is serialized in one call and spliced into
    a per-request template (about 4 us per single-image request). Only orjson output goes in, so
    every line is valid JSON."""
    counts = [len(request.class_ids) for request in requests]
    columns = (
        np.concatenate([request.class_ids for request in requests]),
        np.concatenate([request.probabilities for request in requests]).max(axis=1),
        np.concatenate([request.concept_scores for request in requests]),
        np.concatenate([np.asarray(request.is_ood, dtype=bool).reshape(-1) for request in requests]),
    )
    if not len(columns[0]) == len(columns[1]) == len(columns[2]) == len(columns[3]):
        raise ValueError(f"the columns of {len(requests)} requests have different lengths")
    heads = [
        b'{"ts":%s,"id":%s,"i":' % (orjson.dumps(request.ts), orjson.dumps(request.request_id)) for request in requests
    ]
    versions = [orjson.dumps(request.version) for request in requests]
    kept = {
        start + i: b',"x":"%s"' % binascii.b2a_base64(row, newline=False)
        for start, request in zip(itertools.accumulate(counts[:-1], initial=0), requests, strict=True)
        for i, row in zip(request.kept.tolist(), request.pixels, strict=True)
    }
    per_image = ((head, i, version) for head, version, n in zip(heads, versions, counts, strict=True) for i in range(n))
    rows = zip(per_image, *map(_json_items, columns), strict=True)
    return [
        b'%s%d,"v":%s,"cls":%s,"conf":%s,"score":%s,"ood":%s%s}\n' % (head, i, version, *row, kept.get(line, b""))
        for line, ((head, i, version), *row) in enumerate(rows)
    ]


def _json_items(column: np.ndarray) -> list[bytes]:
    """The JSON text of each number or bool in a column (none of them contains a comma)."""
    if not len(column):
        return []  # b"[]" would split into one empty item
    return orjson.dumps(np.ravel(column), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")


def _lines_of_request(request: _Request) -> int:
    return len(request.class_ids)


def _uint8_pixels(images: np.ndarray) -> np.ndarray:
    """Inputs as uint8 [N, PIXELS]: uint8 pixels as sent, floats in [0, 1] scaled back to 0..255."""
    if images.dtype != np.uint8:
        images = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images.reshape(len(images), PIXELS)


def _image_counts(path: Path) -> dict[str, int]:
    """request_id -> number of images, for the requests in one prediction file, oldest first.
    A request's lines are contiguous and end with index N - 1."""
    counts: dict[str, int] = {}
    for line in _lines_of(path):
        try:
            record = orjson.loads(line)
            counts[_field(record, "id", str)] = _field(record, "i", int) + 1
        except (ValueError, TypeError, KeyError):
            continue
    return counts


def _prediction_files(directory: Path) -> list[Path]:
    """Prediction files, least recently written first. Modification time, not the name, orders
    them: during a redeploy the old server's current file is older by name but still written."""
    stamped = []
    for path in Path(directory).glob(f"{PREFIX}*{SUFFIX}"):
        try:
            stamped.append((path.stat().st_mtime_ns, path.name, path))
        except FileNotFoundError:  # deleted by the other server's retention meanwhile
            continue
    return [path for _, _, path in sorted(stamped)]


def _lines_of(path: Path) -> Iterator[bytes]:
    """The file's lines; none if it is missing or was deleted meanwhile."""
    try:
        with open(path, "rb") as lines:
            yield from lines
    except FileNotFoundError:
        return


def _ends_mid_line(file: BinaryIO) -> bool:
    size = file.seek(0, os.SEEK_END)
    return size > 0 and os.pread(file.fileno(), 1, size - 1) != b"\n"


def _create_new(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_EXCL, 0o644)


def _field(record: dict[str, Any], key: str, kind: type) -> Any:
    """``record[key]`` if it has exactly the JSON type we write (so ``true`` is not an int)."""
    value = record[key]
    if type(value) is not kind:
        raise TypeError(f"{key!r} should be a {kind.__name__}, got {value!r}")
    return value
