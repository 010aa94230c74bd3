"""read_idx, write_idx and load_mnist on IDX files the tests write by hand, and the real
Fashion-MNIST when Debian's package is installed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from funcbp.data import (
    DataError,
    DataNotFoundError,
    load_mnist,
    mnist_search_dirs,
    read_idx,
    write_idx,
)

# dtype code -> big-endian dtype, written out from the IDX format description.
CODES = [
    (0x08, ">u1"),
    (0x09, ">i1"),
    (0x0B, ">i2"),
    (0x0C, ">i4"),
    (0x0D, ">f4"),
    (0x0E, ">f8"),
]


def idx_bytes(array: np.ndarray, code: int = 0x08, dtype: str = ">u1") -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def sample(dtype: str, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype).kind
    if kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(np.dtype(dtype))
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(("code", "dtype"), CODES, ids=[d for _, d in CODES])
def test_read_idx_every_dtype(tmp_path, code, dtype, gz):
    array = sample(dtype, (3, 4, 2))
    path = tmp_path / ("a.gz" if gz else "a")
    data = idx_bytes(array, code, dtype)
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.shape == (3, 4, 2)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_read_idx_recognises_gzip_without_suffix(tmp_path):
    array = sample(">u1", (2, 5))
    path = tmp_path / "labels-idx2-ubyte"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize("shape", [(0,), (5,), (2, 0, 3), (1, 1, 1, 1)])
def test_read_idx_edge_shapes(tmp_path, shape):
    array = sample(">u1", shape)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    out = read_idx(tmp_path / "a")
    assert out.shape == shape
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(("code", "dtype"), CODES, ids=[d for _, d in CODES])
def test_write_idx_bytes_match_the_format(tmp_path, code, dtype):
    array = sample(dtype, (2, 3), seed=1).astype(np.dtype(dtype).newbyteorder("="))
    write_idx(tmp_path / "a", array)
    assert (tmp_path / "a").read_bytes() == idx_bytes(array, code, dtype)
    write_idx(tmp_path / "a.gz", array)
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == idx_bytes(array, code, dtype)


def test_write_idx_refuses_unknown_dtype(tmp_path):
    with pytest.raises(ValueError, match="uint16 has no IDX code"):
        write_idx(tmp_path / "a", np.zeros(3, np.uint16))


# ---- corrupt files: each a DataError naming the file ---------------------------------------

GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
CORRUPT = {
    "wrong_magic": (b"\x12\x34" + GOOD[2:], r"wrong magic number 0x12340803"),
    "unknown_dtype_code": (GOOD[:2] + b"\x0a" + GOOD[3:], r"unknown IDX dtype code 0x0A"),
    "empty": (b"", r"expected a 4-byte header, found 0 bytes"),
    "truncated_header": (GOOD[:10], r"3 dimensions need 16 bytes, found 10"),
    "truncated_data": (GOOD[:-5], r"truncated .*\(2, 3, 4\).* 24 bytes of data, found 19"),
    "too_long": (GOOD + b"\x00", r"too long .* 24 bytes of data, found 25"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_idx_raises_data_error(tmp_path, case, gz):
    data, pattern = CORRUPT[case]
    path = tmp_path / (f"{case}.gz" if gz else case)
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=pattern) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda z: z[: len(z) // 2],  # truncated gzip stream
        lambda z: z[:-8] + b"\xff" * 8,  # bad CRC and length trailer
        lambda z: z[:10] + b"\x00" * (len(z) - 10),  # garbage deflate data
        lambda z: b"not a gzip at all, but named .gz",
    ],
    ids=["truncated", "bad_crc", "garbage", "not_gzip"],
)
def test_broken_gzip_raises_data_error(tmp_path, mangle):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(mangle(gzip.compress(GOOD)))
    with pytest.raises(DataError, match="cannot decompress gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# ---- load_mnist on small files in MNIST layout ----------------------------------------------

NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def write_mnist(directory: Path, n_train=6, n_test=4, *, gz=True, seed=0, **override):
    """Four IDX files as MNIST names them; ``override`` replaces an array by name."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    arrays.update(override)
    directory.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        data = idx_bytes(np.asarray(array))
        path = directory / (NAMES[key] + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.fixture
def no_default_dirs(tmp_path, monkeypatch):
    """Empty $HOME and working directory, no $FUNCBP_DATA: only what a test writes is found."""
    monkeypatch.delenv("FUNCBP_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_load_mnist_from_root(tmp_path, gz, dtype):
    arrays = write_mnist(tmp_path / "files", gz=gz)
    train, test = load_mnist(tmp_path / "files", strict_sizes=False, dtype=dtype)
    assert train.images.shape == (6, 28, 28, 1) and test.images.shape == (4, 28, 28, 1)
    assert train.images.dtype == dtype and train.labels.dtype == np.int32
    np.testing.assert_array_equal(train.images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(train.labels, arrays["train_labels"])
    np.testing.assert_array_equal(test.images[..., 0], arrays["test_images"])
    np.testing.assert_array_equal(test.labels, arrays["test_labels"])


def test_load_mnist_strict_sizes_refuses_a_subset(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(DataError, match=r"expected shape \(60000, 28, 28\), found \(6, 28, 28\)"):
        load_mnist(tmp_path)


def test_label_count_mismatch_names_both_files(tmp_path):
    write_mnist(tmp_path, train_labels=np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="5 labels for 6 images") as info:
        load_mnist(tmp_path, strict_sizes=False)
    assert "train-labels-idx1-ubyte.gz" in str(info.value)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_labels_out_of_range(tmp_path):
    write_mnist(tmp_path, test_labels=np.array([0, 1, 10, 3]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: labels must lie in 0..9"):
        load_mnist(tmp_path, strict_sizes=False)


def test_wrong_rank_images(tmp_path):
    write_mnist(tmp_path, train_images=np.zeros((6, 784), np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: expected uint8 images"):
        load_mnist(tmp_path, strict_sizes=False)


def test_search_order(no_default_dirs, monkeypatch):
    tmp = no_default_dirs
    env = tmp / "env"
    monkeypatch.setenv("FUNCBP_DATA", str(env))
    dirs = mnist_search_dirs(kind="fashion_mnist")
    assert dirs == [
        env / "fashion_mnist",
        env,
        tmp / "home" / ".cache" / "funcbp" / "fashion_mnist",
        Path("data") / "fashion_mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ]
    assert mnist_search_dirs(tmp / "mine", kind="mnist") == [tmp / "mine", tmp / "mine" / "mnist"]


@pytest.mark.parametrize("place", ["env_kind", "env", "home_cache", "cwd_data", "root_kind"])
def test_load_mnist_finds_each_place(no_default_dirs, monkeypatch, place):
    tmp = no_default_dirs
    monkeypatch.setenv("FUNCBP_DATA", str(tmp / "env"))
    directory = {
        "env_kind": tmp / "env" / "mnist",
        "env": tmp / "env",
        "home_cache": tmp / "home" / ".cache" / "funcbp" / "mnist",
        "cwd_data": tmp / "data" / "mnist",
        "root_kind": tmp / "root" / "mnist",
    }[place]
    arrays = write_mnist(directory, seed=7)
    root = tmp / "root" if place == "root_kind" else None
    train, _ = load_mnist(root, strict_sizes=False)
    np.testing.assert_array_equal(train.labels, arrays["train_labels"])


def test_earlier_place_wins(no_default_dirs, monkeypatch):
    tmp = no_default_dirs
    monkeypatch.setenv("FUNCBP_DATA", str(tmp / "env"))
    first = write_mnist(tmp / "env" / "mnist", seed=1)
    write_mnist(tmp / "home" / ".cache" / "funcbp" / "mnist", seed=2)
    train, _ = load_mnist(strict_sizes=False)
    np.testing.assert_array_equal(train.labels, first["train_labels"])


def test_not_found_lists_places_and_incomplete_dirs(no_default_dirs):
    tmp = no_default_dirs
    write_mnist(tmp / "data" / "mnist")
    (tmp / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as info:
        load_mnist()
    message = str(info.value)
    assert str(tmp / "home" / ".cache" / "funcbp" / "mnist") in message
    assert "data/mnist lacks t10k-labels-idx1-ubyte" in message
    assert "download=True" in message
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        load_mnist(kind="kmnist")


# ---- the real Fashion-MNIST (Debian's dataset-fashion-mnist) ---------------------------------

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.fashion
def test_real_fashion_mnist(no_default_dirs):
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)"
        )
    train, test = load_mnist(kind="fashion_mnist")  # found by the search, not passed
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    for part, n in ((train, 60000), (test, 10000)):
        assert part.labels.min() == 0 and part.labels.max() == 9
        # Zalando's splits are exactly balanced: 6,000 and 1,000 images per class.
        np.testing.assert_array_equal(np.bincount(part.labels, minlength=10), [n // 10] * 10)
        assert part.images.max() == 255 and part.images.min() == 0
    # The first training label of Fashion-MNIST is 9 (ankle boot), the first test label 9 too.
    assert train.labels[0] == 9 and test.labels[0] == 9
