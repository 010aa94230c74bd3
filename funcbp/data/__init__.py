"""Data for funcbp: the embedded digits, MNIST-format IDX files, batching, splits, scaling.

Everything random takes an explicit ``jax.random`` key; loaders return numpy arrays in NHWC.
See ``docs/data.md``.
"""

from funcbp.data.augment import random_shift, shift_images
from funcbp.data.base import DataError, DataNotFoundError, Dataset, DownloadError
from funcbp.data.batching import batch_epoch, batches, num_batches, permutation, split
from funcbp.data.digits import DIGITS_MAX_VALUE, DIGITS_SHAPE, load_digits
from funcbp.data.download import download_file, file_digest
from funcbp.data.idx import read_idx, write_idx
from funcbp.data.mnist import MNIST_FILES, RESOURCES, Resource, load_mnist, mnist_search_dirs
from funcbp.data.preprocess import Standardizer, fit_standardize, scale_to_unit, standardize

__all__ = [
    "DIGITS_MAX_VALUE",
    "DIGITS_SHAPE",
    "MNIST_FILES",
    "RESOURCES",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "DownloadError",
    "Resource",
    "Standardizer",
    "batch_epoch",
    "batches",
    "download_file",
    "file_digest",
    "fit_standardize",
    "load_digits",
    "load_mnist",
    "mnist_search_dirs",
    "num_batches",
    "permutation",
    "random_shift",
    "read_idx",
    "scale_to_unit",
    "shift_images",
    "split",
    "standardize",
    "write_idx",
]
