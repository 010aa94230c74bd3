"""MNIST and Fashion-MNIST from their IDX files: found on disk, or downloaded when asked.

Searched, in order (the first directory holding all four files wins):

1. ``root`` when given (``root`` itself, then ``root/<kind>``), and nothing else;
2. ``$FUNCBP_DATA/<kind>`` and ``$FUNCBP_DATA``;
3. ``~/.cache/funcbp/<kind>``;
4. ``./data/<kind>``;
5. for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian's
   ``dataset-fashion-mnist`` package).

Each file may be gzipped (``train-images-idx3-ubyte.gz``) or not (``train-images-idx3-ubyte``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from funcbp.data.base import DataError, DataNotFoundError, Dataset, as_image_dtype
from funcbp.data.download import download_file
from funcbp.data.idx import read_idx

__all__ = ["MNIST_FILES", "RESOURCES", "Resource", "load_mnist", "mnist_search_dirs"]

Kind = Literal["mnist", "fashion_mnist"]

# (split, part) -> the file's standard name without ".gz".
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_SIZES = {"train": 60_000, "test": 10_000}
_IMAGE_SHAPE = (28, 28)


class Resource(NamedTuple):
    """Where to download a data set's gzipped files, and their published MD5 checksums.

    Attributes:
      mirrors: base URLs, tried in order; a file's URL is ``mirror + name + ".gz"``.
      md5: ``{name + ".gz": md5 hex digest}`` of the gzipped files as published.
    """

    mirrors: tuple[str, ...]
    md5: dict[str, str]


# MD5s as published: MNIST by torchvision (datasets/mnist.py), Fashion-MNIST by Zalando's README
# (also in Debian's /usr/share/doc/dataset-fashion-mnist/README.md.gz). Debian recompresses its
# copies, so its .gz files have other digests; files found on disk are checked for structure
# (shape, dtype, label range), downloads for their checksum as well.
RESOURCES: dict[str, Resource] = {
    "mnist": Resource(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": Resource(
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}
_SYSTEM_DIRS = {"fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),)}


def _check_kind(kind: str) -> None:
    if kind not in RESOURCES:
        raise ValueError(f"kind must be one of {sorted(RESOURCES)}, got {kind!r}")


def mnist_search_dirs(root: str | os.PathLike | None = None, *, kind: Kind = "mnist") -> list[Path]:
    """The directories ``load_mnist`` looks in, in order (see the module docstring).

    Examples:
      >>> from funcbp.data import mnist_search_dirs
      >>> [str(p) for p in mnist_search_dirs("/data", kind="mnist")]
      ['/data', '/data/mnist']
    """
    _check_kind(kind)
    if root is not None:
        return [Path(root), Path(root) / kind]
    dirs = []
    if os.environ.get("FUNCBP_DATA"):
        env = Path(os.environ["FUNCBP_DATA"]).expanduser()
        dirs += [env / kind, env]
    dirs += [Path.home() / ".cache" / "funcbp" / kind, Path("data") / kind]
    dirs += list(_SYSTEM_DIRS.get(kind, ()))
    return dirs


def _find(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists (uncompressed first)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(dirs: Sequence[Path]) -> dict[tuple[str, str], Path] | None:
    """The four files from the first directory that holds them all, or None."""
    for directory in dirs:
        found = {key: _find(directory, name) for key, name in MNIST_FILES.items()}
        if all(found.values()):
            return found
    return None


def _download_dir(root: str | os.PathLike | None, kind: str) -> Path:
    if root is not None:
        return Path(root)
    if os.environ.get("FUNCBP_DATA"):
        return Path(os.environ["FUNCBP_DATA"]).expanduser() / kind
    return Path.home() / ".cache" / "funcbp" / kind


def _download(directory: Path, kind: str, timeout: float) -> dict[tuple[str, str], Path]:
    resource = RESOURCES[kind]
    found = {}
    for key, name in MNIST_FILES.items():
        existing = _find(directory, name)
        if existing is not None:
            found[key] = existing
            continue
        gz = f"{name}.gz"
        urls = [mirror + gz for mirror in resource.mirrors]
        found[key] = download_file(urls, directory / gz, md5=resource.md5[gz], timeout=timeout)
    return found


def _load_split(images_path: Path, labels_path: Path, n: int | None, dtype) -> Dataset:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), "
            f"found {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{labels_path}: expected uint8 labels of shape (N,), found {labels.dtype} "
            f"{labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in "
            f"{images_path}; expected one label per image"
        )
    if n is not None and (images.shape[0] != n or images.shape[1:] != _IMAGE_SHAPE):
        raise DataError(
            f"{images_path}: expected shape ({n}, 28, 28), found {images.shape}; "
            "the file is not the data set it is named after"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: labels must lie in 0..9, found max {labels.max()}")
    return Dataset(as_image_dtype(images[..., None], dtype, images_path), labels.astype(np.int32))


def load_mnist(
    root: str | os.PathLike | None = None,
    *,
    kind: Kind = "mnist",
    download: bool = False,
    dtype: npt.DTypeLike = np.uint8,
    strict_sizes: bool = True,
    timeout: float = 60.0,
) -> tuple[Dataset, Dataset]:
    """Load MNIST or Fashion-MNIST (train and test) from IDX files, gzipped or not.

    Args:
      root: directory with the four files (``train-images-idx3-ubyte[.gz]``,
        ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
        ``t10k-labels-idx1-ubyte[.gz]``), or ``root/<kind>``; when ``None`` the usual places
        are searched (``mnist_search_dirs``).
      kind: ``"mnist"`` or ``"fashion_mnist"``.
      download: fetch missing files when none are found (``root``, else ``$FUNCBP_DATA/<kind>``,
        else ``~/.cache/funcbp/<kind>``), verified against the published MD5s. Never
        downloads unless asked.
      dtype: ``np.uint8`` (default, pixels 0..255) or ``np.float32`` (same values).
      strict_sizes: require 60,000 training and 10,000 test images of 28x28 (set ``False``
        for subsets in the same format).
      timeout: seconds per connection when downloading.

    Returns:
      ``(train, test)``, each a ``Dataset(images, labels)``: images ``(N, 28, 28, 1)`` NHWC,
      labels ``(N,)`` int32 in 0..9; N is 60,000 and 10,000.

    Raises:
      DataNotFoundError: the files are in none of the searched directories and
        ``download=False``; the message lists the directories and how to get the files.
      DataError: a file is corrupt or truncated, has a wrong magic number, or its label count
        differs from its image count.
      DownloadError: ``download=True`` and every mirror failed for some file.

    Examples:
      >>> from funcbp.data import load_mnist
      >>> train, test = load_mnist(kind="fashion_mnist")  # doctest: +SKIP
      >>> train.images.shape, test.labels.shape  # doctest: +SKIP
      ((60000, 28, 28, 1), (10000,))
    """
    _check_kind(kind)
    dirs = mnist_search_dirs(root, kind=kind)
    found = _locate(dirs)
    if found is None and download:
        found = _download(_download_dir(root, kind), kind, timeout)
    if found is None:
        hint = (
            " or `apt-get install dataset-fashion-mnist` (Debian)"
            if kind == "fashion_mnist"
            else ""
        )
        partial = [
            f"{d} lacks {', '.join(n for n in MNIST_FILES.values() if _find(d, n) is None)}"
            for d in dirs
            if any(_find(d, n) for n in MNIST_FILES.values())
        ]
        if partial:
            hint += "; incomplete: " + "; ".join(partial)
        raise DataNotFoundError(
            f"{kind}: no directory holds all four IDX files ({', '.join(MNIST_FILES.values())}, "
            f"each optionally .gz); searched: {', '.join(str(d) for d in dirs)}. "
            f"Pass root=..., set $FUNCBP_DATA, call load_mnist(download=True){hint}."
        )
    train, test = (
        _load_split(
            found[(split, "images")],
            found[(split, "labels")],
            _SIZES[split] if strict_sizes else None,
            dtype,
        )
        for split in ("train", "test")
    )
    return train, test
