"""Verifying every registered VJP rule on random and edge-case inputs (``funcbp check``).

:func:`samples` returns a table with one or more records per primitive: a small function that uses
the primitive, an input sampler (random values plus edge cases on purpose: ties in max/min,
zeros in abs/sign/sqrt/prod, large logits, empty and size-1 dimensions) and the dtypes to run
in. :func:`verify_rules` runs, for every primitive in funcbp's registry, each of its records in
each dtype against ``jax.vjp`` with a random output cotangent (or against float64 central
differences where jax cannot differentiate the primitive in reverse mode, e.g. ``while``), and
returns the worst absolute and relative errors per primitive. Registered primitives with no
record are reported as "not exercised": visible, but not a failure. Records of primitives that
are not registered are skipped.

``jax.vjp`` is used here only as the reference a rule is checked against; it never computes a
funcbp gradient.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core

from funcbp.autodiff.api import vjp as funcbp_vjp
from funcbp.autodiff.rules import RULE_MODULES, VJP_RULES
from funcbp.autodiff.trace import all_jaxprs
from funcbp.check.grads import (
    _compare,
    _lowest_float,
    _precision,
    _scale,
    check_grads,
    default_tolerances,
    format_table,
)

__all__ = ["RuleResult", "RulesReport", "Sample", "float_argnums", "of_float_args",
           "pull_back", "samples", "verify_rules"]

Draw = Callable[[jax.Array, Any], Any]

F = ("float32", "float64")
LOWP = ("float32", "float64", "bfloat16", "float16")


@dataclass(frozen=True)
class Sample:
    """One way of exercising a primitive.

    Attributes:
      prim: the primitive's name (``lax.tanh_p.name``).
      label: what the inputs exercise (``"random"``, ``"ties"``, ``"zeros"``, ``"empty"``...).
      fun: the function; its float positional arguments are differentiated.
      draws: one sampler per argument, ``draw(key, dtype) -> value`` (or a constant).
      dtypes: float dtypes the rule is checked in.
      tol: multiplier on the dtype's default tolerances.
      reference: ``"jax"`` (``jax.vjp``), ``"fd"`` (float64 central differences only) or
        ``"raises"`` (jax refuses reverse mode here, e.g. ``while``: funcbp must refuse too).
      context: a zero-argument function returning a context manager to run the sample in.
    """

    prim: str
    label: str
    fun: Callable
    draws: tuple
    dtypes: tuple = F
    tol: float = 1.0
    reference: str = "jax"
    context: Callable[[], Any] | None = None

    def sample(self, key: jax.Array, dtype: Any) -> tuple:
        keys = jax.random.split(key, max(len(self.draws), 1))
        return tuple(d(k, dtype) if callable(d) else d
                     for d, k in zip(self.draws, keys, strict=False))


# --- samplers ------------------------------------------------------------------------------------

def N(*shape: int, scale: float = 1.0) -> Draw:
    """Standard normal values (times ``scale``)."""
    return lambda key, dtype: scale * jax.random.normal(key, shape, dtype)


def U(lo: float, hi: float, *shape: int) -> Draw:
    """Uniform values in ``[lo, hi)``."""
    return lambda key, dtype: jax.random.uniform(key, shape, dtype, lo, hi)


def P(*shape: int) -> Draw:
    """Positive values in ``[0.5, 2)``."""
    return U(0.5, 2.0, *shape)


def TIES(*shape: int) -> Draw:
    """Integers in ``[-2, 2]`` as floats: max/min/sort/comparisons tie often."""
    return lambda key, dtype: jax.random.randint(key, shape, -2, 3).astype(dtype)


def ZEROS(*shape: int) -> Draw:
    """Normal values with about a third of them exactly zero."""
    def draw(key, dtype):
        x = jax.random.normal(key, shape, dtype)
        return jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.35, shape), 0, x)
    return draw


def INT(lo: int, hi: int, *shape: int) -> Draw:
    """Integer indices (not differentiated)."""
    return lambda key, dtype: jax.random.randint(key, shape, lo, hi)


def PERM(n: int) -> Draw:
    """A permutation of ``range(n)`` (unique indices)."""
    return lambda key, dtype: jax.random.permutation(key, n)


S = (3, 4)


def _unary(prim: str, fn: Callable, draw: Draw, label: str = "random",
           dtypes: tuple = F, **kw: Any) -> Sample:
    return Sample(prim, label, fn, (draw,), dtypes, **kw)


def _binary(prim: str, fn: Callable, dx: Draw, dy: Draw, label: str = "random",
            dtypes: tuple = F, **kw: Any) -> Sample:
    return Sample(prim, label, fn, (dx, dy), dtypes, **kw)


# --- a few functions the table needs -------------------------------------------------------

def _maxpool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _minpool(x):
    return lax.reduce_window(x, jnp.inf, lax.min, (1, 2, 2, 1), (1, 1, 1, 1), "SAME")


def _avgpool(x):
    return lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 2, 2, 1),
                             ((0, 0), (1, 1), (1, 1), (0, 0))) / 9.0


def _conv(x, w, **kw):
    return lax.conv_general_dilated(x, w, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


def _scan_rnn(h0, xs, w):
    def step(h, x):
        h = jnp.tanh(h @ w + x)
        return h, h * h
    h, ys = lax.scan(step, h0, xs)
    return h, ys


def _cond(p, x, y):
    return lax.cond(p > 0, lambda a, b: jnp.sin(a) * b, lambda a, b: a - b * b, x, y)


def _while(x):
    def body(c):
        v, i = c
        return jnp.sin(v) * 1.5 + v, i + 1
    return lax.while_loop(lambda c: c[1] < 3, body, (x, 0))[0]


@jax.custom_jvp
def _softclip(x):
    return jnp.tanh(x)


_softclip.defjvp(lambda p, t: (jnp.tanh(p[0]), t[0] * (1 - jnp.tanh(p[0]) ** 2)))


@jax.custom_vjp
def _cube(x):
    return x ** 3


_cube.defvjp(lambda x: (x ** 3, x), lambda x, ct: (3 * x * x * ct,))


def _explicit_mesh():
    from jax.sharding import AxisType
    return jax.set_mesh(jax.make_mesh((1,), ("x",), axis_types=(AxisType.Explicit,)))


def _reshard(x):
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec()) * 2.0


def _sharding_constraint(x):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return lax.with_sharding_constraint(x, sharding) * 2.0


def _add_any(x, y):
    from jax._src.ad_util import add_jaxvals_p
    return add_jaxvals_p.bind(x, y) * x


def _copy(x):
    from jax._src.lax.lax import copy_p
    return copy_p.bind(x) * x


def _tag(x):
    from funcbp.autodiff.tag import tag
    return tag(x, "check") * x


def _maxpool_vjp(x, ct):
    return jax.vjp(_maxpool, x)[1](ct)[0]


def _maxpool_jvp(x, t):
    return jax.jvp(_maxpool, (x,), (t,))[1]


def _cmp(op):
    return lambda x, y: lax.select(op(x, y), x * y, x - y)


def _no_grad_unary(op):
    return lambda x: op(x) * x


def _edge_table() -> list[Sample]:
    """The whole table (built lazily so importing funcbp.check stays cheap)."""
    smooth = [  # primitive, function, sampler
        ("neg", lax.neg, N(*S)), ("sin", jnp.sin, N(*S)), ("cos", jnp.cos, N(*S)),
        ("tan", jnp.tan, U(-1.0, 1.0, *S)), ("asin", jnp.arcsin, U(-0.9, 0.9, *S)),
        ("acos", jnp.arccos, U(-0.9, 0.9, *S)), ("atan", jnp.arctan, N(*S)),
        ("sinh", jnp.sinh, N(*S)), ("cosh", jnp.cosh, N(*S)), ("asinh", jnp.arcsinh, N(*S)),
        ("acosh", jnp.arccosh, U(1.5, 3.0, *S)), ("atanh", jnp.arctanh, U(-0.9, 0.9, *S)),
        ("exp", jnp.exp, N(*S)), ("exp2", jnp.exp2, N(*S)), ("expm1", jnp.expm1, N(*S)),
        ("log", jnp.log, P(*S)), ("log1p", jnp.log1p, P(*S)), ("tanh", jnp.tanh, N(*S)),
        ("logistic", jax.nn.sigmoid, N(*S)), ("sqrt", jnp.sqrt, P(*S)),
        ("rsqrt", lax.rsqrt, P(*S)), ("cbrt", jnp.cbrt, P(*S)), ("abs", jnp.abs, N(*S)),
        ("square", lax.square, N(*S)), ("erf", lax.erf, N(*S)), ("erfc", lax.erfc, N(*S)),
        ("erf_inv", lax.erf_inv, U(-0.9, 0.9, *S)), ("lgamma", lax.lgamma, P(*S)),
        ("digamma", lax.digamma, P(*S)), ("integer_pow", lambda x: x ** 3, N(*S)),
    ]
    low_precision = {"neg", "exp", "tanh", "logistic", "sin", "square"}
    t: list[Sample] = []
    for prim, fn, draw in smooth:
        t.append(_unary(prim, fn, draw, dtypes=LOWP if prim in low_precision else F))
    t += [
        # --- elementwise edge cases
        _unary("abs", jnp.abs, ZEROS(*S), "zeros"),
        _unary("sign", lambda x: jnp.sign(x) * x, ZEROS(*S), "zeros"),
        _unary("sqrt", jnp.sqrt, lambda k, d: jnp.zeros(S, d).at[0].set(1.0), "zeros (inf)"),
        _unary("integer_pow", lambda x: lax.integer_pow(x, -2), P(*S), "negative power"),
        _unary("integer_pow", lambda x: lax.integer_pow(x, 2), ZEROS(*S), "zeros"),
        _unary("logistic", jax.nn.sigmoid, N(*S, scale=30.0), "large logits"),
        _unary("exp", lambda x: jax.nn.softmax(x, axis=-1), N(*S, scale=50.0), "large logits"),
        _unary("log", lambda x: jax.nn.log_softmax(x * 40.0), N(*S), "large logits"),
        _unary("tanh", jnp.tanh, N(*S, scale=20.0), "saturated"),
        _unary("cbrt", jnp.cbrt, N(*S), "negative"),
        _unary("floor", _no_grad_unary(lax.floor), N(*S)),
        _unary("bitcast_convert_type",
               _no_grad_unary(lambda x: lax.bitcast_convert_type(x, x.dtype)), N(*S)),
        _unary("ceil", _no_grad_unary(lax.ceil), N(*S)),
        _unary("round", _no_grad_unary(lax.round), N(*S)),
        _unary("is_finite", lambda x: jnp.where(jnp.isfinite(x), x, 0.0),
               lambda k, d: jax.random.normal(k, S, d).at[0, 0].set(jnp.inf), "inf"),
        _unary("stop_gradient", lambda x: lax.stop_gradient(x) * x, N(*S)),
        _unary("reduce_precision", lambda x: lax.reduce_precision(x, 8, 7) * x, N(*S)),
        _unary("convert_element_type", lambda x: x.astype(jnp.float16).astype(x.dtype) * x,
               N(*S), "to float16 and back"),
        _unary("convert_element_type", lambda x: x.astype(jnp.int32).astype(x.dtype) + x,
               N(*S, scale=3.0), "to int (no gradient)"),
        _unary("convert_element_type", lambda x: jnp.tanh(x.astype(jnp.float32)), N(*S),
               "mixed dtypes", dtypes=("float64", "bfloat16", "float16")),
        _unary("copy", _copy, N(*S)),
        _unary("add", lambda x: x + x, N(0, 3), "empty"),
        _binary("add", lax.add, N(*S), N(*S), dtypes=LOWP),
        _binary("add", lambda x, y: x + y, N(*S), N(1, 4), "size-1 broadcast"),
        _binary("add", lambda x, y: x + y, N(*S), N(), "scalar broadcast"),
        _binary("add_any", _add_any, N(*S), N(*S)),
        _binary("sub", lax.sub, N(*S), N(*S), dtypes=LOWP),
        _binary("mul", lax.mul, N(*S), N(*S), dtypes=LOWP),
        _unary("mul", lambda x: x * x, N(*S), "same input twice"),
        _binary("div", lax.div, N(*S), P(*S)),
        _binary("div", lambda x, y: x / y, N(1, 4), P(3, 1), "size-1 broadcast"),
        _binary("max", lax.max, N(*S), N(*S), dtypes=LOWP),
        _binary("max", lax.max, TIES(*S), TIES(*S), "ties"),
        _binary("min", lax.min, N(*S), N(*S)),
        _binary("min", lax.min, TIES(*S), TIES(*S), "ties"),
        _unary("max", jax.nn.relu, TIES(*S), "relu at zero"),
        _binary("pow", lax.pow, P(*S), N(*S)),
        _binary("pow", lax.pow, lambda k, d: jnp.zeros(S, d), U(1.5, 3.0, *S), "zero base"),
        _binary("atan2", jnp.arctan2, N(*S), N(*S)),
        _binary("rem", lax.rem, N(*S, scale=3.0), P(*S)),
        _binary("nextafter", lambda x, y: lax.nextafter(x, y) * x, N(*S), N(*S)),
        Sample("clamp", "random", lax.clamp, (U(-2.0, -1.0, *S), N(*S), U(1.0, 2.0, *S))),
        # constant bounds: jax.vjp itself fails for scalar bounds that are differentiated
        _unary("clamp", lambda x: lax.clamp(-1.0, x, 1.0), TIES(*S), "ties at bounds"),
        Sample("select_n", "random", lambda p, x, y: lax.select_n(p, x, y),
               (lambda k, d: jax.random.bernoulli(k, 0.5, S), N(*S), N(*S))),
        Sample("select_n", "three cases", lambda i, x, y, z: lax.select_n(i, x, y, z),
               (INT(0, 3, *S), N(*S), N(*S), N(*S))),
        # comparisons and logic carry no gradient; their results choose between gradients
        *[_binary(name, _cmp(op), TIES(*S), TIES(*S), "ties")
          for name, op in [("eq", lax.eq), ("ne", lax.ne), ("lt", lax.lt), ("le", lax.le),
                           ("gt", lax.gt), ("ge", lax.ge)]],
        *[_binary(name, lambda x, y, op=op: lax.select(op(x > 0, y > 0), x, y), N(*S), N(*S))
          for name, op in [("and", lax.bitwise_and), ("or", lax.bitwise_or),
                           ("xor", lax.bitwise_xor)]],
        _unary("not", lambda x: lax.select(lax.bitwise_not(x > 0), x, -x), N(*S)),
        # --- dot_general
        _binary("dot_general", lambda a, b: a @ b, N(3, 4), N(4, 5), dtypes=LOWP),
        _binary("dot_general", lambda a, b: a @ b, N(3, 4), N(4), "matvec"),
        _binary("dot_general", lambda a, b: jnp.einsum("bij,bjk->bik", a, b),
                N(2, 3, 4), N(2, 4, 5), "batched"),
        _binary("dot_general", lambda a, b: lax.dot_general(a, b, (((0,), (2,)), ((2,), (0,)))),
                N(4, 3, 2), N(2, 5, 4), "batch dims not leading"),
        _binary("dot_general", lambda a, b: a @ b, N(3, 0), N(0, 5), "empty contraction"),
        _binary("dot_general", lambda a, b: a @ b, N(1, 4), N(4, 1), "size-1"),
        # --- structural
        _unary("broadcast_in_dim", lambda x: jnp.broadcast_to(x, (2, 3, 4)), N(1, 4),
               "size-1", dtypes=LOWP),
        _unary("broadcast_in_dim", lambda x: jnp.broadcast_to(x, (0, 4)), N(4), "to empty"),
        _unary("reshape", lambda x: x.reshape(2, 6), N(*S), dtypes=LOWP),
        _unary("reshape", lambda x: x.reshape(0, 5), N(5, 0), "empty"),
        _unary("squeeze", lambda x: lax.squeeze(x, (0, 2)), N(1, 4, 1), "size-1"),
        _unary("transpose", lambda x: jnp.transpose(x, (2, 0, 1)), N(2, 3, 4), dtypes=LOWP),
        _unary("rev", lambda x: lax.rev(x, (0,)), N(*S)),
        _unary("slice", lambda x: x[1:, ::2], N(4, 5), "strided"),
        _unary("slice", lambda x: x[2:2], N(4, 5), "empty"),
        _unary("pad", lambda x: lax.pad(x, 0.0, ((1, 2, 1), (-1, 0, 0))), N(*S),
               "interior and negative"),
        _binary("concatenate", lambda x, y: jnp.concatenate([x, y, x], 0), N(2, 3), N(0, 3),
                "with an empty piece"),
        _binary("concatenate", lambda x, y: jnp.concatenate([x, y], 1), N(2, 3), N(2, 1)),
        _unary("split", lambda x: jnp.split(x, [1, 3], axis=1)[2] * 2.0
               + jnp.split(x, [1, 3], axis=1)[0], N(3, 5)),
        Sample("dynamic_slice", "random", lambda x, i: lax.dynamic_slice(x, (i, 1), (2, 2)),
               (N(*S), INT(0, 2))),
        Sample("dynamic_slice", "start clamped", lambda x: lax.dynamic_slice(x, (5, 3), (2, 2)),
               (N(*S),)),
        Sample("dynamic_update_slice", "random",
               lambda x, u, i: lax.dynamic_update_slice(x, u, (i, 0)), (N(*S), N(2, 4), INT(0, 2))),
        Sample("gather", "repeated indices", lambda x, i: x[i], (N(5, 3), INT(0, 5, 7))),
        Sample("gather", "take_along_axis",
               lambda x, i: jnp.take_along_axis(x, i, axis=1), (N(*S), INT(0, 4, 3, 2))),
        Sample("gather", "size-1", lambda x, i: x[i], (N(1, 3), INT(0, 1, 2))),
        Sample("scatter-add", "repeated indices", lambda x, i, u: x.at[i].add(u),
               (N(5, 3), INT(0, 5, 7), N(7, 3))),
        Sample("scatter-sub", "repeated indices", lambda x, i, u: x.at[i].subtract(u),
               (N(5, 3), INT(0, 5, 7), N(7, 3))),
        Sample("scatter", "unique indices", lambda x, i, u: x.at[i[:3]].set(u),
               (N(5, 3), PERM(5), N(3, 3))),
        Sample("scatter-mul", "unique indices",
               lambda x, i, u: x.at[i[:3]].multiply(u, unique_indices=True),
               (N(5, 3), PERM(5), N(3, 3))),
        Sample("scatter-min", "unique indices", lambda x, i, u: x.at[i[:3]].min(u),
               (N(5, 3), PERM(5), N(3, 3))),
        Sample("scatter-max", "unique indices", lambda x, i, u: x.at[i[:3]].max(u),
               (N(5, 3), PERM(5), N(3, 3))),
        # --- reductions
        _unary("reduce_sum", lambda x: jnp.sum(x, axis=1), N(*S), dtypes=LOWP),
        _unary("reduce_sum", lambda x: jnp.sum(x, axis=0), N(0, 4), "empty axis"),
        _unary("reduce_sum", lambda x: jnp.sum(x, axis=(0, 2)), N(1, 4, 1), "size-1"),
        _unary("reduce_max", lambda x: jnp.max(x, axis=1), N(*S), dtypes=LOWP),
        _unary("reduce_max", lambda x: jnp.max(x, axis=1), TIES(*S), "ties"),
        _unary("reduce_max", lambda x: jax.nn.logsumexp(x * 100.0, axis=0), N(*S),
               "large logits"),
        _unary("reduce_min", lambda x: jnp.min(x, axis=0), TIES(*S), "ties"),
        _unary("reduce_min", lambda x: jnp.min(x), N(1, 1), "size-1"),
        _unary("reduce_prod", lambda x: jnp.prod(x, axis=1), N(*S)),
        _unary("reduce_prod", lambda x: jnp.prod(x, axis=1), ZEROS(*S), "zeros"),
        _unary("argmax", lambda x: jnp.argmax(x, axis=1).astype(x.dtype)[:, None] * x, TIES(*S),
               "ties"),
        _unary("argmin", lambda x: jnp.argmin(x, axis=0).astype(x.dtype) * x, TIES(*S), "ties"),
        _unary("cumsum", lambda x: jnp.cumsum(x, axis=1), N(*S)),
        _unary("cumsum", lambda x: lax.cumsum(x, axis=0, reverse=True), N(*S), "reverse"),
        _unary("cumprod", lambda x: jnp.cumprod(x, axis=1), N(*S)),
        _unary("cumprod", lambda x: jnp.cumprod(x, axis=1), ZEROS(*S), "zeros"),
        _unary("cummax", lambda x: lax.cummax(x, axis=1), TIES(*S), "ties"),
        _unary("cummin", lambda x: lax.cummin(x, axis=0), TIES(*S), "ties"),
        _unary("cumlogsumexp", lambda x: lax.cumlogsumexp(x, axis=1), N(*S, scale=30.0),
               "large logits"),
        _unary("sort", lambda x: jnp.sort(x, axis=1), N(*S)),
        _unary("sort", lambda x: jnp.sort(x, axis=0), TIES(*S), "ties"),
        _binary("sort", lambda k, v: lax.sort((k, v), num_keys=1)[1], TIES(*S), N(*S),
                "key-value, ties"),
        _unary("top_k", lambda x: lax.top_k(x, 2)[0], N(*S)),
        # --- convolution and pooling
        _binary("conv_general_dilated", lambda x, w: _conv(x, w, window_strides=(1, 1),
                                                           padding="SAME"),
                N(2, 5, 5, 3), N(3, 3, 3, 4)),
        _binary("conv_general_dilated", lambda x, w: _conv(
            x, w, window_strides=(2, 1), padding=((1, 0), (0, 1)), lhs_dilation=(1, 2),
            rhs_dilation=(2, 1)), N(1, 6, 5, 2), N(2, 2, 2, 3), "strided and dilated"),
        _binary("conv_general_dilated", lambda x, w: _conv(
            x, w, window_strides=(1, 1), padding="VALID", feature_group_count=2),
            N(2, 4, 4, 4), N(2, 2, 2, 6), "grouped"),
        _binary("conv_general_dilated", lambda x, w: _conv(x, w, window_strides=(1, 1),
                                                           padding="VALID"),
                N(1, 3, 3, 1), N(3, 3, 1, 1), "size-1 output"),
        _unary("reduce_window_max", _maxpool, N(2, 4, 4, 3)),
        _unary("reduce_window_max", _maxpool, TIES(1, 4, 4, 2), "ties"),
        _unary("reduce_window_min", _minpool, TIES(1, 3, 3, 2), "ties, overlapping"),
        _unary("reduce_window_sum", _avgpool, N(2, 5, 5, 3), "padded"),
        _binary("select_and_scatter_add", _maxpool_vjp, N(1, 4, 4, 2), N(1, 2, 2, 2)),
        _binary("select_and_gather_add", _maxpool_jvp, N(1, 4, 4, 2), N(1, 4, 4, 2)),
        # --- control flow and calls
        Sample("scan", "rnn", _scan_rnn, (N(3), N(4, 3), N(3, 3, scale=0.5))),
        Sample("scan", "empty", _scan_rnn, (N(3), N(0, 3), N(3, 3, scale=0.5))),
        Sample("cond", "true branch", _cond, (lambda k, d: jnp.ones((), d), N(*S), N(*S))),
        Sample("cond", "false branch", _cond, (lambda k, d: -jnp.ones((), d), N(*S), N(*S))),
        Sample("while", "refuses reverse mode, as jax", _while, (N(3),), reference="raises"),
        _binary("jit", lambda x, y: jax.jit(lambda a, b: jnp.sin(a) * b)(x, y), N(*S), N(*S)),
        _unary("custom_jvp_call", lambda x: jax.nn.relu(x) * 3.0, TIES(*S), "relu kink"),
        _unary("custom_jvp_call", _softclip, N(*S), "user rule"),
        _unary("custom_vjp_call", _cube, N(*S), "user rule"),
        Sample("custom_vjp_call", "user rule vs finite differences", _cube, (N(*S),),
               ("float64",), reference="fd"),
        _binary("remat2", jax.checkpoint(lambda x, w: jnp.tanh(x @ w) @ w.T), N(3, 4), N(4, 4)),
        _binary("optimization_barrier", lambda x, y: sum(lax.optimization_barrier((x * 2.0, y))),
                N(3), N(3)),
        _unary("sharding_constraint", _sharding_constraint, N(*S)),
        Sample("reshard", "random", _reshard, (N(*S),), context=_explicit_mesh),
        _unary("funcbp_tag", _tag, N(*S)),
    ]
    return t


_TABLE: list[Sample] | None = None


def samples() -> list[Sample]:
    """The sample table, built on first use (importing funcbp.check stays cheap).

    The core families are listed in :func:`_edge_table`; every module of the
    :mod:`funcbp.check.tables` package adds its family's records through its own
    ``samples()`` function (one module per rule family, so families grow independently).
    """
    global _TABLE
    if _TABLE is None:
        import importlib
        import pkgutil

        from funcbp.check import tables

        table = _edge_table()
        for info in sorted(pkgutil.iter_modules(tables.__path__), key=lambda m: m.name):
            table += importlib.import_module(f"{tables.__name__}.{info.name}").samples()
        _TABLE = table
    return _TABLE


# --- verification ------------------------------------------------------------------------------

@dataclass
class RuleResult:
    """The verdict on one primitive's rule."""

    primitive: str
    module: str
    status: str = "not exercised"  # ok | FAIL | not exercised
    samples: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    worst: str = ""
    errors: list[str] = field(default_factory=list)  # mismatches: the rule is wrong
    notes: list[str] = field(default_factory=list)  # a sample that could not run

    @property
    def passed(self) -> bool:
        return self.status != "FAIL"


