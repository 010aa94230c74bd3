"""Fully connected layers and shape-only layers: ``Dense``, ``Flatten``, ``Dropout``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcbp.nn import initializers as init_lib
from funcbp.nn.initializers import Initializer
from funcbp.nn.layer import KeyRequiredError, Layer, ShapeError, check_floating, check_keys

__all__ = ["Dense", "Dropout", "Flatten"]


def Dense(out_dim: int, w_init: Initializer | None = None, b_init: Initializer | None = None,
          use_bias: bool = True) -> Layer:
    """Affine map on the last axis, ``y = x @ w + b`` with ``w: (in, out)``, ``b: (out,)``.

    Args:
      out_dim: number of output features.
      w_init: initializer of ``w``; default :func:`funcbp.nn.init.glorot_normal`.
      b_init: initializer of ``b``; default zeros.
      use_bias: whether to add ``b`` (params are then ``{"w"}`` only).

    Returns:
      A :class:`~funcbp.nn.Layer` named ``"dense"``, params ``{"w", "b"}``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> layer = nn.Dense(3)
      >>> out_shape, params = layer.init(jax.random.key(0), (1, 4))
      >>> out_shape, params["w"].shape, layer.apply(params, jnp.ones((2, 4))).shape
      ((1, 3), (4, 3), (2, 3))
    """
    w_init = w_init or init_lib.glorot_normal()
    b_init = b_init or init_lib.zeros()
    names = ["w", "b"] if use_bias else ["w"]

    def init(key, in_shape):
        if len(in_shape) < 1:
            raise ShapeError("", f"Dense needs inputs with a feature axis, got shape {in_shape}")
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (in_shape[-1], out_dim))}
        if use_bias:
            params["b"] = b_init(kb, (out_dim,))
        return tuple(in_shape[:-1]) + (out_dim,), params

    def apply(params, x, *, key=None, train=False):
        check_keys(params, names, "")
        x = jnp.asarray(x)
        check_floating(x)
        w = params["w"]
        if w.ndim != 2 or w.shape[1] != out_dim:
            raise ShapeError("", f"{{param}} has shape {w.shape}, but this Dense was built "
                                 f"with out_dim={out_dim} and needs (in, {out_dim})", "w")
        if x.ndim < 1 or x.shape[-1] != w.shape[0]:
            raise ShapeError("", f"input x has shape {x.shape}, but {{param}} has shape "
                                 f"{w.shape} and needs x of shape (..., {w.shape[0]})", "w")
        y = x @ w
        if use_bias:
            b = params["b"]
            if b.shape != (out_dim,):
                raise ShapeError("", f"{{param}} has shape {b.shape}, expected ({out_dim},)", "b")
            y = y + b
        return y

    return Layer(init, apply, "dense")


def Flatten() -> Layer:
    """Flatten all but the batch axis: ``(N, d1, d2, ...) -> (N, d1 * d2 * ...)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import nn
      >>> nn.Flatten().apply({}, jnp.zeros((2, 3, 4, 5))).shape
      (2, 60)
    """
    def init(key, in_shape):
        return (in_shape[0], math.prod(in_shape[1:])), {}

    def apply(params, x, *, key=None, train=False):
        x = jnp.asarray(x)
        return x.reshape(x.shape[0], -1)

    return Layer(init, apply, "flatten", has_params=False)


def Dropout(rate: float) -> Layer:
    """Inverted dropout: in training, ``y = x * m / (1 - rate)``, ``m ~ Bernoulli(1 - rate)``.

    ``apply(params, x, key=key, train=True)`` drops with the explicit ``key``;
    ``train=False`` is the identity. ``train=True`` without a key raises
    :class:`~funcbp.nn.KeyRequiredError`.

    Args:
      rate: probability of zeroing each entry, in ``[0, 1)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> drop = nn.Dropout(0.5)
      >>> y = drop.apply({}, jnp.ones(1000), key=jax.random.key(0), train=True)
      >>> sorted(set(y.tolist()))
      [0.0, 2.0]
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")

    def init(key, in_shape):
        return in_shape, {}

    def apply(params, x, *, key=None, train=False):
        x = jnp.asarray(x)
        if not train or rate == 0.0:
            return x
        if key is None:
            raise KeyRequiredError("", "Dropout with train=True needs a random key: call "
                                       "apply(params, x, key=jax.random.key(seed), train=True)")
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))

    return Layer(init, apply, "dropout", has_params=False)
