"""Pooling over NHWC images with ``lax.reduce_window``: max, average, global average."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcbp.nn.conv import Padding, _pair, normalize_padding
from funcbp.nn.layer import Layer, ShapeError, check_floating

__all__ = ["AvgPool2D", "GlobalAvgPool", "MaxPool2D"]


def _window_args(window, strides, padding):
    window = _pair(window, "window")
    strides = window if strides is None else _pair(strides, "strides")
    pads = normalize_padding(padding)
    if not isinstance(pads, str):
        pads = ((0, 0), *pads, (0, 0))
    return (1, *window, 1), (1, *strides, 1), pads


def _pool(name, reduce_fn, window, strides, padding) -> Layer:
    dims, strides_, pads = _window_args(window, strides, padding)

    def check(x):
        x = jnp.asarray(x)
        check_floating(x)
        if x.ndim != 4:
            raise ShapeError("", f"input x has shape {x.shape}, but {name} needs NHWC images "
                                 f"(4 dims)")
        return x

    def init(key, in_shape):
        out = jax.eval_shape(lambda x: reduce_fn(x, dims, strides_, pads),
                             jax.ShapeDtypeStruct(tuple(in_shape), jnp.float32))
        return out.shape, {}

    def apply(params, x, *, key=None, train=False):
        return reduce_fn(check(x), dims, strides_, pads)

    return Layer(init, apply, name, has_params=False)


def _max(x, dims, strides, pads):
    # A NumPy (concrete) init value lets lax pick reduce_window_max, which has a gradient.
    return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, dims, strides, pads)


def _sum(x, dims, strides, pads):
    return lax.reduce_window(x, np.array(0, x.dtype), lax.add, dims, strides, pads)


def MaxPool2D(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
              padding: Padding = "VALID") -> Layer:
    """Max pooling, ``y[n,i,j,c] = max_{h,w} x[n, s*i + h, s*j + w, c]`` (padding is -inf).

    Args:
      window: ``k`` or ``(kh, kw)``.
      strides: ``s`` or ``(sh, sw)``; default the window (non-overlapping).
      padding: ``"VALID"`` (default), ``"SAME"``, an int or ``((top, bottom), (left, right))``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import nn
      >>> nn.MaxPool2D(2).apply({}, jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """
    return _pool("maxpool2d", _max, window, strides, padding)


def AvgPool2D(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
              padding: Padding = "VALID", count_include_pad: bool = False) -> Layer:
    """Average pooling: a window sum divided by the number of entries averaged.

    With padding, ``count_include_pad=False`` (default) divides by the number of real
    (unpadded) entries in each window, as TensorFlow's ``SAME`` pooling does; ``True`` divides
    by the full window size.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import nn
      >>> nn.AvgPool2D(2).apply({}, jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0]
      Array([[ 2.5,  4.5],
             [10.5, 12.5]], dtype=float32)
    """
    def avg(x, dims, strides_, pads):
        total = _sum(x, dims, strides_, pads)
        if pads == "VALID" or count_include_pad:
            return total / (dims[1] * dims[2])
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        return total / _sum(ones, dims, strides_, pads)

    return _pool("avgpool2d", avg, window, strides, padding)


def GlobalAvgPool() -> Layer:
    """Mean over the spatial axes: ``(N, H, W, C) -> (N, C)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import nn
      >>> nn.GlobalAvgPool().apply({}, jnp.ones((2, 5, 5, 3))).shape
      (2, 3)
    """
    def init(key, in_shape):
        return (in_shape[0], in_shape[-1]), {}

    def apply(params, x, *, key=None, train=False):
        x = jnp.asarray(x)
        if x.ndim != 4:
            raise ShapeError("", f"input x has shape {x.shape}, but GlobalAvgPool needs NHWC "
                                 f"images (4 dims)")
        return jnp.mean(x, axis=(1, 2))

    return Layer(init, apply, "globalavgpool", has_params=False)
