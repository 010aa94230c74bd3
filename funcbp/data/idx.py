"""IDX files, the format of MNIST and Fashion-MNIST: read, write, check.

An IDX file is a 4-byte magic number, ``ndim`` big-endian uint32 dimensions, then the data in
row-major order, big-endian::

    byte 0, 1   0x00 0x00
    byte 2      dtype code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
                0x0E float64
    byte 3      ndim
    4 * ndim    the dimensions, each a big-endian uint32
    the rest    prod(dims) * itemsize bytes of data

Files may be gzipped (recognised by the gzip magic bytes ``1f 8b`` or a ``.gz`` name).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from funcbp.data.base import DataError

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

# dtype code -> big-endian numpy dtype, as in LeCun's description of the format.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is a gzip; a broken gzip is a DataError."""
    raw = path.read_bytes()
    if not (raw[:2] == _GZIP_MAGIC or path.suffix == ".gz"):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(
            f"{path}: cannot decompress gzip ({type(exc).__name__}: {exc}); the file is corrupt "
            "or truncated: delete it and download it again"
        ) from exc


def _parse_header(data: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, dims, header size in bytes) from the start of an IDX file."""
    if len(data) < 4:
        raise DataError(
            f"{path}: truncated IDX file: expected a 4-byte header, found {len(data)} bytes"
        )
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: wrong magic number 0x{data[:4].hex()}: an IDX file starts with two zero "
            "bytes (e.g. 0x00000803 for MNIST images); is this an IDX file?"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(
            f"{path}: wrong magic number 0x{data[:4].hex()}: unknown IDX dtype code 0x{code:02X} "
            f"(known: {known})"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_size} bytes, "
            f"found {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    return IDX_DTYPES[code], dims, header_size


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array in native byte order.

    Args:
      path: the file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
      An array of shape ``dims`` from the header and the dtype its code names
      (``uint8`` for MNIST and Fashion-MNIST).

    Raises:
      DataError: wrong magic number, unknown dtype code, a gzip that fails to decompress, or a
        data size that differs from ``prod(dims) * itemsize`` (truncated or padded file). The
        message names the file and the expected and actual sizes.
      FileNotFoundError: no file at ``path``.

    Examples:
      >>> import numpy as np, tempfile, os
      >>> from funcbp.data import read_idx, write_idx
      >>> path = os.path.join(tempfile.mkdtemp(), "x-idx2-ubyte.gz")
      >>> write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
      >>> read_idx(path)
      array([[0, 1, 2],
             [3, 4, 5]], dtype=uint8)
    """
    path = Path(path)
    data = _read_bytes(path)
    dtype, dims, header_size = _parse_header(data, path)
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header_size
    if actual != expected:
        what = "truncated" if actual < expected else "too long"
        raise DataError(
            f"{path}: {what} IDX file: header says shape {dims} of {dtype.newbyteorder('=')} "
            f"= {expected} bytes of data, found {actual} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size, count=math.prod(dims))
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzipped when ``path`` ends in ``.gz``.

    Args:
      path: destination file.
      array: uint8, int8, int16, int32, float32 or float64 array of at most 255 dimensions.

    Examples:
      >>> import numpy as np, tempfile, os
      >>> from funcbp.data import write_idx
      >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
      >>> write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
      >>> open(path, "rb").read().hex()
      '0000080100000003070201'
    """
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"write_idx: dtype {array.dtype} has no IDX code; cast to one of "
            f"{sorted(str(d) for d in codes)}"
        )
    if array.ndim > 255:
        raise ValueError(f"write_idx: IDX allows at most 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(IDX_DTYPES[code], copy=False).tobytes(order="C")
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
