"""random_shift and shift_images: against a numpy shift written from the definition."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp.data import random_shift, shift_images

EAGER_JIT = [lambda f: f, jax.jit]


def np_shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[i, j] = image[i - dy, j - dx] where inside, else 0 (loops, no tricks)."""
    h, w, _ = image.shape
    out = np.zeros_like(image)
    for i, j in itertools.product(range(h), range(w)):
        if 0 <= i - dy < h and 0 <= j - dx < w:
            out[i, j] = image[i - dy, j - dx]
    return out


def images(n=5, h=6, w=7, c=2, seed=0):
    return np.random.default_rng(seed).uniform(1, 2, size=(n, h, w, c)).astype(np.float32)


@pytest.mark.parametrize("wrap", EAGER_JIT, ids=["eager", "jit"])
@pytest.mark.parametrize("max_shift", [1, 2])
def test_shift_images_matches_definition(wrap, max_shift):
    x = images(n=9)
    offsets = np.array(list(itertools.product(range(-max_shift, max_shift + 1), repeat=2)))[:9]
    out = wrap(lambda x, o: shift_images(x, o, max_shift))(x, offsets)
    for n, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(np.asarray(out[n]), np_shift(x[n], dy, dx))


def test_shift_direction():
    x = np.zeros((1, 3, 3, 1), np.float32)
    x[0, 1, 1, 0] = 1.0
    out = np.asarray(shift_images(x, np.array([[1, -1]]), 1))
    assert out[0, 2, 0, 0] == 1.0 and out.sum() == 1.0  # dy=+1 moves down, dx=-1 left


def _matching_offsets(x, out, max_shift):
    """For each image, the offsets whose numpy shift reproduces the output."""
    r = range(-max_shift, max_shift + 1)
    return [
        {(dy, dx) for dy, dx in itertools.product(r, r) if np.array_equal(o, np_shift(i, dy, dx))}
        for i, o in zip(x, np.asarray(out), strict=True)
    ]


@pytest.mark.parametrize("wrap", EAGER_JIT, ids=["eager", "jit"])
@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_is_a_valid_shift_per_image(wrap, max_shift):
    x = images(n=200, seed=1)  # positive pixels: each shift gives a distinct image
    out = wrap(lambda k, x: random_shift(k, x, max_shift))(jax.random.key(0), x)
    assert out.shape == x.shape and out.dtype == x.dtype
    matches = _matching_offsets(x, out, max_shift)
    assert all(len(m) == 1 for m in matches)  # every output is exactly one allowed shift
    used = set().union(*matches)
    # 200 draws miss one of 25 offsets with probability below 25 * (24/25)^200 < 0.01.
    assert used == set(itertools.product(range(-max_shift, max_shift + 1), repeat=2))


def test_random_shift_covers_every_offset_uniformly():
    x = images(n=900, h=3, w=3, c=1, seed=2)
    out = np.asarray(jax.jit(random_shift, static_argnums=2)(jax.random.key(3), x, 1))
    counts = {}
    for m in _matching_offsets(x, out, 1):
        (offset,) = m
        counts[offset] = counts.get(offset, 0) + 1
    assert len(counts) == 9
    # 900 draws over 9 offsets: 100 each on average, sd ~9.4; 60..140 is over 4 sd.
    assert all(60 <= c <= 140 for c in counts.values()), counts


def test_random_shift_deterministic_from_key():
    x = jnp.asarray(images(n=20, seed=4))
    a = random_shift(jax.random.key(7), x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(random_shift(jax.random.key(7), x)))
    assert not np.array_equal(np.asarray(a), np.asarray(random_shift(jax.random.key(8), x)))
    jitted = jax.jit(random_shift, static_argnums=2)(jax.random.key(7), x, 1)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(jitted))


def test_random_shift_zero_is_identity_and_integer_images():
    x = np.random.default_rng(5).integers(1, 17, size=(4, 8, 8, 1)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(random_shift(jax.random.key(0), x, 0)), x)
    out = random_shift(jax.random.key(0), x, 1)
    assert out.dtype == jnp.uint8
    assert all(len(m) == 1 for m in _matching_offsets(x, out, 1))


@pytest.mark.parametrize(
    ("shape", "max_shift", "pattern"),
    [
        ((8, 8, 1), 1, r"NHWC \(4 axes\), got shape \(8, 8, 1\)"),
        ((2, 8, 8, 1), -1, "non-negative Python int"),
        ((2, 8, 8, 1), 1.5, "non-negative Python int"),
    ],
)
def test_random_shift_errors(shape, max_shift, pattern):
    with pytest.raises(ValueError, match=pattern):
        random_shift(jax.random.key(0), np.zeros(shape), max_shift)
