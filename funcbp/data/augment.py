"""Data augmentation for NHWC images, pure jax ops: runs under ``jax.jit`` and ``vmap``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

__all__ = ["random_shift", "shift_images"]


def shift_images(images: ArrayLike, offsets: ArrayLike, max_shift: int) -> jax.Array:
    """Shift each image by its own integer offset ``(dy, dx)``, filling with zeros.

    ``out[n, i, j, c] = images[n, i - dy_n, j - dx_n, c]`` where that index is inside the
    image, else 0; a positive ``dy`` moves the content down, a positive ``dx`` right.

    Args:
      images: ``(N, H, W, C)``.
      offsets: ``(N, 2)`` integers ``(dy, dx)`` with ``|dy|, |dx| <= max_shift``.
      max_shift: static bound on the offsets (the padding width).

    Returns:
      Shifted images, same shape and dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp.data import shift_images
      >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
      >>> shift_images(x, jnp.array([[0, 1]]), 1)[0, :, :, 0]
      Array([[0., 0.],
             [0., 2.]], dtype=float32)
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (4 axes), got shape {images.shape}")
    _, h, w, c = images.shape
    m = int(max_shift)
    padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
    offsets = jnp.clip(jnp.asarray(offsets, dtype=jnp.int32), -m, m)

    def one(image, offset):  # output (i, j) reads padded (i + m - dy, j + m - dx)
        return lax.dynamic_slice(image, (m - offset[0], m - offset[1], 0), (h, w, c))

    return jax.vmap(one)(padded, offsets)


def random_shift(key: jax.Array, images: ArrayLike, max_shift: int = 1) -> jax.Array:
    """Shift each NHWC image by a random integer offset in ``[-max_shift, max_shift]`` per axis.

    The offsets ``(dy, dx)`` are drawn uniformly and independently per image and per axis
    from ``key``, so the same key always gives the same shifts; pixels shifted in are 0.
    ``max_shift`` is a Python int (static under ``jax.jit``).

    Args:
      key: a ``jax.random`` key; use a fresh one per batch (``jax.random.fold_in``).
      images: ``(N, H, W, C)`` images.
      max_shift: largest shift in pixels, in each direction; 0 returns the images unchanged.

    Returns:
      ``(N, H, W, C)`` shifted images of the input dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp.data import random_shift
      >>> x = jnp.ones((4, 8, 8, 1))
      >>> jax.jit(random_shift, static_argnums=2)(jax.random.key(0), x, 1).shape
      (4, 8, 8, 1)
    """
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative Python int, got {max_shift!r}")
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (4 axes), got shape {images.shape}")
    if max_shift == 0:
        return images
    offsets = jax.random.randint(key, (images.shape[0], 2), -max_shift, max_shift + 1)
    return shift_images(images, offsets, max_shift)
