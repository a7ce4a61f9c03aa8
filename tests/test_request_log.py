"""The request log with real files: what is written reads back, files rotate and expire, crashes
and a second server process do not corrupt anything, and a full queue drops instead of blocking.
The feedback store keeps one label per prediction, the first, also when threads or processes race
to label one prediction. Not covered: the HTTP route in front of it (tests/test_locked_routes.py)."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from mnist_ml.datasets import to_unit_float
from mnist_serving import request_log
from mnist_serving.request_log import FeedbackLog, RequestLog, read_feedback, read_predictions

FAST = {"flush_interval_s": 0.005}


def request(n: int, ood: tuple[int, ...] = (), seed: int = 0, uint8: bool = False) -> dict[str, np.ndarray]:
    """record()'s arrays for n images; ``ood`` lists the images flagged out-of-distribution."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    probabilities = rng.dirichlet(np.ones(10), n).astype(np.float32)
    return {
        "images": pixels if uint8 else to_unit_float(pixels),
        "class_ids": probabilities.argmax(axis=1).astype(np.int64),
        "probabilities": probabilities,
        "concept_scores": rng.random(n, dtype=np.float32),
        "is_ood": np.isin(np.arange(n), ood),
    }


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def prediction_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("requests-*.jsonl"))


@pytest.mark.parametrize("uint8", [False, True])
def test_predictions_round_trip_with_every_field_and_ood_images(tmp_path, uint8):
    arrays = request(3, ood=(1,), uint8=uint8)
    log = RequestLog(tmp_path / "log", sample_rate=0.0, seed=1)
    before = time.time()
    log.record("req-1", "7", **arrays)
    log.close()

    predictions, malformed = read_predictions(tmp_path / "log")
    assert malformed == 0 and log.dropped == 0
    assert [(p.request_id, p.index, p.version) for p in predictions] == [("req-1", i, "7") for i in range(3)]
    pixels = arrays["images"] if uint8 else np.rint(arrays["images"] * 255).astype(np.uint8)
    for i, p in enumerate(predictions):
        assert before <= p.ts <= time.time()
        assert p.predicted == arrays["class_ids"][i]
        assert np.float32(p.confidence) == arrays["probabilities"][i].max()
        assert np.float32(p.concept_score) == arrays["concept_scores"][i]
        assert p.is_ood is (i == 1)
    assert predictions[0].image is None and predictions[2].image is None
    assert predictions[1].image.dtype == np.uint8
    np.testing.assert_array_equal(predictions[1].image, pixels[1])


@pytest.mark.parametrize(("sample_rate", "kept"), [(1.0, 4), (0.0, 0)])
def test_sample_rate_decides_which_inputs_are_kept(tmp_path, sample_rate, kept):
    log = RequestLog(tmp_path, sample_rate=sample_rate, seed=0)
    log.record("req", "1", **request(4))
    log.close()
    predictions, _ = read_predictions(tmp_path)
    assert sum(p.image is not None for p in predictions) == kept


def test_knows_the_most_recent_requests_only(tmp_path):
    log = RequestLog(tmp_path, known_ids=2)
    for request_id, n in [("a", 1), ("b", 3), ("c", 2)]:
        log.record(request_id, "1", **request(n))
    assert (log.knows("a"), log.knows("b"), log.knows("c"), log.knows("never")) == (None, 3, 2, None)
    log.close()


def test_a_new_log_knows_the_requests_its_predecessors_wrote_reading_only_the_newest_files(tmp_path, monkeypatch):
    for first, last in [(0, 2), (2, 6)]:  # two earlier servers, one file each
        old = RequestLog(tmp_path)
        for k in range(first, last):
            old.record(f"req-{k}", "1", **request(k + 1))
        old.close()
    read = []
    counts = request_log._image_counts
    monkeypatch.setattr(request_log, "_image_counts", lambda path: read.append(path) or counts(path))

    new = RequestLog(tmp_path, known_ids=3)
    try:
        assert [new.knows(f"req-{k}") for k in range(6)] == [None, None, None, 4, 5, 6]
        assert read == prediction_files(tmp_path)[-1:]  # the newest file had enough ids
    finally:
        new.close()


