"""2-D convolution on NHWC images with HWIO kernels (``lax.conv_general_dilated``)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from funcbp.nn import initializers as init_lib
from funcbp.nn.initializers import Initializer
from funcbp.nn.layer import Layer, ShapeError, check_floating, check_keys

__all__ = ["Conv2D", "Padding", "normalize_padding"]

Padding = str | int | Sequence[tuple[int, int]]
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, int) and i >= 1 for i in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return pair


def normalize_padding(padding: Padding) -> str | tuple[tuple[int, int], ...]:
    """``"SAME"``/``"VALID"`` as is; ``p`` -> ``((p, p), (p, p))``; pairs as tuples."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID', an int or ((top, bottom), "
                             f"(left, right)), got {padding!r}")
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(tuple(p) for p in padding)
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise ValueError(f"explicit padding must be ((top, bottom), (left, right)), "
                         f"got {padding!r}")
    return pads


def Conv2D(out_channels: int, kernel_size: int | Sequence[int], strides: int | Sequence[int] = 1,
           padding: Padding = "SAME", dilation: int | Sequence[int] = 1, groups: int = 1,
           w_init: Initializer | None = None, b_init: Initializer | None = None,
           use_bias: bool = True) -> Layer:
    """2-D convolution on NHWC images with an HWIO kernel.

    ``y[n, i, j, o] = sum_{h, w, c} x[n, s*i + d*h, s*j + d*w, c] k[h, w, c, o] + b[o]`` (over
    padded ``x``, with ``c`` running over the input channels of ``o``'s group). The kernel
    ``k`` is HWIO with ``I = in_channels / groups``.

    Args:
      out_channels: number of output channels (a multiple of ``groups``).
      kernel_size: ``kh`` or ``(kh, kw)``.
      strides: ``s`` or ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"``, an int, or ``((top, bottom), (left, right))``.
      dilation: kernel dilation ``d`` or ``(dh, dw)`` (atrous convolution).
      groups: feature groups; ``groups = in_channels`` is a depthwise convolution.
      w_init: kernel initializer; default :func:`funcbp.nn.init.glorot_normal` (fans from
        HWIO: ``fan_in = kh * kw * I``).
      b_init: bias initializer; default zeros.
      use_bias: whether to add ``b`` (params ``{"w"}`` only otherwise).

    Returns:
      A :class:`~funcbp.nn.Layer` named ``"conv2d"``, params ``{"w": (kh, kw, I, O), "b": (O,)}``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> conv = nn.Conv2D(8, 3, strides=2)
      >>> out_shape, params = conv.init(jax.random.key(0), (1, 28, 28, 1))
      >>> out_shape, params["w"].shape
      ((1, 14, 14, 8), (3, 3, 1, 8))
    """
    kernel = _pair(kernel_size, "kernel_size")
    strides = _pair(strides, "strides")
    dilation = _pair(dilation, "dilation")
    pads = normalize_padding(padding)
    w_init = w_init or init_lib.glorot_normal()
    b_init = b_init or init_lib.zeros()
    names = ["w", "b"] if use_bias else ["w"]
    if groups < 1 or out_channels % groups:
        raise ValueError(f"out_channels={out_channels} must be a multiple of groups={groups}")

    def conv(x, w):
        return lax.conv_general_dilated(x, w, window_strides=strides, padding=pads,
                                        rhs_dilation=dilation,
                                        dimension_numbers=DIMENSION_NUMBERS,
                                        feature_group_count=groups)

    def init(key, in_shape):
        if len(in_shape) != 4:
            raise ShapeError("", f"Conv2D needs NHWC input shapes (4 dims), got {in_shape}")
        if in_shape[-1] % groups:
            raise ShapeError("", f"input channels {in_shape[-1]} are not a multiple of "
                                 f"groups={groups}")
        w_shape = (*kernel, in_shape[-1] // groups, out_channels)
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, w_shape)}
        if use_bias:
            params["b"] = b_init(kb, (out_channels,))
        out = jax.eval_shape(conv, jax.ShapeDtypeStruct(tuple(in_shape), jnp.float32),
                             jax.ShapeDtypeStruct(w_shape, jnp.float32))
        return out.shape, params

    def apply(params, x, *, key=None, train=False):
        check_keys(params, names, "")
        x = jnp.asarray(x)
        check_floating(x)
        w = params["w"]
        if w.ndim != 4 or w.shape[:2] != kernel or w.shape[3] != out_channels:
            raise ShapeError("", f"{{param}} has shape {w.shape}, but this Conv2D was built "
                                 f"for HWIO kernels ({kernel[0]}, {kernel[1]}, I, "
                                 f"{out_channels})", "w")
        if x.ndim != 4 or x.shape[-1] != w.shape[2] * groups:
            raise ShapeError("", f"input x has shape {x.shape}, but {{param}} has shape "
                                 f"{w.shape} and needs NHWC x of shape (N, H, W, "
                                 f"{w.shape[2] * groups})", "w")
        y = conv(x, w)
        if use_bias:
            b = params["b"]
            if b.shape != (out_channels,):
                raise ShapeError("", f"{{param}} has shape {b.shape}, expected "
                                     f"({out_channels},)", "b")
            y = y + b
        return y

    return Layer(init, apply, "conv2d")
