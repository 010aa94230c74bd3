"""Convolution and pooling rules inside whole small CNNs, to second order, and where jax has none.

References: ``jax.grad`` (first and second derivatives) and a numpy loop that hands each window's
cotangent to its first maximum (for max pooling with window dilation, which jax cannot
differentiate).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp

NHWC = ("NHWC", "HWIO", "NHWC")


def max_pool(x, window=2, stride=2, padding="VALID"):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                             (1, stride, stride, 1), padding)


def avg_pool(x):
    return lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "SAME") / 4.0


def init_params(key, dtype):
    ks = jax.random.split(key, 4)
    return {
        "conv_0": {"w": jax.random.normal(ks[0], (3, 3, 1, 4), dtype) / 3,
                   "b": jnp.zeros(4, dtype)},
        # depthwise-style: two feature groups
        "conv_1": {"w": jax.random.normal(ks[1], (3, 3, 2, 6), dtype) / 4,
                   "b": 0.1 * jax.random.normal(ks[2], (6,), dtype)},
        "dense": {"w": jax.random.normal(ks[3], (2 * 2 * 6, 3), dtype) / 5,
                  "b": jnp.zeros(3, dtype)},
    }


def cnn_loss(params, images, labels, act=jax.nn.relu):
    """conv-act-maxpool3x3/2(SAME) -> grouped conv stride 2-act-avgpool -> dense -> xent."""
    h = lax.conv_general_dilated(images, params["conv_0"]["w"], (1, 1), "SAME",
                                 dimension_numbers=NHWC) + params["conv_0"]["b"]
    h = max_pool(act(h), window=3, stride=2, padding="SAME")
    h = lax.conv_general_dilated(h, params["conv_1"]["w"], (2, 2), ((1, 0), (0, 1)),
                                 dimension_numbers=NHWC, feature_group_count=2)
    h = avg_pool(act(h + params["conv_1"]["b"]))
    h = max_pool(h, window=1, stride=1)  # window of one: every element is its window's maximum
    logits = h.reshape(h.shape[0], -1) @ params["dense"]["w"] + params["dense"]["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def batch(key, dtype, n=3):
    k1, k2 = jax.random.split(key)
    images = jax.random.normal(k1, (n, 12, 12, 1), dtype)
    return images, jax.random.randint(k2, (n,), 0, 3)


def assert_trees_close(ours, ref, rtol, atol):
    leaves_ours, treedef = jax.tree_util.tree_flatten_with_path(ours)
    for (path, a), b in zip(leaves_ours, jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def test_cnn_gradient_matches_jax():
    """Parameters and input together; relu zeros tie inside the max-pool windows."""
    params = init_params(jax.random.key(0), "float32")
    images, labels = batch(jax.random.key(1), "float32", n=4)
    ours = jax.jit(funcbp.value_and_grad(cnn_loss, argnums=(0, 1)))(params, images, labels)
    ref = jax.jit(jax.value_and_grad(cnn_loss, argnums=(0, 1)))(params, images, labels)
    assert_trees_close(ours, ref, 1e-5, 1e-7)


def _hvp(grad, loss, params, v, *args):
    """Hessian-vector product as the gradient of <grad loss, v>."""
    def inner(p):
        g = grad(loss)(p, *args)
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v),
                                                   strict=True))
    return grad(inner)(params)


@pytest.mark.parametrize("outer", [pytest.param("funcbp", marks=pytest.mark.slow), "jax"])
def test_cnn_hessian_vector_product_matches_jax(outer):
    """Second order: funcbp.grad(funcbp.grad) and jax.grad(funcbp.grad) against jax's HVP."""
    with jax.enable_x64(True):
        params = init_params(jax.random.key(4), "float64")
        images, labels = batch(jax.random.key(5), "float64")
        v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(6), p.shape, p.dtype), params)
        loss = lambda p, x, y: cnn_loss(p, x, y, act=jnp.tanh)  # noqa: E731 - smooth: a rich Hessian
        ref = _hvp(jax.grad, loss, params, v, images, labels)
        if outer == "funcbp":
            ours = jax.jit(lambda p: _hvp(funcbp.grad, loss, p, v, images, labels))(params)
        else:
            def inner(p):
                g = funcbp.grad(loss)(p, images, labels)
                return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v),
                                                           strict=True))
            ours = jax.jit(jax.grad(inner))(params)
        assert_trees_close(ours, ref, 1e-9, 1e-12)
        assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ref)) > 1e-3


