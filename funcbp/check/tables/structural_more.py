"""``funcbp check`` records for the structural, reduction, indexing and windowed rules added for
issue 18: reshape's ``dimensions`` (``order="F"``), stack/unstack/tile, ``lax.reduce`` with a
custom reducer, approx_top_k, scatter-min/max and scatter-mul with repeated indices, the windowed
primitives of jax's own derivatives, generic reduce_window and ragged_dot_general.

Where jax has no reverse mode (generic reduce_window, scatter-mul with repeated indices, a ragged
contraction) or gets it
wrong (scatter-max under ``mode="clip"``), the reference is float64 central differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from funcbp.check.rules import TIES, ZEROS, N, Sample

S = (3, 4)
F64 = ("float64",)
REPEATS = jnp.array([0, 2, 0, 3, 2, 0, 4])  # rows 0 and 2 written several times, row 1 never


def _argmax_reducer(a, b):
    (va, ia), (vb, ib) = a, b
    pick = (va > vb) | ((va == vb) & (ia < ib))
    return lax.select(pick, va, vb), lax.select(pick, ia, ib)


def _reduce_argmax(x):
    idx = lax.broadcasted_iota(x.dtype, x.shape, 0) + 0.0 * x
    value, where = lax.reduce((x, idx), (-jnp.inf, jnp.inf), _argmax_reducer, (0,))
    return value * where


def _max_pool_grad(x):
    """jax.grad of a pooled loss: select_and_scatter_add(ct(x), x)."""
    return jax.grad(lambda v: jnp.sum(jnp.tanh(lax.reduce_window(
        v, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")) ** 2))(x)


def _min_pool_jvp(x, t):
    def pool(v):
        return lax.reduce_window(v, jnp.inf, lax.min, (1, 2, 2, 1), (1, 1, 1, 1), "SAME")
    return jax.jvp(pool, (x,), (t,))[1] * pool(x)


def _product_pool(x):
    return lax.reduce_window(x, 1.0, lax.mul, (1, 3, 2, 1), (1, 2, 1, 1), "SAME",
                             window_dilation=(1, 1, 2, 1))


GROUPS = jnp.array([2, 0, 4, 1], jnp.int32)  # four groups over 7 rows, one empty


def _ragged_contracting(lhs, rhs):
    dnums = lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(((0,), (0,)), ((), ())),
                                          lhs_ragged_dimensions=(0,), rhs_group_dimensions=())
    return lax.ragged_dot_general(lhs, rhs, GROUPS, dnums)


def samples() -> list[Sample]:
    """The records (see the module docstring)."""
    return [
        Sample("reshape", "order F (dimensions)",
               lambda x: jnp.ravel(x, order="F") * jnp.arange(12.0, dtype=x.dtype), (N(*S),)),
        Sample("reshape", "lax dimensions", lambda x: lax.reshape(x, (4, 6), (2, 0, 1)),
               (N(2, 3, 4),)),
        Sample("stack", "random", lambda x, y: jnp.stack([x, y, x * y], axis=1),
               (N(*S), N(*S))),
        Sample("stack", "empty", lambda x, y: jnp.stack([x, y]), (N(0, 3), N(0, 3))),
        Sample("unstack", "some pieces unused", lambda x: jnp.unstack(x, axis=1)[3] * x[:, 0],
               (N(*S),)),
        Sample("tile", "random", lambda x: jnp.tile(x, (2, 1, 3)), (N(*S),)),
        Sample("tile", "size-1", lambda x: jnp.tile(x, (3, 2)), (N(1, 2),)),
        Sample("reduce", "variadic argmax, ties", _reduce_argmax, (TIES(5, 3),)),
        Sample("reduce", "custom reducer, odd size",
               lambda x: lax.reduce(0.3 * x, 0.0, lambda a, b: a * b + a + b, (0,)), (N(5, 3),)),
        Sample("reduce", "empty", lambda x: lax.reduce(x, 1.0, lambda a, b: a * b + 0.0 * a, (0,)),
               (N(0, 3),)),
        Sample("approx_top_k", "max", lambda x: lax.approx_max_k(x, 2)[0], (N(*S),)),
        Sample("approx_top_k", "min, ties", lambda x: lax.approx_min_k(x, 2)[0], (TIES(*S),)),
        Sample("scatter-max", "repeated indices, ties",
               lambda x, u: x.at[REPEATS].max(u), (TIES(5, 3), TIES(7, 3))),
        Sample("scatter-min", "repeated indices, ties",
               lambda x, u: x.at[REPEATS].min(u), (TIES(5, 3), TIES(7, 3))),
        Sample("scatter-max", "clip, out of bounds (jax divides by zero)",
               lambda x, u: jnp.asarray(x).at[REPEATS + 2].max(u, mode="clip"),
               (N(5, 3), N(7, 3)), F64, reference="fd"),
        Sample("scatter-mul", "repeated indices, zeros (jax refuses)",
               lambda x, u: jnp.asarray(x).at[REPEATS].multiply(u), (N(5, 3), ZEROS(7, 3)),
               F64, reference="fd"),
        Sample("select_and_scatter_add", "jax.grad of max-pool, ties", _max_pool_grad,
               (TIES(2, 7, 6, 2),)),
        Sample("select_and_gather_add", "jax.jvp of min-pool, padded", _min_pool_jvp,
               (N(2, 5, 4, 2), N(2, 5, 4, 2))),
        Sample("reduce_window", "product pool (jax: forward mode only)", _product_pool,
               (N(2, 5, 6, 2),), F64, reference="fd"),
        Sample("ragged_dot_general", "ragged rows, an empty group",
               lambda lhs, rhs: lax.ragged_dot(lhs, rhs, GROUPS), (N(7, 3), N(4, 3, 5))),
        Sample("ragged_dot_general", "ragged contraction (jax: no reverse mode)",
               _ragged_contracting, (N(7, 3), N(7, 5)), F64, reference="fd"),
    ]
