"""Shuffling, mini-batching and splitting, each driven by an explicit ``jax.random`` key.

The same key gives the same order on every run and machine; nothing reads a global random
state. Data stays where it is: numpy arrays give numpy batches (the usual host-side input
pipeline), jax arrays give jax batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["batch_epoch", "batches", "num_batches", "permutation", "split"]


def _length(x, y) -> int:
    n = len(x)
    if y is not None and len(y) != n:
        raise ValueError(f"x and y must hold the same number of examples, got {n} and {len(y)}")
    return n


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool = True) -> int:
    """Batches per epoch: ``floor(n / b)`` with ``drop_remainder``, else ``ceil(n / b)``.

    Examples:
      >>> from funcbp.data import num_batches
      >>> num_batches(10, 4), num_batches(10, 4, drop_remainder=False)
      (2, 3)
    """
    _check_batch_size(batch_size)
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)


def permutation(key: jax.Array | None, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` drawn from ``key`` (``jax.random.permutation``), as numpy.

    ``key=None`` gives the identity (no shuffling), e.g. for evaluation.

    Examples:
      >>> import jax
      >>> from funcbp.data import permutation
      >>> sorted(permutation(jax.random.key(0), 5).tolist())
      [0, 1, 2, 3, 4]
    """
    if key is None:
        return np.arange(n)
    return np.asarray(jax.random.permutation(key, n))


def _take(a, index: np.ndarray):
    return a[jnp.asarray(index)] if isinstance(a, jax.Array) else np.asarray(a)[index]


def batches(
    key: jax.Array | None,
    x: ArrayLike,
    y: ArrayLike | None,
    batch_size: int,
    *,
    drop_remainder: bool = True,
) -> Iterator[tuple[ArrayLike, ArrayLike | None]]:
    """Yield ``(xb, yb)`` mini-batches of one epoch, in an order drawn from ``key``.

    The examples are permuted with ``jax.random.permutation(key, n)`` and cut into
    consecutive batches of ``batch_size``. Every example appears at most once per epoch, and
    exactly once when ``drop_remainder=False`` (the last batch is then smaller). Use a fresh
    key per epoch, e.g. ``jax.random.fold_in(key, epoch)``.

    Args:
      key: a ``jax.random`` key; ``None`` keeps the given order (no shuffling).
      x: inputs, first axis the example axis (numpy or jax array).
      y: targets with the same first-axis length, or ``None`` (then ``yb`` is ``None``).
      batch_size: examples per batch.
      drop_remainder: drop the last ``n % batch_size`` examples so all batches have the same
        shape (one compilation of a jitted step).

    Returns:
      An iterator over ``num_batches(n, batch_size, drop_remainder=...)`` pairs; numpy inputs
      give numpy batches, jax inputs jax batches.

    Examples:
      >>> import jax, numpy as np
      >>> from funcbp.data import batches
      >>> x, y = np.arange(10.0)[:, None], np.arange(10)
      >>> [yb.shape for _, yb in batches(jax.random.key(0), x, y, 4)]
      [(4,), (4,)]
    """
    n = _length(x, y)
    count = num_batches(n, batch_size, drop_remainder=drop_remainder)
    order = permutation(key, n)
    for i in range(count):
        index = order[i * batch_size : (i + 1) * batch_size]
        yield _take(x, index), (None if y is None else _take(y, index))


