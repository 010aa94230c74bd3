"""Activation functions, and the layers that apply them.

Lowercase names are plain functions of an array (``nn.relu(x)``), usable in hand-written
networks and directly inside :func:`funcbp.nn.serial` (``serial(Dense(8), nn.relu)``).
CamelCase names build the same thing as a :class:`~funcbp.nn.Layer`, with arguments
(``LeakyRelu(0.2)``, ``Softmax(axis=1)``). Neither kind has parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from funcbp.nn.layer import Layer

__all__ = [
    "Elu", "Gelu", "LeakyRelu", "LogSoftmax", "Relu", "Sigmoid", "Silu", "Softmax", "Softplus",
    "Tanh", "elementwise", "elu", "gelu", "leaky_relu", "log_softmax", "relu", "sigmoid",
    "silu", "softmax", "softplus", "tanh",
]


def sigmoid(x: ArrayLike) -> jax.Array:
    """Logistic sigmoid, ``1 / (1 + exp(-x))``.

    Examples:
      >>> from funcbp import nn
      >>> float(nn.sigmoid(0.0))
      0.5
    """
    return jax.nn.sigmoid(x)


def tanh(x: ArrayLike) -> jax.Array:
    """Hyperbolic tangent, ``(e^x - e^-x) / (e^x + e^-x)``."""
    return jnp.tanh(x)


def relu(x: ArrayLike) -> jax.Array:
    """Rectified linear unit, ``max(x, 0)`` (gradient 0 at ``x = 0``, as jax).

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import nn
      >>> nn.relu(jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    return jax.nn.relu(x)


def leaky_relu(x: ArrayLike, negative_slope: float = 0.01) -> jax.Array:
    """Leaky ReLU, ``x if x >= 0 else negative_slope * x``."""
    return jax.nn.leaky_relu(x, negative_slope)


def elu(x: ArrayLike, alpha: float = 1.0) -> jax.Array:
    """Exponential linear unit, ``x if x > 0 else alpha * (exp(x) - 1)``."""
    return jax.nn.elu(x, alpha)


def gelu(x: ArrayLike, approximate: bool = True) -> jax.Array:
    """Gaussian error linear unit, ``x * Phi(x)``.

    ``approximate=True`` (jax's default) uses
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; ``False`` the exact ``erf`` form.
    """
    return jax.nn.gelu(x, approximate=approximate)


def silu(x: ArrayLike) -> jax.Array:
    """Sigmoid linear unit (swish), ``x * sigmoid(x)``."""
    return jax.nn.silu(x)


def softplus(x: ArrayLike) -> jax.Array:
    """Softplus, ``log(1 + exp(x))``, computed stably as ``logaddexp(x, 0)``."""
    return jax.nn.softplus(x)


def softmax(x: ArrayLike, axis: int = -1) -> jax.Array:
    """Softmax, ``exp(x_i - max x) / sum_j exp(x_j - max x)`` along ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import nn
      >>> float(nn.softmax(jnp.array([1e4, 0.0, -1e4])).sum())
      1.0
    """
    return jax.nn.softmax(x, axis=axis)


def log_softmax(x: ArrayLike, axis: int = -1) -> jax.Array:
    """Log-softmax, ``x_i - max x - log sum_j exp(x_j - max x)`` along ``axis``."""
    return jax.nn.log_softmax(x, axis=axis)


def elementwise(fn: Callable[..., jax.Array], name: str | None = None, **kwargs) -> Layer:
    """A parameter-free layer applying ``fn(x, **kwargs)``; the output shape is the input's.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import nn
      >>> layer = nn.elementwise(jnp.sin)
      >>> layer.name, layer.apply({}, jnp.zeros(2))
      ('sin', Array([0., 0.], dtype=float32))
    """
    f = functools.partial(fn, **kwargs) if kwargs else fn

    def init(key, in_shape):
        return in_shape, {}

    def apply(params, x, *, key=None, train=False):
        return f(x)

    return Layer(init, apply, name or getattr(fn, "__name__", "elementwise"), has_params=False)


def Sigmoid() -> Layer:
    """Layer form of :func:`sigmoid`."""
    return elementwise(sigmoid)


def Tanh() -> Layer:
    """Layer form of :func:`tanh`."""
    return elementwise(tanh)


def Relu() -> Layer:
    """Layer form of :func:`relu`."""
    return elementwise(relu)


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """Layer form of :func:`leaky_relu`."""
    return elementwise(leaky_relu, negative_slope=negative_slope)


def Elu(alpha: float = 1.0) -> Layer:
    """Layer form of :func:`elu`."""
    return elementwise(elu, alpha=alpha)


def Gelu(approximate: bool = True) -> Layer:
    """Layer form of :func:`gelu`."""
    return elementwise(gelu, approximate=approximate)


def Silu() -> Layer:
    """Layer form of :func:`silu`."""
    return elementwise(silu)


def Softplus() -> Layer:
    """Layer form of :func:`softplus`."""
    return elementwise(softplus)


def Softmax(axis: int = -1) -> Layer:
    """Layer form of :func:`softmax`."""
    return elementwise(softmax, axis=axis)


def LogSoftmax(axis: int = -1) -> Layer:
    """Layer form of :func:`log_softmax`."""
    return elementwise(log_softmax, axis=axis)