@dataclass
class RulesReport:
    """The result of :func:`verify_rules`; ``print(report)`` shows the table."""

    rules: list[RuleResult]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "FAIL": 0, "not exercised": 0}
        for r in self.rules:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {"passed": self.passed, "counts": self.counts(), "seconds": self.seconds,
                "rules": [vars(r).copy() for r in self.rules]}

    def table(self, markdown: bool = False) -> str:
        cols = ["primitive", "rule module", "status", "max abs err", "max rel err", "dtypes",
                "cases"]
        rows = []
        for r in self.rules:
            exercised = r.status != "not exercised"
            rows.append([r.primitive, r.module, r.status,
                         f"{r.max_abs_err:.1e}" if exercised else "-",
                         f"{r.max_rel_err:.1e}" if exercised else "-",
                         ",".join(_short(d) for d in r.dtypes) or "-",
                         "; ".join(dict.fromkeys(r.samples)) or "-"])
        if markdown:
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
            return "\n".join(lines)
        return format_table(cols, rows)

    def summary(self) -> str:
        c = self.counts()
        return (f"funcbp check: {len(self.rules)} registered rules: {c['ok']} ok, "
                f"{c['FAIL']} failed, {c['not exercised']} not exercised ({self.seconds:.1f} s)")

    def __str__(self) -> str:
        lines = [self.table(), "", self.summary()]
        for r in self.rules:
            for e in r.errors:
                lines.append(f"  FAIL {r.primitive}: {e}")
            for e in r.notes:
                lines.append(f"  note {r.primitive}: {e}")
        return "\n".join(lines)


