"""What every loader shares: the ``Dataset`` pair and the errors, each naming its file."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["DataError", "DataNotFoundError", "Dataset", "DownloadError"]


class Dataset(NamedTuple):
    """Images and their labels; unpacks as ``images, labels = dataset``.

    Attributes:
      images: ``(N, H, W, C)`` array, NHWC (batch, height, width, channels).
      labels: ``(N,)`` int32 array of class indices.
    """

    images: np.ndarray
    labels: np.ndarray


class DataError(ValueError):
    """A data file is corrupt, truncated, of the wrong format, or fails its checksum.

    The message names the file and, where sizes are involved, the expected and the actual
    size, so that the fix (delete the file and download it again, pass the right path) is plain.
    """


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set's files are in none of the places searched (and no download was asked for).

    Also a ``FileNotFoundError``, so ``except FileNotFoundError`` catches it.
    """


class DownloadError(DataError):
    """Every mirror for a file failed: no network, HTTP errors, or checksum mismatches."""


def as_image_dtype(images: np.ndarray, dtype, path) -> np.ndarray:
    """``images`` cast to uint8 or float32 (pixel values unchanged); other dtypes are refused."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise ValueError(
            f"dtype must be uint8 or float32 for {path}, got {dtype}; "
            "use scale_to_unit or standardize afterwards to change the value range"
        )
    return images.astype(dtype, copy=False)
