"""Structural, reduction, indexing and windowed rules where the rule table cannot reach.

The case table (``tests/autodiff/cases``) compares every rule with ``jax.vjp``; this file holds
the checks that need another reference: regressions of silent wrong answers against
``jax.grad`` *and* finite differences, second order through the primitives jax's own backward
pass emits (``funcbp.grad(jax.grad(f))`` on a max-pooling CNN), places where jax refuses or is
inconsistent with itself (repeated-index ``scatter-mul``, ``scatter-max`` under ``mode="clip"``,
ties in a padded ``select_and_scatter_add``), strict dtype promotion, and clear refusals.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import funcbp
from tests.jaxversion import skip_without


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _check_fd(f, args):
    """funcbp.vjp of ``f`` against float64 central differences (one compiled pull-back)."""
    pull = jax.jit(lambda a, ct: funcbp.vjp(f, *a)[1](ct))
    jax.test_util.check_vjp(f, lambda *a: (f(*a), lambda ct: pull(a, ct)), args,
                            atol=1e-6, rtol=1e-6, eps=1e-5)


# --- the silent wrong answer of issue 18: reshape's `dimensions` ----------------------------------

RESHAPES = {
    "ravel_order_f": lambda x: jnp.sum(jnp.arange(6.0) * jnp.ravel(x, order="F")),
    "reshape_order_f": lambda x: jnp.sum(jnp.arange(6.0).reshape(3, 2)
                                         * jnp.reshape(x, (3, 2), order="F") ** 2),
    "lax_reshape_dimensions": lambda x: jnp.sum(jnp.sin(lax.reshape(x, (3, 2), (1, 0)))
                                                * jnp.arange(6.0).reshape(3, 2)),
}


@pytest.mark.parametrize("name", RESHAPES)
def test_reshape_with_dimensions_matches_jax_and_finite_differences(name):
    f = RESHAPES[name]
    x = jnp.arange(6.0).reshape(2, 3) / 7.0
    np.testing.assert_allclose(funcbp.grad(f)(x), jax.grad(f)(x), rtol=1e-12, atol=1e-12)
    _check_fd(f, (x,))
    if name == "ravel_order_f":  # the numbers
        np.testing.assert_array_equal(funcbp.grad(f)(x), [[0, 2, 4], [1, 3, 5]])


def test_vjp_of_jvp_of_a_variadic_reduce_matches_jax():
    """jax's JVP of lax.reduce reshapes with `dimensions`; funcbp's VJP of it was wrong."""
    def r(x):
        return lax.reduce((x, x * x), (0.0, 0.0),
                          lambda a, b: (a[0] + b[0], a[1] + b[1] * a[0]), (0, 2))[1]

    def f(x):
        return jnp.sum(jnp.cos(jax.jvp(r, (x,), (jnp.sin(x),))[1]))

    x = jax.random.normal(jax.random.key(0), (3, 2, 4))
    ours, ref = jax.jit(lambda x: (funcbp.grad(f)(x), jax.grad(f)(x)))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    _check_fd(f, (x,))


# --- second order through jax's own backward primitives ---------------------------------------

def _small_cnn(params, images, labels):
    """conv 3x3 -> tanh -> max-pool 3x3/2 (SAME, overlapping) -> dense -> cross-entropy."""
    h = jnp.tanh(lax.conv_general_dilated(images, params["w"], (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC")))
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
    logp = jax.nn.log_softmax(h.reshape(h.shape[0], -1) @ params["dense"])
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def test_funcbp_grad_of_jax_grad_of_max_pooling_cnn_matches_jax():
    """funcbp.grad(jax.grad(loss)) walks select_and_scatter_add: HVP against jax's, float64."""
    k = jax.random.split(jax.random.key(4), 5)
    params = {"w": jax.random.normal(k[0], (3, 3, 1, 3)) / 3,
              "dense": jax.random.normal(k[1], (3 * 3 * 3, 4)) / 4}
    images = jax.random.normal(k[2], (3, 6, 6, 1))
    labels = jax.random.randint(k[3], (3,), 0, 4)
    v = jax.tree.map(lambda p: jax.random.normal(k[4], p.shape, p.dtype), params)

    def inner(p):
        g = jax.grad(_small_cnn)(p, images, labels)
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v),
                                                   strict=True))

    assert "select_and_scatter_add" in str(jax.make_jaxpr(inner)(params))
    ours = jax.jit(funcbp.grad(inner))(params)
    ref = jax.jit(jax.grad(inner))(params)  # jax's reverse-over-reverse HVP
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), ours, ref)
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ref)) > 1e-3


def test_funcbp_grad_of_jax_jvp_of_max_pooling_matches_jax():
    """Forward-over-pool (select_and_gather_add) reversed by funcbp, against jax.grad."""
    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")

    def f(x):
        return jnp.sum(jnp.tanh(jax.jvp(pool, (x,), (jnp.sin(x),))[1]) * pool(x))

    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 3))
    np.testing.assert_allclose(jax.jit(funcbp.grad(f))(x), jax.jit(jax.grad(f))(x),
                               rtol=1e-10, atol=1e-12)


