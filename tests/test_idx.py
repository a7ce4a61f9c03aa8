"""IDX parsing: round trips for every type code and a clear error for each defect."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from mnist_ml.idx import IdxFormatError, parse_idx, read_idx, validate_idx

TYPE_CODES = {">u1": 0x08, ">i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: np.ndarray, dtype: str = ">u1") -> bytes:
    """Encode `array` as IDX, the way the MNIST files are written."""
    header = struct.pack(f">4B{array.ndim}I", 0, 0, TYPE_CODES[dtype], array.ndim, *array.shape)
    return header + array.astype(dtype).tobytes()


@pytest.mark.parametrize("dtype", TYPE_CODES)
def test_round_trip_every_type_code(dtype: str) -> None:
    array = np.arange(24).reshape(2, 3, 4).astype(dtype)

    parsed = parse_idx(idx_bytes(array, dtype))

    assert parsed.shape == (2, 3, 4)
    assert parsed.dtype == np.dtype(dtype).newbyteorder("=")
    assert parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, array)


def test_mnist_like_images_are_writable_uint8() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)

    parsed = parse_idx(idx_bytes(images))

    assert parsed.dtype == np.uint8
    assert parsed.flags.writeable
    np.testing.assert_array_equal(parsed, images)


def test_read_idx_handles_gzip_and_plain(tmp_path: Path) -> None:
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    (tmp_path / "plain").write_bytes(idx_bytes(labels))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(labels)))

    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.gz"), labels)
    validate_idx(tmp_path / "packed.gz")


GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x08", "not an IDX file: 3 bytes"),
        (b"PK\x03\x04" + GOOD[4:], "magic starts with 504b"),
        (gzip.compress(GOOD), "looks gzip-compressed"),
        (b"\x00\x00\x0a\x01" + GOOD[4:], "unknown IDX data type code 0x0A"),
        (b"\x00\x00\x08\x00", "unsupported number of dimensions 0"),
        (b"\x00\x00\x08\x05" + bytes(20), "unsupported number of dimensions 5"),
        (GOOD[:10], "header truncated: 2 dimensions need 12 header bytes, got 10"),
        (GOOD[:-1], "truncated: expected 12 bytes of data for shape (3, 4), got 11"),
        (GOOD + b"\x00\x00", "2 trailing bytes after the 12 bytes of data"),
    ],
)
def test_malformed_input_names_source_and_problem(data: bytes, message: str) -> None:
    with pytest.raises(IdxFormatError) as caught:
        parse_idx(data, source="train-images")

    assert str(caught.value).startswith("train-images: ")
    assert message in str(caught.value)


def test_truncated_gzip_is_an_idx_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(GOOD)[:-10])

    with pytest.raises(IdxFormatError, match=f"{re.escape(str(path))}: corrupt gzip: "):
        validate_idx(path)


def test_non_idx_file_fails_validation(tmp_path: Path) -> None:
    path = tmp_path / "index.html"
    path.write_bytes(b"<html>404 Not Found</html>")

    with pytest.raises(IdxFormatError, match=f"{re.escape(str(path))}: not an IDX file: magic starts with 3c68"):
        validate_idx(path)
