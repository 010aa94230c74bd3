"""Weight initializers, exposed as ``funcbp.nn.init``.

Each constructor returns an initializer ``init(key, shape, dtype=jnp.float32) -> Array``
(jax.nn.initializers' signature), and every layer takes one as an argument
(``Dense(10, w_init=init.he_normal())``).

Fans follow jax's convention: ``fan_in = shape[in_axis] * receptive``,
``fan_out = shape[out_axis] * receptive``, ``receptive`` the product of the other axes. The
defaults ``in_axis=-2, out_axis=-1`` fit Dense ``(in, out)`` weights and HWIO conv kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

__all__ = [
    "Initializer",
    "compute_fans",
    "constant",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]

# Standard deviation of a standard normal truncated to [-2, 2]; dividing by it makes a
# truncated normal draw have the variance asked for.
_TRUNC_STD_2 = 0.87962566103423978


def zeros() -> Initializer:
    """All zeros (biases by default).

    Examples:
      >>> import jax
      >>> from funcbp.nn import init
      >>> init.zeros()(jax.random.key(0), (2,))
      Array([0., 0.], dtype=float32)
    """
    def init(key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype)

    return init


def ones() -> Initializer:
    """All ones (LayerNorm/BatchNorm scales)."""
    return constant(1.0)


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``.

    Examples:
      >>> import jax
      >>> from funcbp.nn import init
      >>> init.constant(0.1)(jax.random.key(0), (2,))
      Array([0.1, 0.1], dtype=float32)
    """
    def init(key, shape, dtype=jnp.float32):
        return jnp.full(shape, value, dtype)

    return init


def normal(stddev: float = 1e-2, mean: float = 0.0) -> Initializer:
    """Gaussian entries, ``w ~ N(mean, stddev^2)``.

    Examples:
      >>> import jax
      >>> from funcbp.nn import init
      >>> init.normal(0.1)(jax.random.key(0), (3, 2)).shape
      (3, 2)
    """
    def init(key, shape, dtype=jnp.float32):
        return mean + stddev * jax.random.normal(key, shape, dtype)

    return init


def uniform(minval: float = -0.05, maxval: float = 0.05) -> Initializer:
    """Uniform entries, ``w ~ U[minval, maxval)`` (variance ``(maxval - minval)^2 / 12``).

    Examples:
      >>> import jax
      >>> from funcbp.nn import init
      >>> w = init.uniform(-1.0, 1.0)(jax.random.key(0), (100,))
      >>> bool((w >= -1).all() and (w < 1).all())
      True
    """
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval, maxval)

    return init


def truncated_normal(stddev: float = 1e-2, lower: float = -2.0, upper: float = 2.0
                     ) -> Initializer:
    """A normal ``N(0, stddev^2)`` cut to ``[lower * stddev, upper * stddev]``.

    As in ``jax.nn.initializers.truncated_normal``, ``stddev`` is that of the normal before
    truncation; the drawn values have the smaller truncated-normal variance.

    Examples:
      >>> import jax
      >>> from funcbp.nn import init
      >>> w = init.truncated_normal(1.0)(jax.random.key(0), (1000,))
      >>> bool(abs(w).max() <= 2.0)
      True
    """
    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.truncated_normal(key, lower, upper, shape, dtype)

    return init


def compute_fans(shape: Sequence[int], in_axis: int = -2, out_axis: int = -1
                 ) -> tuple[float, float]:
    """``(fan_in, fan_out)`` of a weight shape (see the module docstring)."""
    if len(shape) < 2:
        raise ValueError(f"fan-based initializers need a weight with >= 2 dims (in, out, ...), "
                         f"got shape {tuple(shape)}; use init.zeros()/init.normal() for biases")
    receptive = math.prod(shape) / (shape[in_axis] * shape[out_axis])
    return shape[in_axis] * receptive, shape[out_axis] * receptive


