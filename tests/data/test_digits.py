"""load_digits: the embedded 8x8 digits, against the CSV read independently and scikit-learn."""

from __future__ import annotations

import csv
import gzip
import io
from importlib import resources

import numpy as np
import pytest

from funcbp.data import DIGITS_MAX_VALUE, DataError, load_digits


def _rows_from_csv():
    """The package file parsed with the csv module: a reference independent of numpy.loadtxt."""
    raw = resources.files("funcbp.data").joinpath("digits.csv.gz").read_bytes()
    text = gzip.decompress(raw).decode("ascii")
    return [[int(v) for v in row] for row in csv.reader(io.StringIO(text))]


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_shapes_dtypes_and_values(dtype):
    images, labels = load_digits(dtype=dtype)
    assert images.shape == (1797, 8, 8, 1) and images.dtype == dtype
    assert labels.shape == (1797,) and labels.dtype == np.int32
    rows = _rows_from_csv()
    assert len(rows) == 1797 and all(len(r) == 65 for r in rows)
    expected = np.array([r[:64] for r in rows]).reshape(1797, 8, 8, 1)
    np.testing.assert_array_equal(images, expected)  # row-major: pixel (i, j) is column 8i + j
    np.testing.assert_array_equal(labels, [r[64] for r in rows])
    assert images.min() == 0 and images.max() == DIGITS_MAX_VALUE == 16


def test_class_counts():
    _, labels = load_digits()
    # The UCI test set that scikit-learn ships: about 180 images of each digit.
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 174 and counts.max() <= 183


def test_matches_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    reference = datasets.load_digits()
    images, labels = load_digits()
    np.testing.assert_array_equal(images[..., 0], reference.images)
    np.testing.assert_array_equal(labels, reference.target)


def test_returns_fresh_arrays():
    first = load_digits()
    first.images[:] = -1
    assert load_digits().images.min() == 0


def test_other_dtype_refused():
    with pytest.raises(ValueError, match="dtype must be uint8 or float32"):
        load_digits(dtype=np.int64)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"not gzip", "cannot read the digits CSV"),
        (gzip.compress(b"1,2,3\n4,5,6\n"), "expected 65 columns .* found 3"),
        (gzip.compress(b",".join([b"17"] * 64 + [b"1"]) + b"\n"), "pixel values must lie in 0..16"),
        (gzip.compress(b",".join([b"0"] * 64 + [b"12"]) + b"\n"), "labels must lie in 0..9"),
        (gzip.compress(b"a,b\n"), "cannot read the digits CSV"),
    ],
    ids=["not_gzip", "columns", "pixels", "labels", "text"],
)
def test_corrupt_csv(tmp_path, content, pattern):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as info:
        load_digits(path=path)
    assert str(path) in str(info.value)
