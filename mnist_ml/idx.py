"""Parse the IDX format used by MNIST, strictly.

Every malformed input becomes an IdxFormatError that names the source and the
exact problem, so a bad download fails loudly instead of as a numpy traceback.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
HEADER_SIZE = 4
MAX_NDIM = 4
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """The bytes are not a well-formed IDX file."""


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a native-byte-order array shaped like the header says.

    The payload must be exactly prod(dims) * itemsize bytes: a short payload means
    a truncated download, a long one means the header and data disagree.
    """
    dtype, dims = _parse_header(data, source)
    count = math.prod(dims)
    expected = count * dtype.itemsize
    offset = HEADER_SIZE + 4 * len(dims)
    got = len(data) - offset
    if got < expected:
        raise IdxFormatError(f"{source}: truncated: expected {expected} bytes of data for shape {dims}, got {got}")
    if got > expected:
        raise IdxFormatError(
            f"{source}: {got - expected} trailing bytes after the {expected} bytes of data for shape {dims}"
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return values.astype(dtype.newbyteorder("=")).reshape(dims)


def _parse_header(data: bytes, source: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Validate magic, type code and dimensions; return (dtype, dims)."""
    if len(data) < HEADER_SIZE:
        raise IdxFormatError(f"{source}: not an IDX file: {len(data)} bytes, need at least a {HEADER_SIZE}-byte header")
    if data[0] or data[1]:
        hint = " (looks gzip-compressed; use read_idx)" if data[:2] == GZIP_MAGIC else ""
        raise IdxFormatError(f"{source}: not an IDX file: magic starts with {data[:2].hex()}, expected 0000{hint}")
    code, ndim = data[2], data[3]
    if code not in DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in DTYPES)
        raise IdxFormatError(f"{source}: unknown IDX data type code 0x{code:02X} (known: {known})")
    if not 1 <= ndim <= MAX_NDIM:
        raise IdxFormatError(f"{source}: unsupported number of dimensions {ndim} (expected 1..{MAX_NDIM})")
    header_end = HEADER_SIZE + 4 * ndim
    if len(data) < header_end:
        raise IdxFormatError(
            f"{source}: header truncated: {ndim} dimensions need {header_end} header bytes, got {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[HEADER_SIZE:header_end])
    return DTYPES[code], dims


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gunzipping it first if it starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise IdxFormatError(f"{path}: corrupt gzip: {exc}") from exc
    return parse_idx(data, source=str(path))


def validate_idx(path: Path) -> None:
    """Raise IdxFormatError unless `path` holds a well-formed IDX file (fetch_verified hook)."""
    read_idx(path)