def test_files_rotate_and_only_the_newest_are_kept(tmp_path):
    log = RequestLog(tmp_path, max_file_bytes=1, max_files=3, **FAST)  # every write fills a file
    for k in range(8):
        log.record(f"req-{k}", "1", **request(1))
        wait_for(lambda k=k: f"req-{k}" in {p.request_id for p in read_predictions(tmp_path)[0]})
        assert len(prediction_files(tmp_path)) <= 3
    log.close()

    predictions, malformed = read_predictions(tmp_path)
    assert malformed == 0
    assert [p.request_id for p in predictions] == ["req-5", "req-6", "req-7"]
    assert [f.name.rsplit("-", 1)[1] for f in prediction_files(tmp_path)] == ["0005.jsonl", "0006.jsonl", "0007.jsonl"]


def test_a_line_cut_short_by_a_crash_is_skipped_and_counted(tmp_path):
    log = RequestLog(tmp_path, sample_rate=1.0)
    log.record("req", "1", **request(3))
    log.close()
    (path,) = prediction_files(tmp_path)
    complete = path.read_bytes().splitlines(keepends=True)
    with path.open("ab") as out:
        out.write(complete[0][: len(complete[0]) // 2])  # the crash hit mid-write

    predictions, malformed = read_predictions(tmp_path)
    assert [p.index for p in predictions] == [0, 1, 2] and malformed == 1
    restarted = RequestLog(tmp_path)
    assert restarted.knows("req") == 3
    restarted.close()


def test_since_and_until_select_a_half_open_time_window(tmp_path):
    log = RequestLog(tmp_path)
    for k in range(3):
        log.record(f"req-{k}", "1", **request(1))
        time.sleep(0.002)
    log.close()
    ts = [p.ts for p in read_predictions(tmp_path)[0]]
    assert ts == sorted(ts) and len(set(ts)) == 3

    def ids(since=None, until=None):
        return [p.request_id for p in read_predictions(tmp_path, since=since, until=until)[0]]

    assert ids(since=ts[1]) == ["req-1", "req-2"]
    assert ids(until=ts[1]) == ["req-0"]
    assert ids(since=ts[0], until=ts[2]) == ["req-0", "req-1"]


JSON_TYPES = {"ts": float, "id": str, "i": int, "v": str, "cls": int, "conf": float, "score": float, "ood": bool}


def reference_read(directory: Path, since: float | None, until: float | None) -> tuple[list[tuple], list, int]:
    """The log read the plain way, one line at a time with the standard library: (each readable
    prediction's fields in JSON_TYPES order, its image or None, the unreadable lines)."""
    rows: list[tuple] = []
    malformed = 0
    for path in sorted(directory.glob("requests-*.jsonl"), key=lambda path: (path.stat().st_mtime_ns, path.name)):
        for line in path.read_bytes().splitlines(keepends=True):
            try:
                record = json.loads(line)
                fields = tuple(record[key] for key in JSON_TYPES)
                if [type(value) for value in fields] != list(JSON_TYPES.values()):
                    raise TypeError(fields)
                image = None
                if "x" in record:
                    image = np.frombuffer(base64.b64decode(record["x"]), np.uint8).reshape(28, 28)
            except (ValueError, TypeError, KeyError):
                malformed += 1
                continue
            if (since is None or fields[0] >= since) and (until is None or fields[0] < until):
                rows.append((fields, image))
    rows.sort(key=lambda row: row[0][0])
    return [fields for fields, _ in rows], [image for _, image in rows], malformed


@pytest.mark.parametrize("chunk_lines", [1, 7, 10_000])
def test_columns_match_a_line_by_line_reading_of_a_rotated_log_with_bad_lines(tmp_path, monkeypatch, chunk_lines):
    """read_columns (and read_predictions on top of it) against ``reference_read`` on a log the
    endpoint's writer rotated over several files, with a line cut short at the end of the newest
    file and, mid-file, lines the writer never writes: a missing field, an int timestamp, a
    non-object, an input of the wrong size, one with a character outside base64 (skipped by the
    decoder, so one byte short), and a valid input in non-canonical base64 (an escaped
    newline), which the bulk check leaves to the line-by-line path. Chunks of one line put each
    odd line through the bulk check alone; of 7 lines, bad lines land in some chunks and not
    others; of 10,000, each file is one chunk. Not covered: integers beyond int64 (counted
    unreadable here, read by the reference) and NaN literals (which only the standard library reads)."""
    monkeypatch.setattr(request_log, "_CHUNK_LINES", chunk_lines)
    log = RequestLog(tmp_path, max_file_bytes=6_000, sample_rate=0.3, seed=2, **FAST)
    for k in range(40):
        log.record(f"req-{k}", str(1 + k // 20), **request(1 + k % 4, ood=(0,) if k % 5 == 0 else (), seed=k))
        if k % 10 == 9:
            time.sleep(0.01)  # several writes, so several files
    log.close()
    files = sorted(prediction_files(tmp_path), key=lambda path: path.stat().st_mtime_ns)
    assert len(files) >= 3
    first, newest = files[0], files[-1]
    lines = first.read_bytes().splitlines(keepends=True)
    record = orjson.loads(next(line for line in lines if b'"x"' in line))
    odd = [
        b'{"ts":1.0,"id":"no-class","i":0,"v":"1","conf":0.5,"score":0.1,"ood":false}\n',
        orjson.dumps({**record, "ts": int(record["ts"])}) + b"\n",
        b"[1, 2, 3]\n",
        orjson.dumps({**record, "id": "short-input", "x": record["x"][:-8] + "=="}) + b"\n",
        orjson.dumps({**record, "id": "not-base64", "x": record["x"][:100] + "*" + record["x"][101:]}) + b"\n",
        orjson.dumps({**record, "id": "escaped", "x": record["x"][:500] + "\n" + record["x"][500:]}) + b"\n",
    ]
    stat = first.stat()
    first.write_bytes(b"".join(lines[:5] + odd + lines[5:]))
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # keeps its place in the file order
    stat = newest.stat()
    with newest.open("ab") as out:
        out.write(lines[0][:40])  # a crash mid-write
    os.utime(newest, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    everything = reference_read(tmp_path, None, None)
    ts = [fields[0] for fields in everything[0]]
    for since, until in [(None, None), (ts[len(ts) // 3], ts[2 * len(ts) // 3]), (ts[-1], None)]:
        fields, images, malformed = reference_read(tmp_path, since, until)
        columns, found_malformed = request_log.read_columns(tmp_path, since, until)
        assert found_malformed == malformed == 6  # the cut line and five of the odd ones
        as_read = (columns.ts, columns.request_id, columns.index, columns.version, columns.predicted)
        as_read += (columns.confidence, columns.concept_score, columns.is_ood)
        assert list(zip(*(column.tolist() for column in as_read), strict=True)) == fields
        kept = [row for row, image in enumerate(images) if image is not None]
        assert columns.kept.tolist() == kept
        assert np.array_equal(columns.images(columns.kept), np.array([images[row] for row in kept]).reshape(-1, 28, 28))
        predictions, _ = read_predictions(tmp_path, since, until)
        assert [(p.ts, p.request_id, p.index, p.version, p.predicted) for p in predictions] == [f[:5] for f in fields]
        assert all(
            p.image is None if image is None else np.array_equal(p.image, image)
            for p, image in zip(predictions, images, strict=True)
        )
    assert "escaped" in [fields[1] for fields in everything[0]]  # read, with its input
    not_kept = sorted(set(range(len(columns))) - set(columns.kept.tolist()))
    with pytest.raises(KeyError):
        columns.images(np.array(not_kept[:1] + columns.kept.tolist()[:1]))


@pytest.mark.parametrize("pids", [(1111, 2222), (3333, 3333)], ids=["two-pids", "same-pid-other-container"])
def test_two_processes_write_their_own_files_into_one_directory(tmp_path, monkeypatch, pids):
    logs = []
    for pid in pids:
        with monkeypatch.context() as patched:
            patched.setattr(os, "getpid", lambda pid=pid: pid)
            # Small files, so both writers rotate; enough of them kept that retention deletes none.
            logs.append(RequestLog(tmp_path, max_file_bytes=20_000, max_files=1000, sample_rate=0.5, seed=pid, **FAST))

    def serve(log: RequestLog, version: str) -> None:
        for k in range(150):
            log.record(f"{version}-{k}", version, **request(2, ood=(k % 3,), seed=k))

    threads = [threading.Thread(target=serve, args=(log, str(v))) for v, log in enumerate(logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for log in logs:
        log.close()

    predictions, malformed = read_predictions(tmp_path)
    assert malformed == 0 and len(predictions) == 2 * 150 * 2
    versions = [
        {orjson.loads(line)["v"] for line in path.read_bytes().splitlines()} for path in prediction_files(tmp_path)
    ]
    assert all(len(v) == 1 for v in versions)  # no file mixes the two writers
    assert set.union(*versions) == {"0", "1"}


def test_a_full_queue_drops_records_instead_of_blocking(tmp_path, monkeypatch):
    log = RequestLog(tmp_path, queue_size=1, **FAST)
    writing, release = threading.Event(), threading.Event()
    append = log._append

    def stuck_disk(data: bytes) -> None:
        writing.set()
        release.wait(5)
        append(data)

    monkeypatch.setattr(log, "_append", stuck_disk)
    log.record("first", "1", **request(1))
    assert writing.wait(5)  # the writer holds "first" and waits for the disk
    start = time.perf_counter()
    for request_id in ("queued", "dropped-1", "dropped-2"):
        log.record(request_id, "1", **request(1))
    assert time.perf_counter() - start < 0.1
    assert log.dropped == 2
    release.set()
    log.close()
    assert [p.request_id for p in read_predictions(tmp_path)[0]] == ["first", "queued"]


def test_close_is_idempotent_and_later_records_count_as_dropped(tmp_path):
    log = RequestLog(tmp_path)
    log.close()
    log.close()
    log.record("late", "1", **request(1))
    assert log.dropped == 1 and read_predictions(tmp_path) == ([], 0)


def test_requests_written_together_read_back_alike_and_a_bad_one_costs_only_itself(tmp_path):
    """The writer encodes what is queued in one go; one request whose arrays cannot be encoded
    (probabilities without a class axis, which record's length check lets through) is skipped
    alone, and the others, in their order, read back as if written one by one."""
    log = RequestLog(tmp_path, sample_rate=1.0, flush_interval_s=60)  # nothing written until close()
    good = {f"req-{k}": request(n, ood=(0,), seed=k, uint8=bool(k % 2)) for k, n in enumerate((1, 3, 2))}
    bad = request(2)
    bad["probabilities"] = bad["probabilities"][:, 0]
    log.record("req-0", "1", **good["req-0"])
    log.record("bad", "1", **bad)
    log.record("req-1", "1", **good["req-1"])
    log.record("req-2", "1", **good["req-2"])
    log.close()

    predictions, malformed = read_predictions(tmp_path)
    assert malformed == 0
    assert [(p.request_id, p.index) for p in predictions] == [
        (r, i) for r, a in good.items() for i in range(len(a["is_ood"]))
    ]
    for p in predictions:
        arrays = good[p.request_id]
        assert p.predicted == arrays["class_ids"][p.index] and p.is_ood == (p.index == 0)
        assert p.confidence == pytest.approx(float(arrays["probabilities"][p.index].max()))
        expected = arrays["images"][p.index]
        expected = expected if expected.dtype == np.uint8 else np.rint(expected * 255).astype(np.uint8)
        np.testing.assert_array_equal(p.image, expected)


def test_record_rejects_arrays_of_different_lengths(tmp_path):
    log = RequestLog(tmp_path)
    arrays = request(2)
    arrays["is_ood"] = arrays["is_ood"][:1]
    with pytest.raises(ValueError, match="2 images but 2 class ids"):
        log.record("req", "1", **arrays)
    log.close()


def test_feedback_first_label_stands_and_bad_lines_are_skipped(tmp_path):
    feedback = FeedbackLog(tmp_path / "log")
    assert read_feedback(tmp_path / "log") == {}
    assert feedback.add("req-1", 0, 3) is None
    assert feedback.add("req-1", 1, np.int64(5)) is None
    with (tmp_path / "log" / "feedback.jsonl").open("ab") as out:
        out.write(b'{"id": "req-1", "i": 0, "label": "seven"}\n{"id": "req-2", "i"')
    assert feedback.add("req-1", 0, 4) == 3  # refused: it has a label
    assert feedback.add("req-1", 0, 3) == 3  # the same again: nothing written either

    threads = [threading.Thread(target=feedback.add, args=(f"many-{k}", 0, k % 10)) for k in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    labels = read_feedback(tmp_path / "log")
    assert labels[("req-1", 0)] == 3 and labels[("req-1", 1)] == 5
    assert len(labels) == 2 + 50 and ("req-2", 0) not in labels
    # A second store on the same file (another server) sees the labels the first wrote.
    assert FeedbackLog(tmp_path / "log").add("many-7", 0, 0) == 7


def test_feedback_written_before_the_one_label_rule_reads_first_label(tmp_path):
    (tmp_path / "feedback.jsonl").write_bytes(
        b'{"ts": 1, "id": "a", "i": 0, "label": 1}\n{"ts": 2, "id": "a", "i": 0, "label": 2}\n'
    )
    assert read_feedback(tmp_path) == {("a", 0): 1}
    assert FeedbackLog(tmp_path).add("a", 0, 2) == 1


def _label_in_process(directory: Path, label: int, start: Any) -> None:
    start.wait()
    earlier = FeedbackLog(directory).add("contested", 0, label)
    (directory / f"outcome-{label}").write_text("won" if earlier is None else f"lost to {earlier}")


def test_feedback_racing_processes_exactly_one_wins(tmp_path):
    """Eight processes (as the servers of a redeploy, or replicas on one volume) label one
    prediction at the same moment, each with its own label."""
    context = multiprocessing.get_context("fork")
    start = context.Event()
    processes = [context.Process(target=_label_in_process, args=(tmp_path, label, start)) for label in range(8)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    outcomes = {label: (tmp_path / f"outcome-{label}").read_text() for label in range(8)}
    winners = [label for label, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1, outcomes
    assert all(outcome == f"lost to {winners[0]}" for label, outcome in outcomes.items() if label != winners[0])
    assert read_feedback(tmp_path) == {("contested", 0): winners[0]}
    assert len((tmp_path / "feedback.jsonl").read_text().splitlines()) == 1


def _noting_encoders(log: RequestLog, monkeypatch) -> list[str]:
    """The names of the threads that encode the log's lines, in order."""
    encoders: list[str] = []
    lines = log._lines

    def noting_the_thread(requests: list) -> list[bytes]:
        encoders.append(threading.current_thread().name)
        return lines(requests)

    monkeypatch.setattr(log, "_lines", noting_the_thread)
    return encoders


def test_while_requests_keep_coming_the_recording_thread_encodes_them(tmp_path, monkeypatch):
    """Once an interval, the thread that records encodes (so the writer thread never holds the
    GIL for long while the server works, see RequestLog)."""
    log = RequestLog(tmp_path, **FAST)
    encoders = _noting_encoders(log, monkeypatch)
    arrays = request(1)
    recorder = threading.Thread(
        target=lambda: [(log.record(f"busy-{k}", "1", **arrays), time.sleep(0.001)) for k in range(200)],
        name="recorder",
    )
    recorder.start()
    recorder.join()
    log.close()
    assert encoders.count("recorder") >= 5, encoders  # 200 records over many intervals
    assert [p.request_id for p in read_predictions(tmp_path)[0]] == [f"busy-{k}" for k in range(200)]


def test_a_quiet_log_is_written_without_close(tmp_path, monkeypatch):
    """When nothing more is recorded, the writer thread encodes what is left itself: the last
    request before a quiet spell is on disk within an interval or so, with the log still open."""
    log = RequestLog(tmp_path, flush_interval_s=0.3)
    encoders = _noting_encoders(log, monkeypatch)
    log.record("quiet", "1", **request(1))  # within the first interval: not the recorder's to encode
    wait_for(lambda: [p.request_id for p in read_predictions(tmp_path)[0]] == ["quiet"])
    assert encoders == ["request-log-writer"]
    log.close()