def test_input_hessian_vector_product_through_pooling_matches_jax():
    """d/dx of a gradient that went through max and sum pooling (ct-linear parts of the rules)."""
    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.key(7), (3, 3, 2, 3), jnp.float64)

        def f(x):
            h = jnp.tanh(lax.conv_general_dilated(x, w, (2, 1), "SAME", dimension_numbers=NHWC))
            return jnp.sum(jnp.sin(max_pool(h, 3, 1, "SAME")) * h) + jnp.sum(avg_pool(h) ** 2)

        x = jax.random.normal(jax.random.key(8), (2, 7, 6, 2), jnp.float64)
        v = jax.random.normal(jax.random.key(9), x.shape, jnp.float64)
        ours = jax.jit(funcbp.grad(lambda x: jnp.vdot(funcbp.grad(f)(x), v)))(x)
        ref = jax.jit(jax.grad(lambda x: jnp.vdot(jax.grad(f)(x), v)))(x)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def _primitive_names(jaxpr, seen):
    for eqn in jaxpr.eqns:
        seen.add(eqn.primitive.name)
        for p in eqn.params.values():
            sub = getattr(p, "jaxpr", p)
            if hasattr(sub, "eqns"):
                _primitive_names(sub, seen)
    return seen


@pytest.mark.parametrize("window,stride,padding", [(2, 2, "VALID"), (3, 1, "SAME"),
                                                   (3, 2, "SAME"), (6, 6, "VALID")])
def test_max_pool_gradient_is_lean(window, stride, padding):
    """No select_and_scatter_add (slow on CPU) and no scatter in funcbp's max-pool gradient."""
    x = jnp.ones((2, 12, 12, 3))
    jaxpr = jax.make_jaxpr(funcbp.grad(lambda x: jnp.sum(max_pool(x, window, stride, padding))))(x)
    names = _primitive_names(jaxpr.jaxpr, set())
    assert not {n for n in names if "scatter" in n or n.startswith("select_and")}, names
    assert "reduce_window_max" in names  # the forward is still there


def first_max_pool_vjp(x, ct, window, strides, padding, base_dilation, window_dilation):
    """numpy reference: each window's cotangent to its first maximum (row-major window order)."""
    padded = [(n - 1) * d + 1 + lo + hi
              for n, (lo, hi), d in zip(x.shape, padding, base_dilation, strict=True)]
    xp = np.full(padded, -np.inf)
    inside = tuple(slice(lo, lo + (n - 1) * d + 1, d)
                   for n, (lo, _), d in zip(x.shape, padding, base_dilation, strict=True))
    xp[inside] = x
    gp = np.zeros_like(xp)
    for o in itertools.product(*map(range, ct.shape)):
        best, where = -np.inf, None
        for j in itertools.product(*map(range, window)):
            p = tuple(oi * s + ji * d for oi, s, ji, d in
                      zip(o, strides, j, window_dilation, strict=True))
            if where is None or xp[p] > best:
                best, where = xp[p], p
        gp[where] += ct[o]
    return gp[inside]


POOL_CONFIGS = [
    dict(window=(1, 3, 2), strides=(1, 1, 2), padding=((0, 0), (0, 0), (0, 0)),
         base_dilation=(1, 1, 1), window_dilation=(1, 2, 2)),
    dict(window=(1, 2, 3), strides=(1, 2, 1), padding=((0, 0), (1, 2), (2, 0)),
         base_dilation=(1, 1, 1), window_dilation=(1, 3, 1)),
    dict(window=(2, 2, 2), strides=(1, 3, 2), padding=((0, 0), (1, 0), (0, 1)),
         base_dilation=(1, 2, 1), window_dilation=(1, 1, 2)),
    dict(window=(1, 3, 3), strides=(1, 3, 3), padding=((0, 0), (0, 0), (0, 0)),
         base_dilation=(1, 1, 1), window_dilation=(1, 1, 1)),
]


@pytest.mark.parametrize("config", POOL_CONFIGS,
                         ids=lambda c: f"w{c['window']}d{c['window_dilation']}")
def test_max_pool_with_window_dilation_matches_numpy_first_maximum(config):
    """jax has no max-pool VJP with window dilation; check the rule against a plain loop."""
    with jax.enable_x64(True):
        x = jax.random.randint(jax.random.key(10), (2, 9, 8), -2, 3).astype(jnp.float64)
        kw = dict(window_dimensions=config["window"], window_strides=config["strides"],
                  padding=config["padding"], base_dilation=config["base_dilation"],
                  window_dilation=config["window_dilation"])
        fun = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, **kw)  # noqa: E731
        ct = jax.random.normal(jax.random.key(11), jax.eval_shape(fun, x).shape, jnp.float64)
        ours = jax.jit(lambda x, ct: funcbp.vjp(fun, x)[1](ct)[0])(x, ct)
        ref = first_max_pool_vjp(np.asarray(x), np.asarray(ct), config["window"],
                                 config["strides"], config["padding"], config["base_dilation"],
                                 config["window_dilation"])
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_generic_reduce_window_refuses_a_differentiated_init_value():
    """A product pool has a rule (tests/autodiff/cases/conv.py); an init value that depends on
    the input has none (jax has none either): a clear error, not a wrong gradient."""
    def prod_pool(x):
        return lax.reduce_window(x, x[0] * 0 + 1.0, lax.mul, (2,), (2,), "VALID")

    with pytest.raises(NotImplementedError, match="init_values"):
        funcbp.grad(lambda x: jnp.sum(prod_pool(x)))(jnp.ones(4))
