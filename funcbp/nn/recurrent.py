"""Recurrent layers over ``lax.scan``: ``SimpleRNN``, ``GRU``, ``LSTM``.

Inputs are batch first, ``(batch, time, features)``. The input projection of every time step
is one matrix product before the loop; ``lax.scan`` then runs only the recurrent part, so the
loop body is small and funcbp's ``scan`` rule differentiates it (the backward is a reverse
scan). The state starts at zero. The output is the last state ``(batch, hidden)``, or every
state ``(batch, time, hidden)`` with ``return_sequences=True``.

Weights are ``(in, out)`` as in :func:`~funcbp.nn.Dense`; the gates of GRU and LSTM are
stacked along the output axis in PyTorch's order (GRU: ``r, z, n``; LSTM: ``i, f, g, o``), so
``w_ih = torch_weight_ih.T``. Defaults: input weights Glorot uniform, recurrent weights
orthogonal (one orthogonal block per gate), biases zero (LSTM: forget-gate bias 1).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from funcbp.nn import initializers as init_lib
from funcbp.nn.initializers import Initializer
from funcbp.nn.layer import Layer, ShapeError, check_floating, check_keys

__all__ = ["GRU", "LSTM", "SimpleRNN"]


def _check_input(x: jax.Array, in_dim: int, kind: str) -> None:
    check_floating(x)
    if x.ndim != 3:
        raise ShapeError("", f"{kind} expects input of shape (batch, time, features), got "
                             f"shape {x.shape}; add a batch axis with x[None] or a feature "
                             f"axis with x[..., None]")
    if x.shape[-1] != in_dim:
        raise ShapeError("", f"input x has {x.shape[-1]} features, but {{param}} has "
                             f"{in_dim} rows; build the layer's params with init on this "
                             f"input shape", "w_ih")


def _check_shapes(params: dict, expected: dict[str, tuple]) -> None:
    for name, shape in expected.items():
        if params[name].shape != shape:
            raise ShapeError("", f"{{param}} has shape {params[name].shape}, expected {shape}",
                             name)


def _recurrent(kind: str, hidden: int, gates: int, biases: dict[str, Initializer],
               w_init: Initializer | None, u_init: Initializer | None,
               cell: Callable, return_sequences: bool, reverse: bool) -> Layer:
    """Shared init/apply of the three layers; ``cell(params, carry, xw_t) -> carry``."""
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"{kind}: hidden must be a positive int, got {hidden!r}")
    w_init = w_init or init_lib.glorot_uniform()
    u_init = u_init or init_lib.orthogonal()
    names = ["w_ih", "w_hh", *biases]

    def init(key, in_shape):
        if len(in_shape) != 3:
            raise ShapeError("", f"{kind} expects in_shape (batch, time, features), got "
                                 f"{tuple(in_shape)}")
        batch, time, in_dim = in_shape
        k_w, k_u, *k_b = jax.random.split(key, 2 + len(biases))
        params = {
            "w_ih": w_init(k_w, (in_dim, gates * hidden)),
            # one orthogonal block per gate: each gate's recurrence starts norm-preserving
            "w_hh": jnp.concatenate([u_init(k, (hidden, hidden))
                                     for k in jax.random.split(k_u, gates)], axis=1),
        }
        for (name, b_init), k in zip(biases.items(), k_b, strict=True):
            params[name] = b_init(k, (gates * hidden,))
        out = (batch, time, hidden) if return_sequences else (batch, hidden)
        return out, params

    def apply(params, x, *, key=None, train=False):
        check_keys(params, names, "")
        x = jnp.asarray(x)
        in_dim = params["w_ih"].shape[0]
        _check_input(x, in_dim, kind)
        _check_shapes(params, {"w_ih": (in_dim, gates * hidden),
                               "w_hh": (hidden, gates * hidden),
                               **{b: (gates * hidden,) for b in biases}})
        # every step's input projection in one product, time-major for the scan
        xw = jnp.swapaxes(x, 0, 1) @ params["w_ih"]
        if "b" in params:
            xw = xw + params["b"]
        if "b_ih" in params:
            xw = xw + params["b_ih"]
        carry = cell.init(x.shape[0], x.dtype)

        def step(carry, xw_t):
            carry = cell(params, carry, xw_t)
            return carry, cell.output(carry) if return_sequences else None

        carry, hs = lax.scan(step, carry, xw, reverse=reverse)
        return jnp.swapaxes(hs, 0, 1) if return_sequences else cell.output(carry)

    return Layer(init, apply, kind.lower())


class _Cell:
    """A cell function with how its carry starts and which part of it is the output."""

    def __init__(self, step, init, output=lambda carry: carry):
        self.step, self.init, self.output = step, init, output

    def __call__(self, params, carry, xw_t):
        return self.step(params, carry, xw_t)


def SimpleRNN(hidden: int, *, return_sequences: bool = False, reverse: bool = False,
              activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
              w_init: Initializer | None = None, u_init: Initializer | None = None,
              b_init: Initializer | None = None) -> Layer:
    """Elman RNN: ``h_t = act(x_t @ w_ih + h_{t-1} @ w_hh + b)``, ``h_0 = 0``.

    Args:
      hidden: size of the state.
      return_sequences: return every state ``(batch, time, hidden)`` instead of the last.
      reverse: run from the last time step to the first (outputs stay in input order).
      activation: ``act``; default ``tanh``.
      w_init, u_init, b_init: initializers of ``w_ih``, ``w_hh``, ``b``.

    Returns:
      A :class:`~funcbp.nn.Layer` named ``"simplernn"``, params ``{"w_ih": (in, hidden),
      "w_hh": (hidden, hidden), "b": (hidden,)}``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> rnn = nn.SimpleRNN(8)
      >>> out_shape, params = rnn.init(jax.random.key(0), (2, 5, 3))
      >>> out_shape, rnn.apply(params, jnp.ones((2, 5, 3))).shape
      ((2, 8), (2, 8))
    """
    def step(params, h, xw_t):
        return activation(xw_t + h @ params["w_hh"])

    cell = _Cell(step, lambda batch, dtype: jnp.zeros((batch, hidden), dtype))
    return _recurrent("SimpleRNN", hidden, 1, {"b": b_init or init_lib.zeros()}, w_init,
                      u_init, cell, return_sequences, reverse)


def GRU(hidden: int, *, return_sequences: bool = False, reverse: bool = False,
        w_init: Initializer | None = None, u_init: Initializer | None = None,
        b_init: Initializer | None = None) -> Layer:
    """Gated recurrent unit (Cho et al., 2014), in PyTorch's formulation.

    With ``a = x_t @ w_ih + b_ih`` and ``c = h_{t-1} @ w_hh + b_hh`` split into ``(r, z, n)``
    thirds::

        r = sigmoid(a_r + c_r),  z = sigmoid(a_z + c_z),  n = tanh(a_n + r * c_n)
        h_t = (1 - z) * n + z * h_{t-1}

    Args:
      hidden: size of the state.
      return_sequences: return every state ``(batch, time, hidden)`` instead of the last.
      reverse: run from the last time step to the first.
      w_init, u_init, b_init: initializers of ``w_ih``, ``w_hh`` and both biases.

    Returns:
      A :class:`~funcbp.nn.Layer` named ``"gru"``, params ``{"w_ih": (in, 3 hidden),
      "w_hh": (hidden, 3 hidden), "b_ih": (3 hidden,), "b_hh": (3 hidden,)}`` (two biases,
      because ``b_hh``'s third is multiplied by ``r``).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> gru = nn.GRU(8, return_sequences=True)
      >>> _, params = gru.init(jax.random.key(0), (2, 5, 3))
      >>> gru.apply(params, jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """
    def step(params, h, xw_t):
        hw = h @ params["w_hh"] + params["b_hh"]
        a_r, a_z, a_n = jnp.split(xw_t, 3, axis=-1)
        c_r, c_z, c_n = jnp.split(hw, 3, axis=-1)
        r = jax.nn.sigmoid(a_r + c_r)
        z = jax.nn.sigmoid(a_z + c_z)
        n = jnp.tanh(a_n + r * c_n)
        return (1 - z) * n + z * h

    b_init = b_init or init_lib.zeros()
    cell = _Cell(step, lambda batch, dtype: jnp.zeros((batch, hidden), dtype))
    return _recurrent("GRU", hidden, 3, {"b_ih": b_init, "b_hh": b_init}, w_init, u_init,
                      cell, return_sequences, reverse)


def LSTM(hidden: int, *, return_sequences: bool = False, reverse: bool = False,
         forget_bias: float = 1.0, w_init: Initializer | None = None,
         u_init: Initializer | None = None) -> Layer:
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), gates in PyTorch's order.

    With ``x_t @ w_ih + h_{t-1} @ w_hh + b`` split into ``(i, f, g, o)`` quarters::

        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)

    Args:
      hidden: size of ``h`` and ``c``.
      return_sequences: return every ``h_t`` ``(batch, time, hidden)`` instead of the last.
      reverse: run from the last time step to the first.
      forget_bias: initial value of the forget gate's bias (others start at 0); 1 keeps the
        cell state flowing early in training (Jozefowicz et al., 2015).
      w_init, u_init: initializers of ``w_ih`` and ``w_hh``.

    Returns:
      A :class:`~funcbp.nn.Layer` named ``"lstm"``, params ``{"w_ih": (in, 4 hidden),
      "w_hh": (hidden, 4 hidden), "b": (4 hidden,)}``; the output is ``h`` (``c`` is
      internal).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> lstm = nn.LSTM(8)
      >>> _, params = lstm.init(jax.random.key(0), (2, 5, 3))
      >>> lstm.apply(params, jnp.ones((2, 5, 3))).shape, params["b"][8:16].tolist()[0]
      ((2, 8), 1.0)
    """
    def step(params, carry, xw_t):
        h, c = carry
        i, f, g, o = jnp.split(xw_t + h @ params["w_hh"], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def b_init(key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(forget_bias)

    def init_carry(batch, dtype):
        return jnp.zeros((batch, hidden), dtype), jnp.zeros((batch, hidden), dtype)

    cell = _Cell(step, init_carry, output=lambda carry: carry[0])
    return _recurrent("LSTM", hidden, 4, {"b": b_init}, w_init, u_init, cell,
                      return_sequences, reverse)