def batch_epoch(
    key: jax.Array, x: ArrayLike, y: ArrayLike, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """One shuffled epoch as stacked batches ``(num_batches, batch_size, ...)``, for ``lax.scan``.

    The same permutation as ``batches(key, x, y, batch_size)`` (remainder dropped), computed
    with jax ops only, so it runs inside ``jax.jit``.

    Returns:
      ``(xs, ys)`` with ``xs.shape == (n // batch_size, batch_size) + x.shape[1:]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp.data import batch_epoch
      >>> xs, ys = jax.jit(batch_epoch, static_argnums=3)(
      ...     jax.random.key(0), jnp.zeros((10, 3)), jnp.arange(10), 4)
      >>> xs.shape, ys.shape
      ((2, 4, 3), (2, 4))
    """
    n = _length(x, y)
    count = num_batches(n, batch_size)
    if count == 0:
        raise ValueError(f"batch_epoch: {n} examples make no full batch of {batch_size}")
    index = jax.random.permutation(key, n)[: count * batch_size]
    x, y = jnp.asarray(x), jnp.asarray(y)
    xs = x[index].reshape(count, batch_size, *x.shape[1:])
    ys = y[index].reshape(count, batch_size, *y.shape[1:])
    return xs, ys


def _part_sizes(sizes: Sequence[float | int], n: int) -> list[int]:
    """Exact part sizes from fractions (summing to 1) or counts (summing to n)."""
    sizes = list(sizes)
    if not sizes or any(s < 0 for s in sizes):
        raise ValueError(f"split sizes must be non-negative and not empty, got {sizes}")
    if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sizes):
        if sum(sizes) != n:
            raise ValueError(
                f"split sizes {sizes} sum to {sum(sizes)}, but there are {n} examples; "
                "give counts summing to n or fractions summing to 1"
            )
        return [int(s) for s in sizes]
    if not math.isclose(sum(sizes), 1.0, rel_tol=0, abs_tol=1e-6):
        raise ValueError(
            f"split fractions {sizes} sum to {sum(sizes)}, expected 1 "
            "(e.g. (0.8, 0.1, 0.1)); or give integer counts summing to n"
        )
    # Cumulative boundaries rounded half up (the 1e-9 absorbs 0.7 + 0.15 = 0.8499...): the
    # sizes sum to n exactly and each is within 1 of fraction * n.
    cuts = [math.floor(c * n + 0.5 + 1e-9) for c in np.cumsum(sizes)[:-1].tolist()]
    bounds = [0, *(min(c, n) for c in cuts), n]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _stratified_order(key: jax.Array, y: np.ndarray) -> np.ndarray:
    """All indices ordered so that every block holds each class in proportion, then shuffled.

    Within each class, examples are put in random order and given ranks ``(i + 0.5) / n_c``;
    sorting by rank (ties broken at random) interleaves the classes evenly. One draw of
    uniforms serves every class, so no shape-dependent jax function is compiled per class.
    """
    n = len(y)
    within, ties = np.asarray(jax.random.uniform(key, (2, n)))
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    by_class = np.lexsort((within, inverse))  # grouped by class, random order inside
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(n) - starts[inverse[by_class]]
    rank = np.empty(n)
    rank[by_class] = (position + 0.5) / counts[inverse[by_class]]
    return np.lexsort((ties, rank))


def split(
    key: jax.Array,
    x: ArrayLike,
    y: ArrayLike,
    sizes: Sequence[float | int],
    *,
    stratify: bool = False,
) -> tuple[tuple[ArrayLike, ArrayLike], ...]:
    """Split ``(x, y)`` at random into parts, e.g. train / validation / test.

    The examples are permuted with ``key`` and cut into consecutive parts; no example is in
    two parts and together they hold every example. With ``stratify=True`` each part holds
    each class of ``y`` in the same proportion as the whole, to within two examples per class.

    Args:
      key: a ``jax.random`` key.
      x: inputs, first axis the example axis.
      y: labels with the same first-axis length (class indices when stratifying).
      sizes: fractions summing to 1, such as ``(0.8, 0.2)`` (each part then has
        ``fraction * n`` examples, rounded so the sizes sum to n), or counts summing to n.
      stratify: keep the class proportions of ``y`` in every part.

    Returns:
      One ``(x_part, y_part)`` pair per entry of ``sizes``, in order; the examples in each part
      are in random order.

    Examples:
      >>> import jax, numpy as np
      >>> from funcbp.data import split
      >>> x, y = np.zeros((10, 2)), np.arange(10) % 2
      >>> (x_tr, y_tr), (x_va, y_va) = split(jax.random.key(0), x, y, (0.8, 0.2))
      >>> x_tr.shape, x_va.shape
      ((8, 2), (2, 2))
    """
    n = _length(x, y)
    part_sizes = _part_sizes(sizes, n)
    key_order, key_parts = jax.random.split(key)
    if stratify:
        order = _stratified_order(key_order, np.asarray(y).reshape(n))
        # Undo the class interleaving of the rank order inside each part.
        priority = np.asarray(jax.random.uniform(key_parts, (n,)))
    else:
        order = permutation(key_order, n)
    bounds = np.cumsum([0, *part_sizes])
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        index = order[start:stop]
        if stratify:
            index = index[np.argsort(priority[index], kind="stable")]
        parts.append((_take(x, index), _take(y, index)))
    return tuple(parts)
