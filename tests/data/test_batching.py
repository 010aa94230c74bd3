"""batches, batch_epoch, num_batches, split: order from jax.random, coverage, stratification."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp.data import batch_epoch, batches, num_batches, split


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, 2)).astype(np.float32)
    x[:, 0, 0] = np.arange(n)  # an id per example
    return x, rng.integers(0, 5, n).astype(np.int32)


def ids(xb):
    return np.asarray(xb)[:, 0, 0].astype(int)


@pytest.mark.parametrize(
    ("n", "b"), [(10, 3), (10, 5), (10, 1), (10, 10), (10, 11), (0, 4), (97, 16)]
)
def test_num_batches(n, b):
    assert num_batches(n, b) == n // b
    assert num_batches(n, b, drop_remainder=False) == int(np.ceil(n / b))


@pytest.mark.parametrize("bad", [0, -1, 2.5, None])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        list(batches(jax.random.key(0), *data(5), bad))


@pytest.mark.parametrize(("n", "b"), [(10, 3), (12, 4), (7, 7), (5, 8), (33, 5)])
def test_every_example_once_without_drop(n, b):
    x, y = data(n)
    out = list(batches(jax.random.key(n), x, y, b, drop_remainder=False))
    assert len(out) == num_batches(n, b, drop_remainder=False)
    seen = np.concatenate([ids(xb) for xb, _ in out])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    assert all(len(xb) == b for xb, _ in out[:-1]) and 0 < len(out[-1][0]) <= b
    for xb, yb in out:  # x and y stay paired
        np.testing.assert_array_equal(yb, y[ids(xb)])
        np.testing.assert_array_equal(xb, x[ids(xb)])


@pytest.mark.parametrize(("n", "b"), [(10, 3), (12, 4), (5, 8)])
def test_drop_remainder_gives_full_batches_in_key_order(n, b):
    x, y = data(n)
    key = jax.random.key(3)
    out = list(batches(key, x, y, b))
    assert len(out) == n // b and all(xb.shape == (b, 3, 2) for xb, _ in out)
    # The order is jax.random.permutation's, cut into consecutive batches.
    order = np.asarray(jax.random.permutation(key, n))
    seen = np.concatenate([ids(xb) for xb, _ in out]) if out else np.array([], int)
    np.testing.assert_array_equal(seen, order[: (n // b) * b])


def test_same_key_same_order_different_key_different_order():
    x, y = data(50)
    run = lambda key: np.concatenate([ids(xb) for xb, _ in batches(key, x, y, 10)])
    np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
    orders = {tuple(run(jax.random.key(k))) for k in range(5)}
    assert len(orders) == 5
    assert not np.array_equal(run(jax.random.key(1)), np.arange(50))


def test_no_key_keeps_order_and_y_may_be_none():
    x, _ = data(7)
    out = list(batches(None, x, None, 3, drop_remainder=False))
    np.testing.assert_array_equal(np.concatenate([ids(xb) for xb, _ in out]), np.arange(7))
    assert all(yb is None for _, yb in out)


@pytest.mark.parametrize("kind", ["numpy", "jax"])
def test_batch_type_follows_input(kind):
    x, y = data(8)
    if kind == "jax":
        x, y = jnp.asarray(x), jnp.asarray(y)
    xb, yb = next(batches(jax.random.key(0), x, y, 4))
    expected = jax.Array if kind == "jax" else np.ndarray
    assert isinstance(xb, expected) and isinstance(yb, expected)
    np.testing.assert_array_equal(np.asarray(yb), np.asarray(y)[ids(xb)])


def test_length_mismatch():
    x, y = data(8)
    with pytest.raises(ValueError, match="same number of examples, got 8 and 7"):
        list(batches(jax.random.key(0), x, y[:7], 2))


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_batch_epoch_matches_batches(wrap):
    x, y = data(23)
    key = jax.random.key(5)
    xs, ys = wrap(lambda k, x, y: batch_epoch(k, x, y, 5))(key, x, y)
    assert xs.shape == (4, 5, 3, 2) and ys.shape == (4, 5)
    ref = list(batches(key, x, y, 5))
    np.testing.assert_array_equal(np.asarray(xs), np.stack([xb for xb, _ in ref]))
    np.testing.assert_array_equal(np.asarray(ys), np.stack([yb for _, yb in ref]))


def test_batch_epoch_too_few_examples():
    with pytest.raises(ValueError, match="3 examples make no full batch of 4"):
        batch_epoch(jax.random.key(0), *data(3), 4)


# ---- split --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "sizes", "expected"),
    [
        (10, (0.8, 0.2), [8, 2]),
        (10, (0.7, 0.15, 0.15), [7, 2, 1]),  # boundaries round(7.0), round(8.5) = 8
        (1797, (0.8, 0.1, 0.1), [1438, 179, 180]),
        (10, (6, 3, 1), [6, 3, 1]),
        (10, (1.0,), [10]),
        (10, (0.0, 1.0), [0, 10]),
    ],
)
@pytest.mark.parametrize("stratify", [False, True])
def test_split_sizes_disjoint_and_complete(n, sizes, expected, stratify):
    x, y = data(n)
    parts = split(jax.random.key(0), x, y, sizes, stratify=stratify)
    assert [len(px) for px, _ in parts] == expected
    all_ids = np.concatenate([ids(px) for px, _ in parts])
    np.testing.assert_array_equal(np.sort(all_ids), np.arange(n))  # disjoint and complete
    for px, py in parts:
        np.testing.assert_array_equal(py, y[ids(px)])


def test_split_is_random_and_deterministic():
    x, y = data(40)
    first = lambda key: ids(split(key, x, y, (0.5, 0.5))[0][0])
    np.testing.assert_array_equal(first(jax.random.key(2)), first(jax.random.key(2)))
    assert not np.array_equal(np.sort(first(jax.random.key(2))), np.sort(first(jax.random.key(3))))
    assert not np.array_equal(first(jax.random.key(2)), np.arange(20))


@pytest.mark.parametrize("seed", range(6))
def test_stratified_split_keeps_class_proportions(seed):
    rng = np.random.default_rng(seed)
    n = 300  # one size: each new length compiles jax.random's draw again
    y = rng.choice(4, size=n, p=[0.55, 0.25, 0.15, 0.05]).astype(np.int32)
    x = np.arange(n)
    fractions = (0.6, 0.25, 0.15)
    parts = split(jax.random.key(seed), x, y, fractions, stratify=True)
    totals = np.bincount(y, minlength=4)
    for (_, py), f in zip(parts, fractions, strict=True):
        counts = np.bincount(py, minlength=4)
        np.testing.assert_array_less(np.abs(counts - f * totals), 2.0 + 1e-9)
    # Stratified parts are still shuffled, not sorted by class.
    assert not np.all(np.diff(parts[0][1]) >= 0)


@pytest.mark.parametrize(
    ("sizes", "pattern"),
    [
        ((0.5, 0.4), "sum to 0.9, expected 1"),
        ((6, 3), "sum to 9, but there are 10 examples"),
        ((), "must be non-negative and not empty"),
        ((1.2, -0.2), "must be non-negative"),
    ],
)
def test_split_bad_sizes(sizes, pattern):
    x, y = data(10)
    with pytest.raises(ValueError, match=pattern):
        split(jax.random.key(0), x, y, sizes)