def _short(dtype: str) -> str:
    return {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}.get(dtype,
                                                                                         dtype)


def _primitive_names(jaxpr: core.Jaxpr, seen: set) -> set:
    seen.update(eqn.primitive.name for j in all_jaxprs(jaxpr) for eqn in j.eqns)
    return seen


def _random_cotangent(key: jax.Array, out: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(out)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten([
        jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
        else np.zeros(jnp.shape(x), jax.dtypes.float0) for k, x in zip(keys, leaves, strict=True)])


def float_argnums(values: Sequence[Any]) -> tuple[int, ...]:
    """Positions of the floating-point entries of ``values``: those a gradient is taken of."""
    return tuple(i for i, a in enumerate(values)
                 if jnp.issubdtype(jnp.result_type(a), jnp.inexact))


def of_float_args(fun: Callable, values: Sequence[Any]) -> tuple[Callable, tuple]:
    """``(f, floats)``: ``fun`` as a function of the floating-point entries of ``values`` only
    (the others, e.g. integer labels or indices, held at their values), and those entries."""
    nums = float_argnums(values)

    def f(*floats):
        full = list(values)
        for n, a in zip(nums, floats, strict=True):
            full[n] = a
        return fun(*full)
    return f, tuple(values[n] for n in nums)


def pull_back(vjp: Callable, fun: Callable, values: Sequence[Any],
              cotangent: Callable[[Any], Any]) -> tuple:
    """Cotangents of ``fun``'s floating-point arguments at ``values``.

    ``vjp`` is ``jax.vjp`` or ``funcbp.vjp``; ``cotangent(out)`` gives the output cotangent
    for the output ``out`` (e.g. a random draw of its shape).
    """
    f, floats = of_float_args(fun, values)
    out, pullback = vjp(f, *floats)
    return pullback(cotangent(out))


def _float64_truth(s: Sample, values: tuple, cotangent: Callable) -> list | None:
    """``jax.vjp`` of the sample at the same inputs and cotangent cast to float64, or None.

    None when the sample cannot run in float64 (it casts to a fixed dtype inside, say).
    """
    def up(v):
        dtype = jnp.result_type(v)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            return jnp.asarray(v, jnp.complex128)
        return jnp.asarray(v, jnp.float64) if jnp.issubdtype(dtype, jnp.floating) else v

    try:
        f, floats = of_float_args(s.fun, values)
        ct = cotangent(jax.eval_shape(f, *floats))
        with jax.enable_x64(True), (s.context() if s.context is not None
                                    else contextlib.nullcontext()):
            truth = pull_back(jax.vjp, s.fun, jax.tree.map(up, values),
                              lambda out: jax.tree.map(up, ct))
            return [np.asarray(t, np.complex128 if jnp.iscomplexobj(t) else np.float64)
                    for t in jax.tree.leaves(truth)]
    except Exception:  # noqa: BLE001 - no truth to judge by: the plain comparison stands
        return None


def _no_worse_than_jax(ours: Any, ref: Any, truth: np.ndarray, rtol: float,
                       atol: float) -> bool:
    """Wherever funcbp and jax disagree beyond tolerance, funcbp is nearer the float64 truth
    than jax (or within tolerance of it)."""
    a, b = np.ravel(np.asarray(ours, truth.dtype)), np.ravel(np.asarray(ref, truth.dtype))
    t = np.ravel(truth)
    if a.shape != t.shape or not (np.isfinite(a).all() and np.isfinite(t).all()):
        return False
    floor = atol / rtol if rtol > 0 else 0.0
    with np.errstate(invalid="ignore"):
        disagree = ~(np.abs(a - b) <= rtol * (np.abs(b) + floor))
    near = np.abs(a - t) <= np.maximum(np.abs(b - t), rtol * (np.abs(t) + floor))
    return bool(near[disagree].all())


class _NoReference(Exception):
    """A sample nothing independent can judge on the installed jax (reported as a note)."""


def _run_sample(s: Sample, dtype: str, seed: int, key: jax.Array,
                precision: str) -> tuple[float, float, str]:
    """(max abs err, max rel err, where) of one sample in one dtype; raises on mismatch."""
    values = s.sample(key, jnp.dtype(dtype))
    if s.reference == "raises":
        outcome = []
        for vjp in (jax.vjp, funcbp_vjp):
            try:
                jax.block_until_ready(pull_back(vjp, s.fun, values,
                                                partial(_random_cotangent, key)))
                outcome.append(None)
            except Exception as e:
                outcome.append(type(e).__name__)
        if outcome[0] is not None and outcome[1] is None:
            return np.inf, np.inf, (f"{s.label} ({dtype}): jax.vjp raises {outcome[0]} but "
                                    "funcbp returns a gradient")
        if outcome[0] is None:
            return np.inf, np.inf, f"{s.label} ({dtype}): jax.vjp no longer raises here"
        return 0.0, 0.0, ""
    if s.reference == "fd":
        report = check_grads(s.fun, values, argnums=float_argnums(values), methods=("fd",),
                             seed=seed)
        worst = max(report.leaves, key=lambda leaf: leaf.vs_fd.max_rel_err)
        c = worst.vs_fd
        return c.max_abs_err, c.max_rel_err, "" if c.passed else (
            f"{s.label} ({dtype}): vs finite differences at {worst.path}{c.worst}: funcbp "
            f"{c.ours:.6g}, fd {c.ref:.6g}")
    cotangent = partial(_random_cotangent, jax.random.fold_in(key, 1))
    ours = jax.tree.leaves(pull_back(funcbp_vjp, s.fun, values, cotangent))
    try:
        refs = jax.tree.leaves(pull_back(jax.vjp, s.fun, values, cotangent))
    except NotImplementedError as e:
        # an older jax cannot reverse this case (jax 0.9: a wide or complete-mode QR); the
        # independent reference left is finite differences, for real values only
        outs = jax.eval_shape(s.fun, *values)
        if any(jnp.iscomplexobj(v) for v in jax.tree.leaves((values, outs))):
            raise _NoReference(f"{s.label} ({dtype}): jax {jax.__version__} cannot reverse "
                               "this sample, and finite differences here take real inputs and "
                               "outputs only: not checked") from e
        return _run_sample(replace(s, reference="fd"), dtype, seed, key, precision)
    rtol, atol = default_tolerances(precision, "jax")
    rtol, atol = rtol * s.tol, atol * s.tol
    np_refs = [np.asarray(r, np.float64) for r in refs if r.dtype != jax.dtypes.float0]
    scale = _scale(np_refs)
    worst_abs, worst_rel, problem = 0.0, 0.0, ""
    truth = None
    for i, (a, b) in enumerate(zip(ours, refs, strict=True)):
        if a.shape != b.shape or a.dtype != b.dtype:
            return np.inf, np.inf, (f"{s.label} ({dtype}): argument {i}: cotangent "
                                    f"{a.dtype}{list(a.shape)}, jax gives {b.dtype}{list(b.shape)}")
        if b.dtype == jax.dtypes.float0:
            continue
        abs_e, rel_e, w, ok = _compare(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                       rtol, atol * scale)
        worst_abs, worst_rel = max(worst_abs, abs_e), max(worst_rel, rel_e)
        if not ok:
            # jax is a reference, not the truth: near saturation (tanh at |x| ~ 10 in float32)
            # both round, and funcbp may be the nearer one. Pass when, wherever the two
            # disagree, funcbp is at least as close as jax to the same inputs in float64.
            truth = truth if truth is not None else _float64_truth(s, values, cotangent)
            ok = truth is not None and _no_worse_than_jax(a, b, truth[i], rtol, atol * scale)
        if not ok and not problem:
            idx = tuple(int(j) for j in np.unravel_index(w, a.shape))
            problem = (f"{s.label} ({dtype}): argument {i} at {idx}: funcbp "
                       f"{float(np.ravel(a)[w]):.6g}, jax {float(np.ravel(b)[w]):.6g} "
                       f"(rel err {rel_e:.2g} > {rtol:.2g})")
    return worst_abs, worst_rel, problem


def verify_rules(primitives: Sequence[str] | None = None, *, seeds: int = 2,
                 dtypes: Sequence[str] | None = None, progress: Callable[[str], None] | None = None
                 ) -> RulesReport:
    """Checks every registered VJP rule against ``jax.vjp`` on random and edge-case inputs.

    For each registered primitive, each of its records in :func:`samples`, each dtype the
    record lists and ``seeds`` random draws: funcbp's cotangents of the function's float
    arguments for a random output cotangent are compared with ``jax.vjp``'s (with
    :func:`funcbp.check.default_tolerances` for the dtype: relative error with an absolute
    floor scaled to the gradient's size), and the worst absolute and relative errors are kept.
    jax rounds too: where the two disagree beyond tolerance, the entry still passes if funcbp
    is at least as close as jax to ``jax.vjp`` of the same inputs in float64 (the errors
    shown stay those against jax).

    Args:
      primitives: only these primitive names (default: every registered one).
      seeds: random draws per record and dtype.
      dtypes: restrict to these dtypes (default: what each record lists).
      progress: called with each primitive's name before it runs (for a CLI).

    Returns:
      A :class:`RulesReport`, one :class:`RuleResult` per primitive, sorted by name.

    Examples:
      >>> from funcbp.check.rules import verify_rules
      >>> report = verify_rules(["tanh", "mul"], seeds=1)
      >>> report.passed, [r.status for r in report.rules]
      (True, ['ok', 'ok'])
    """
    start = time.perf_counter()
    registered = {p.name: p for p in VJP_RULES}
    names = sorted(registered) if primitives is None else list(primitives)
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise ValueError(f"no registered VJP rule for {unknown}; registered primitives are "
                         f"{sorted(registered)}")
    by_prim: dict[str, list[Sample]] = {}
    for s in samples():
        by_prim.setdefault(s.prim, []).append(s)
    results = []
    for name in names:
        prim = registered[name]
        module = RULE_MODULES.get(prim, "?").replace("funcbp.autodiff.rules.", "")
        result = RuleResult(name, module)
        if progress is not None:
            progress(name)
        for s in by_prim.get(name, []):
            for dtype in s.dtypes:
                if dtypes is not None and dtype not in dtypes:
                    continue
                with jax.enable_x64(dtype == "float64"), (
                        s.context() if s.context is not None else contextlib.nullcontext()):
                    try:
                        values = s.sample(jax.random.key(0), jnp.dtype(dtype))
                        jaxpr = jax.make_jaxpr(s.fun)(*values).jaxpr
                        reached = _primitive_names(jaxpr, set())
                        # judge by the least precise float type the sample computes in
                        precision = _precision(_lowest_float(jaxpr, set()))
                    except Exception as e:
                        result.notes.append(f"{s.label} ({dtype}): sample could not be traced: "
                                            f"{type(e).__name__}: {str(e).splitlines()[0]}")
                        continue
                    if name not in reached:
                        result.notes.append(f"{s.label} ({dtype}): the sample does not reach "
                                             f"'{name}' (reaches {sorted(reached)})")
                        continue
                    for seed in range(seeds):
                        tag = zlib.crc32(f"{name}/{s.label}/{dtype}".encode())
                        key = jax.random.fold_in(jax.random.key(seed), tag & 0x7FFFFFFF)
                        try:
                            abs_e, rel_e, problem = _run_sample(s, dtype, seed, key, precision)
                        except _NoReference as e:
                            result.notes.append(str(e))
                            break
                        except Exception as e:
                            abs_e, rel_e = np.inf, np.inf
                            problem = f"{s.label} ({dtype}): {type(e).__name__}: {e}"
                        result.samples.append(s.label)
                        if dtype not in result.dtypes:
                            result.dtypes.append(dtype)
                        if rel_e >= result.max_rel_err:
                            result.worst = f"{s.label} ({dtype})"
                        result.max_abs_err = max(result.max_abs_err, abs_e)
                        result.max_rel_err = max(result.max_rel_err, rel_e)
                        if problem:
                            result.errors.append(problem.splitlines()[0][:300])
                            break
        if result.errors:
            result.status = "FAIL"
        elif result.samples:
            result.status = "ok"
        results.append(result)
    return RulesReport(results, time.perf_counter() - start)