def variance_scaling(scale: float,
                     mode: Literal["fan_in", "fan_out", "fan_avg"],
                     distribution: Literal["truncated_normal", "normal", "uniform"],
                     in_axis: int = -2, out_axis: int = -1) -> Initializer:
    """Entries with variance ``scale / n``, ``n`` = fan_in, fan_out or their mean.

    ``"uniform"`` draws from ``U[-a, a]`` with ``a = sqrt(3 * scale / n)``; ``"normal"`` from
    ``N(0, scale / n)``; ``"truncated_normal"`` from a normal cut at two standard deviations,
    rescaled so that the variance is still ``scale / n`` (as jax does).

    Examples:
      >>> import jax
      >>> from funcbp.nn import init
      >>> init.variance_scaling(2.0, "fan_in", "normal")(jax.random.key(0), (64, 32)).shape
      (64, 32)
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")
    if distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(f"distribution must be 'truncated_normal', 'normal' or 'uniform', "
                         f"got {distribution!r}")

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = compute_fans(shape, in_axis, out_axis)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / n
        if distribution == "uniform":
            a = math.sqrt(3 * variance)
            return jax.random.uniform(key, shape, dtype, -a, a)
        if distribution == "normal":
            return math.sqrt(variance) * jax.random.normal(key, shape, dtype)
        std = math.sqrt(variance) / _TRUNC_STD_2
        return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    return init


def glorot_uniform(in_axis: int = -2, out_axis: int = -1) -> Initializer:
    """Xavier/Glorot uniform: ``U[-a, a]``, ``a = sqrt(6 / (fan_in + fan_out))``.

    Examples:
      >>> import jax
      >>> from funcbp.nn import init
      >>> init.glorot_uniform()(jax.random.key(0), (4, 3)).shape
      (4, 3)
    """
    return variance_scaling(1.0, "fan_avg", "uniform", in_axis, out_axis)


def glorot_normal(in_axis: int = -2, out_axis: int = -1) -> Initializer:
    """Xavier/Glorot normal: variance ``2 / (fan_in + fan_out)`` (truncated normal, as jax)."""
    return variance_scaling(1.0, "fan_avg", "truncated_normal", in_axis, out_axis)


def he_uniform(mode: Literal["fan_in", "fan_out"] = "fan_in",
               in_axis: int = -2, out_axis: int = -1) -> Initializer:
    """He/Kaiming uniform: ``U[-a, a]``, ``a = sqrt(6 / fan)``, ``fan`` = fan_in or fan_out."""
    return variance_scaling(2.0, mode, "uniform", in_axis, out_axis)


def he_normal(mode: Literal["fan_in", "fan_out"] = "fan_in",
              in_axis: int = -2, out_axis: int = -1) -> Initializer:
    """He/Kaiming normal: variance ``2 / fan`` (truncated normal, as jax), for ReLU nets.

    Examples:
      >>> import jax
      >>> from funcbp.nn import init
      >>> init.he_normal(mode="fan_out")(jax.random.key(0), (3, 3, 8, 16)).shape
      (3, 3, 8, 16)
    """
    return variance_scaling(2.0, mode, "truncated_normal", in_axis, out_axis)


def lecun_uniform(in_axis: int = -2, out_axis: int = -1) -> Initializer:
    """LeCun uniform: ``U[-a, a]``, ``a = sqrt(3 / fan_in)``."""
    return variance_scaling(1.0, "fan_in", "uniform", in_axis, out_axis)


def lecun_normal(in_axis: int = -2, out_axis: int = -1) -> Initializer:
    """LeCun normal: variance ``1 / fan_in`` (truncated normal, as jax), for SELU/tanh nets."""
    return variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis)


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal


def orthogonal(scale: float = 1.0, column_axis: int = -1) -> Initializer:
    """A (semi-)orthogonal matrix times ``scale`` (Saxe et al., 2014).

    The weight is viewed as a matrix with ``shape[column_axis]`` columns and all other axes as
    rows; that matrix has orthonormal columns (``W^T W = scale^2 I``) when rows >= columns,
    else orthonormal rows. Drawn as the QR factor ``Q`` of a Gaussian matrix, with the signs of
    ``diag(R)`` folded in so that ``Q`` is uniformly distributed.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp.nn import init
      >>> w = init.orthogonal()(jax.random.key(0), (5, 3))
      >>> bool(jnp.allclose(w.T @ w, jnp.eye(3), atol=1e-5))
      True
    """
    def init(key, shape, dtype=jnp.float32):
        if len(shape) < 2:
            raise ValueError(f"orthogonal needs a weight with >= 2 dims, got shape {shape}")
        n_cols = shape[column_axis]
        n_rows = math.prod(shape) // n_cols
        a = jax.random.normal(key, (max(n_rows, n_cols), min(n_rows, n_cols)), dtype)
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diagonal(r))
        if n_rows < n_cols:
            q = q.T
        q = q.reshape(tuple(s for i, s in enumerate(shape) if i != column_axis % len(shape))
                      + (n_cols,))
        return scale * jnp.moveaxis(q, -1, column_axis)

    return init