def _first_max_gather(x, ct, window, strides, padding):
    """numpy: per window, ``ct`` at the window's FIRST maximum of ``x`` (row-major order)."""
    padded = [n + lo + hi for n, (lo, hi) in zip(x.shape, padding, strict=True)]
    xp, gp = np.full(padded, -np.inf), np.zeros(padded)
    inside = tuple(slice(lo, lo + n) for n, (lo, _) in zip(x.shape, padding, strict=True))
    xp[inside], gp[inside] = x, ct
    out_shape = [(p - w) // s + 1 for p, w, s in zip(padded, window, strides, strict=True)]
    out = np.zeros(out_shape)
    for o in itertools.product(*map(range, out_shape)):
        best, where = -np.inf, None
        for j in itertools.product(*map(range, window)):
            p = tuple(oi * s + ji for oi, s, ji in zip(o, strides, j, strict=True))
            if where is None or xp[p] > best:
                best, where = xp[p], p
        out[o] = gp[where]
    return out


def test_select_and_scatter_add_is_transposed_exactly_at_padded_ties():
    """With padding and ties, jax's transpose of select_and_scatter_add picks another maximum
    than the forward did; funcbp's reads the cotangent where the forward wrote (numpy)."""
    window, strides, padding = (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    x = jax.random.randint(jax.random.key(2), (2, 7, 6, 3), -2, 3).astype(jnp.float64)

    def scatter(src):
        def pool(v):
            return lax.reduce_window(v, -jnp.inf, lax.max, window, strides, padding)
        return jax.vjp(pool, x)[1](src)[0]

    ct = jax.random.normal(jax.random.key(3), x.shape)
    src = jnp.zeros(jax.eval_shape(lambda v: lax.reduce_window(
        v, -jnp.inf, lax.max, window, strides, padding), x).shape)
    ours = funcbp.vjp(scatter, src)[1](ct)[0]
    ref = _first_max_gather(np.asarray(x), np.asarray(ct), window, strides, padding)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


# --- where jax refuses or disagrees with finite differences -------------------------------------

IDX = jnp.array([0, 2, 0, 3, 2, 0, 4])


def test_scatter_mul_with_repeated_indices_matches_a_dense_product():
    """jax refuses d/dv of x.at[i].multiply(v) with repeated i; zeros among the updates too."""
    k = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(k[0], (5, 3))
    # position 0 (col 0) gets one zero factor, position 2 (col 1) two: exact products needed
    v = jax.random.normal(k[1], (7, 3)).at[2, 0].set(0.0).at[1, 1].set(0.0).at[4, 1].set(0.0)

    def f(x, v):
        return jnp.asarray(x).at[IDX].multiply(v)

    def dense(x, v):
        hit = jax.nn.one_hot(IDX, 5)[:, :, None] > 0
        return x * jnp.prod(jnp.where(hit, v[:, None, :], 1.0), axis=0)

    ct = jax.random.normal(k[2], (5, 3))
    ours = funcbp.vjp(f, x, v)[1](ct)
    ref = jax.vjp(dense, x, v)[1](ct)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), ours, ref)
    with pytest.raises(NotImplementedError):  # still true of jax; the day it changes, compare
        jax.vjp(f, x, v)[1](ct)
    _check_fd(f, (x, jax.random.normal(k[1], (7, 3))))


def test_scatter_max_clip_matches_finite_differences():
    """Under mode="clip" jax's own scatter-max JVP divides by zero; funcbp keeps the mode."""
    def f(x, v):
        return jnp.sin(jnp.asarray(x).at[IDX + 2].max(v, mode="clip"))

    k = jax.random.split(jax.random.key(8))
    _check_fd(f, (jax.random.normal(k[0], (5, 3)), jax.random.normal(k[1], (7, 3))))


# --- strict dtype promotion ---------------------------------------------------------------------

def test_conv_rule_runs_under_strict_dtype_promotion():
    """bfloat16 inputs with a float32 output: the backward casts explicitly, as jax does."""
    skip_without("conv_mixed_dtype_vjp")
    def f(x, w):
        out = lax.conv_general_dilated(x, w, (2, 1), "SAME",
                                       preferred_element_type=jnp.float32)
        return jnp.sum(out ** 2)

    x = jax.random.normal(jax.random.key(9), (2, 2, 6, 5), jnp.bfloat16)
    w = jax.random.normal(jax.random.key(10), (3, 2, 3, 3), jnp.bfloat16)
    with jax.numpy_dtype_promotion("strict"):
        ours, ref = jax.jit(lambda x, w: (funcbp.grad(f, argnums=(0, 1))(x, w),
                                          jax.grad(f, argnums=(0, 1))(x, w)))(x, w)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2)


def test_new_rules_run_under_strict_dtype_promotion():
    def f(x):
        s = jnp.stack([x, jnp.tile(x, (1, 2))[:, :4]], axis=0)
        pooled = lax.reduce_window(s, 1.0, lax.mul, (1, 2, 2), (1, 1, 1), "SAME")
        r = lax.reduce(pooled, 0.0, lambda a, b: a * b + a + b, (0,))
        return jnp.sum(r * jnp.ravel(x, order="F").reshape(x.shape)) + jnp.sum(
            x.at[jnp.array([0, 0])].max(x[:2] * 2.0))

    x = jax.random.normal(jax.random.key(11), (3, 4)) * 0.3
    with jax.numpy_dtype_promotion("strict"):
        ours = jax.jit(funcbp.grad(f))(x)
    # jax cannot reverse a generic reduce_window: the reference is forward mode, one column each
    basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))
    ref = jax.jit(jax.vmap(lambda t: jax.jvp(f, (x,), (t,))[1]))(basis).reshape(x.shape)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


# --- clear refusals ------------------------------------------------------------------------------

def test_reduce_refuses_a_differentiated_init_value():
    def f(x):
        return jnp.sum(lax.reduce(x, x[0, 0] * 0.0, lambda a, b: a * b + a + b, (0,)))

    with pytest.raises(NotImplementedError, match="init_values"):
        funcbp.grad(f)(jnp.ones((3, 2)))
