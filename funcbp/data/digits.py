"""The embedded default data set: 1,797 handwritten digits of 8x8 pixels, loaded offline.

The file ``digits.csv.gz`` beside this module is the copy of the UCI ML hand-written digits
test set that scikit-learn ships as ``load_digits`` (UCI licence CC BY 4.0; scikit-learn's
BSD-3-Clause): one row per image, 64 pixel values 0..16 in row-major order, then the label.
"""

from __future__ import annotations

import functools
import gzip
import os
from importlib import resources

import numpy as np
import numpy.typing as npt

from funcbp.data.base import DataError, Dataset, as_image_dtype

__all__ = ["DIGITS_MAX_VALUE", "DIGITS_SHAPE", "load_digits"]

DIGITS_SHAPE = (8, 8, 1)
DIGITS_MAX_VALUE = 16  # pixels count the set bits in a 4x4 block of a 32x32 bitmap: 0..16
_NUM_CLASSES = 10


def _read_csv(path: str | None) -> np.ndarray:
    """The rows of the CSV as an int64 ``(N, 65)`` array, read once per path."""
    source = resources.files("funcbp.data").joinpath("digits.csv.gz") if path is None else path
    name = "funcbp/data/digits.csv.gz" if path is None else str(path)
    try:
        with source.open("rb") if path is None else open(path, "rb") as raw:
            text = gzip.decompress(raw.read()).decode("ascii")
        table = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{name}: cannot read the digits CSV ({type(exc).__name__}: {exc}); the file is "
            "corrupt: reinstall funcbp"
        ) from exc
    if table.shape[1] != 65:
        raise DataError(
            f"{name}: expected 65 columns (64 pixels and the label), found {table.shape[1]}"
        )
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > DIGITS_MAX_VALUE:
        raise DataError(
            f"{name}: pixel values must lie in 0..{DIGITS_MAX_VALUE}, found "
            f"{pixels.min()}..{pixels.max()}"
        )
    if labels.min() < 0 or labels.max() >= _NUM_CLASSES:
        raise DataError(f"{name}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return table


@functools.cache
def _embedded() -> np.ndarray:
    """The package's own file, parsed once per process (callers get copies)."""
    return _read_csv(None)


def load_digits(
    *, dtype: npt.DTypeLike = np.float32, path: str | os.PathLike | None = None
) -> Dataset:
    """Load the 8x8 handwritten digits shipped inside funcbp (no network, no scikit-learn).

    Pixel values are kept as in the source, integers 0..16; divide by 16
    (``scale_to_unit(images, DIGITS_MAX_VALUE)``) or standardise with training statistics.

    Args:
      dtype: ``np.float32`` (default) or ``np.uint8`` for the images.
      path: another CSV of the same layout (64 pixel columns, then the label), gzipped; the
        embedded file when ``None``.

    Returns:
      ``Dataset(images, labels)``: images ``(1797, 8, 8, 1)`` NHWC of ``dtype`` with values in
      0..16, labels ``(1797,)`` int32 in 0..9, in the order scikit-learn gives.

    Raises:
      DataError: the CSV is corrupt (bad gzip, wrong column count, values out of range).

    Examples:
      >>> from funcbp.data import load_digits
      >>> images, labels = load_digits()
      >>> images.shape, images.dtype, labels.shape, labels.dtype
      ((1797, 8, 8, 1), dtype('float32'), (1797,), dtype('int32'))
    """
    table = _embedded() if path is None else _read_csv(os.fspath(path))
    images = table[:, :64].reshape(-1, *DIGITS_SHAPE)
    return Dataset(as_image_dtype(images, dtype, path or "digits"), table[:, 64].astype(np.int32))
