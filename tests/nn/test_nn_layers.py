"""Each layer's output shape and values against a direct float64 NumPy computation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import nn
from tests.nn.nn_references import conv2d, pool

WRAPS = pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
# conv and pooling values under jit only: docs/nn.md runs the same lax ops eagerly
JIT = pytest.mark.parametrize("wrap", [jax.jit], ids=["jit"])


def _rand(seed, shape, scale=1.0):
    # NumPy draws: fresh inputs without compiling a jax sampler per shape
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _run(layer, in_shape, x, wrap, seed=0):
    out_shape, params = layer.init(jax.random.key(seed), in_shape)
    y = wrap(lambda p, x: layer.apply(p, x))(params, x)
    assert y.shape == tuple(out_shape)
    return params, y


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@WRAPS
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("in_shape", [(5, 4), (2, 3, 4)])
def test_dense(wrap, use_bias, in_shape):
    layer = nn.Dense(3, b_init=nn.init.normal(1.0), use_bias=use_bias)
    x = _rand(1, in_shape)
    params, y = _run(layer, in_shape, x, wrap)
    p = _np(params)
    assert sorted(p) == (["b", "w"] if use_bias else ["w"])
    ref = np.einsum("...i,io->...o", np.asarray(x, np.float64), p["w"]) + p.get("b", 0.0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


CONV_CASES = {
    # name: (in_shape, kwargs)
    "same_3x3": ((2, 7, 6, 3), dict(out_channels=4, kernel_size=3)),
    "valid_stride2": ((2, 9, 8, 3), dict(out_channels=5, kernel_size=(3, 2), strides=2,
                                          padding="VALID")),
    "same_stride2_even": ((1, 8, 8, 2), dict(out_channels=3, kernel_size=4, strides=2)),
    "explicit_pads": ((2, 6, 6, 2), dict(out_channels=3, kernel_size=3,
                                         padding=((2, 0), (1, 3)))),
    "int_pad_dilated": ((2, 9, 9, 2), dict(out_channels=2, kernel_size=3, padding=1,
                                           dilation=2)),
    "same_dilated_strided": ((1, 10, 9, 3), dict(out_channels=3, kernel_size=3, strides=(2, 3),
                                                 dilation=(2, 1))),
    "groups": ((2, 6, 6, 4), dict(out_channels=6, kernel_size=3, groups=2)),
    "depthwise": ((2, 5, 5, 3), dict(out_channels=3, kernel_size=3, groups=3)),
    "no_bias_1x1": ((2, 4, 4, 3), dict(out_channels=2, kernel_size=1, use_bias=False)),
}


@JIT
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d(wrap, case):
    in_shape, kw = CONV_CASES[case]
    layer = nn.Conv2D(**kw, b_init=nn.init.normal(1.0))
    x = _rand(1, in_shape)
    params, y = _run(layer, in_shape, x, wrap)
    p = _np(params)
    g = kw.get("groups", 1)
    k = kw["kernel_size"]
    k = (k, k) if isinstance(k, int) else k
    assert p["w"].shape == (*k, in_shape[-1] // g, kw["out_channels"])
    s, d = kw.get("strides", 1), kw.get("dilation", 1)
    ref = conv2d(x, p["w"], p.get("b"), (s, s) if isinstance(s, int) else s,
                 kw.get("padding", "SAME"), (d, d) if isinstance(d, int) else d, g)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


POOL_CASES = {
    "2x2": ((2, 6, 6, 3), dict(window=2)),
    "3x3_s2_same": ((2, 7, 7, 2), dict(window=3, strides=2, padding="SAME")),
    "2x3_s1_valid": ((1, 5, 6, 2), dict(window=(2, 3), strides=1)),
    "explicit": ((1, 5, 5, 1), dict(window=3, strides=2, padding=((1, 1), (0, 2)))),
}


@JIT
@pytest.mark.parametrize("case", list(POOL_CASES))
@pytest.mark.parametrize("kind", ["max", "avg", "avg_include_pad"])
def test_pooling(wrap, case, kind):
    in_shape, kw = POOL_CASES[case]
    if kind == "max":
        layer = nn.MaxPool2D(**kw)
    else:
        layer = nn.AvgPool2D(**kw, count_include_pad=kind == "avg_include_pad")
    x = _rand(1, in_shape)
    params, y = _run(layer, in_shape, x, wrap)
    assert params == {}
    w = kw["window"]
    w = (w, w) if isinstance(w, int) else w
    s = kw.get("strides") or w
    s = (s, s) if isinstance(s, int) else s
    ref = pool(x, kind[:3], w, s, kw.get("padding", "VALID"), kind == "avg_include_pad")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_maxpool_with_ties_and_negative_inputs():
    x = -jnp.ones((1, 4, 4, 1))  # all ties, all negative: padding must not leak a 0
    y = nn.MaxPool2D(3, strides=2, padding="SAME").apply({}, x)
    np.testing.assert_array_equal(y, -np.ones((1, 2, 2, 1)))


@WRAPS
def test_global_avg_pool_and_flatten(wrap):
    x = _rand(1, (2, 3, 4, 5))
    _, y = _run(nn.GlobalAvgPool(), x.shape, x, wrap)
    np.testing.assert_allclose(y, np.asarray(x).mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
    _, y = _run(nn.Flatten(), x.shape, x, wrap)
    np.testing.assert_array_equal(y, np.asarray(x).reshape(2, 60))


@WRAPS
def test_layernorm(wrap):
    layer = nn.LayerNorm(epsilon=1e-3, scale_init=nn.init.normal(1.0),
                         bias_init=nn.init.normal(1.0))
    x = _rand(1, (3, 2, 6), scale=3.0) + 1.0
    params, y = _run(layer, x.shape, x, wrap)
    p, xn = _np(params), np.asarray(x, np.float64)
    mu = xn.mean(-1, keepdims=True)
    ref = (xn - mu) / np.sqrt(xn.var(-1, keepdims=True) + 1e-3) * p["scale"] + p["bias"]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


@WRAPS
@pytest.mark.parametrize("in_shape", [(8, 3), (4, 3, 3, 2)])
def test_batchnorm_train_eval_and_running_stats(wrap, in_shape):
    momentum, eps = 0.8, 1e-3
    bn = nn.BatchNorm(momentum, eps, scale_init=nn.init.normal(1.0),
                      bias_init=nn.init.normal(1.0))
    _, params = bn.init(jax.random.key(0), in_shape)
    state = {"mean": _rand(2, in_shape[-1:]), "var": 1.0 + jnp.abs(_rand(3, in_shape[-1:]))}
    x = _rand(1, in_shape, scale=2.0) + 0.5
    y, new = wrap(lambda p, x, s: bn.apply(p, x, train=True, state=s))(params, x, state)
    p, s, xn = _np(params), _np(state), np.asarray(x, np.float64)
    axes = tuple(range(xn.ndim - 1))
    mu, var = xn.mean(axes), xn.var(axes)
    np.testing.assert_allclose(y, (xn - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new["mean"], momentum * s["mean"] + (1 - momentum) * mu,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], momentum * s["var"] + (1 - momentum) * var,
                               rtol=1e-5, atol=1e-6)
    # train without state: same y, nothing returned besides it
    np.testing.assert_allclose(bn.apply(params, x, train=True), y, rtol=1e-6, atol=1e-6)
    # eval: running statistics, state returned unchanged
    y_eval, same = wrap(lambda p, x, s: bn.apply(p, x, state=s))(params, x, new)
    n = _np(new)
    np.testing.assert_allclose(
        y_eval, (xn - n["mean"]) / np.sqrt(n["var"] + eps) * p["scale"] + p["bias"],
        rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(same["mean"], new["mean"])


def test_batchnorm_init_state():
    state = nn.BatchNorm().init_state((1, 5, 5, 4))
    np.testing.assert_array_equal(state["mean"], np.zeros(4))
    np.testing.assert_array_equal(state["var"], np.ones(4))


@WRAPS
def test_embedding(wrap):
    layer = nn.Embedding(7, 3)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 7, (4, 5)), jnp.int32)
    params, y = _run(layer, ids.shape, ids, wrap)
    np.testing.assert_array_equal(y, np.asarray(params["table"])[np.asarray(ids)])


@WRAPS
@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_dropout(wrap, rate):
    layer = nn.Dropout(rate)
    x = 1.0 + jnp.abs(_rand(1, (64, 64)))
    f = wrap(lambda x, key: layer.apply({}, x, key=key, train=True))
    y = np.asarray(f(x, jax.random.key(2)))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    n, keep = kept.size, 1 - rate
    assert abs(kept.mean() - keep) < 5 * math.sqrt(keep * rate / n)
    np.testing.assert_array_equal(f(x, jax.random.key(2)), y)           # same key, same mask
    assert (np.asarray(f(x, jax.random.key(3))) != y).any()             # other key, other mask
    np.testing.assert_array_equal(layer.apply({}, x, train=False), x)   # eval: identity
    np.testing.assert_array_equal(layer.apply({}, x, key=jax.random.key(2)), x)


def _erf(x):
    return np.vectorize(math.erf)(x)


def _sig(x):
    return 1 / (1 + np.exp(-x))


ACTIVATIONS = {
    # name: (function, layer, float64 reference)
    "sigmoid": (nn.sigmoid, nn.Sigmoid(), _sig),
    "tanh": (nn.tanh, nn.Tanh(), np.tanh),
    "relu": (nn.relu, nn.Relu(), lambda x: np.maximum(x, 0)),
    "leaky_relu": (lambda x: nn.leaky_relu(x, 0.2), nn.LeakyRelu(0.2),
                   lambda x: np.where(x >= 0, x, 0.2 * x)),
    "elu": (lambda x: nn.elu(x, 1.5), nn.Elu(1.5),
            lambda x: np.where(x > 0, x, 1.5 * (np.exp(x) - 1))),
    "gelu_tanh": (nn.gelu, nn.Gelu(), lambda x: 0.5 * x * (
        1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    "gelu_erf": (lambda x: nn.gelu(x, approximate=False), nn.Gelu(approximate=False),
                 lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    "silu": (nn.silu, nn.Silu(), lambda x: x * _sig(x)),
    "softplus": (nn.softplus, nn.Softplus(), lambda x: np.log1p(np.exp(x))),
    "softmax": (nn.softmax, nn.Softmax(), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
    "softmax_axis0": (lambda x: nn.softmax(x, axis=0), nn.Softmax(axis=0),
                      lambda x: np.exp(x) / np.exp(x).sum(0, keepdims=True)),
    "log_softmax": (nn.log_softmax, nn.LogSoftmax(),
                    lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
}


@WRAPS
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(wrap, name):
    fn, layer, ref = ACTIVATIONS[name]
    x = _rand(1, (4, 5), scale=3.0)
    expected = ref(np.asarray(x, np.float64))
    np.testing.assert_allclose(wrap(fn)(x), expected, rtol=2e-5, atol=1e-6)
    out_shape, params = layer.init(jax.random.key(0), x.shape)
    assert params == {} and not layer.has_params and tuple(out_shape) == x.shape
    np.testing.assert_allclose(wrap(lambda x: layer.apply({}, x))(x), expected,
                               rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softplus", "sigmoid"])
def test_activation_large_inputs_are_finite(name):
    fn = ACTIVATIONS[name][0]
    x = jnp.array([[1e4, 0.0, -1e4]])
    assert jnp.isfinite(fn(x)).all()
