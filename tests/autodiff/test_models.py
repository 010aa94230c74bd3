"""Whole models, written by hand in jax.numpy/lax/optax, differentiated by funcbp vs jax."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from jax import lax

import funcbp

ACTIVATIONS = {
    "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu, "relu6": jax.nn.relu6,
    "leaky_relu": jax.nn.leaky_relu, "elu": jax.nn.elu, "selu": jax.nn.selu,
    "celu": jax.nn.celu, "gelu": jax.nn.gelu, "gelu_exact": lambda x: jax.nn.gelu(x, False),
    "silu": jax.nn.silu, "softplus": jax.nn.softplus, "soft_sign": jax.nn.soft_sign,
    "log_sigmoid": jax.nn.log_sigmoid, "hard_tanh": jax.nn.hard_tanh, "mish": jax.nn.mish,
    "squareplus": jax.nn.squareplus, "glu": lambda x: jax.nn.glu(jnp.concatenate([x, x], -1)),
}


def _mlp_params(key, sizes):
    params = {}
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        k1, k2, key = jax.random.split(key, 3)
        params[f"dense_{i}"] = {"w": jax.random.normal(k1, (m, n)) / jnp.sqrt(m),
                                "b": 0.1 * jax.random.normal(k2, (n,))}
    return params


def _mlp(params, x, act):
    n = len(params)
    for i in range(n):
        x = x @ params[f"dense_{i}"]["w"] + params[f"dense_{i}"]["b"]
        if i < n - 1:
            x = act(x)
    return x


def _xent(logits, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _assert_grads_match(loss, *args, rtol=1e-5, atol=1e-6, wrap=jax.jit):
    ours = wrap(funcbp.value_and_grad(loss))(*args)
    ref = wrap(jax.value_and_grad(loss))(*args)
    chex.assert_trees_all_close(ours, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("act", list(ACTIVATIONS), ids=list(ACTIVATIONS))
def test_mlp_with_every_activation(act):
    key = jax.random.key(hash(act) % 2**31)
    k1, k2, k3 = jax.random.split(key, 3)
    params = _mlp_params(k1, (6, 8, 8, 3))
    x, y = jax.random.normal(k2, (5, 6)), jax.random.randint(k3, (5,), 0, 3)
    _assert_grads_match(lambda p: _xent(_mlp(p, x, ACTIVATIONS[act]), y), params)


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_deep_sigmoid_mlp(wrap):
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    params = _mlp_params(k1, (8,) + (16,) * 9 + (4,))
    x, y = jax.random.normal(k2, (7, 8)), jax.random.randint(k3, (7,), 0, 4)
    _assert_grads_match(lambda p: _xent(_mlp(p, x, jax.nn.sigmoid), y), params, wrap=wrap)


CONV_CONFIGS = {
    "same_stride1": dict(window_strides=(1, 1), padding="SAME"),
    "valid_stride2": dict(window_strides=(2, 2), padding="VALID"),
    "asym_pad_dilated": dict(window_strides=(1, 2), padding=((1, 0), (2, 1)), rhs_dilation=(2, 1)),
    "groups": dict(window_strides=(1, 1), padding="SAME", feature_group_count=2),
}


@pytest.mark.parametrize("cfg", list(CONV_CONFIGS), ids=list(CONV_CONFIGS))
def test_cnn_with_pooling(cfg):
    conf = CONV_CONFIGS[cfg]
    groups = conf.get("feature_group_count", 1)
    k = jax.random.split(jax.random.key(11), 5)
    params = {"conv": jax.random.normal(k[0], (3, 3, 4 // groups, 6)) * 0.3,
              "conv_b": jax.random.normal(k[1], (6,)) * 0.1,
              "dense": None}
    x = jax.random.normal(k[2], (2, 9, 10, 4))
    y = jax.random.randint(k[3], (2,), 0, 5)

    def features(p, x):
        h = lax.conv_general_dilated(x, p["conv"], dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     **conf)
        h = jax.nn.relu(h + p["conv_b"])
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
        h = lax.reduce_window(h, 0.0, lax.add, (1, 2, 2, 1), (1, 1, 1, 1), "VALID") / 4.0
        return h.reshape(h.shape[0], -1)

    n_feat = features(params, x).shape[1]
    params["dense"] = jax.random.normal(k[4], (n_feat, 5)) / jnp.sqrt(n_feat)
    loss = lambda p: _xent(features(p, x) @ p["dense"], y)
    _assert_grads_match(loss, params, rtol=2e-5, atol=2e-6)


def _layer_norm(x, scale, bias, eps=1e-5):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.var(x, -1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * scale + bias


def test_transformer_block_with_attention_and_layer_norm():
    d, heads, t = 8, 2, 5
    k = jax.random.split(jax.random.key(5), 8)
    p = {"qkv": jax.random.normal(k[0], (d, 3 * d)) / jnp.sqrt(d),
         "out": jax.random.normal(k[1], (d, d)) / jnp.sqrt(d),
         "ln1": {"scale": 1 + 0.1 * jax.random.normal(k[2], (d,)), "bias": jnp.zeros(d)},
         "ln2": {"scale": jnp.ones(d), "bias": 0.1 * jax.random.normal(k[3], (d,))},
         "mlp": {"w1": jax.random.normal(k[4], (d, 4 * d)) / jnp.sqrt(d),
                 "w2": jax.random.normal(k[5], (4 * d, d)) / jnp.sqrt(4 * d)}}
    x = jax.random.normal(k[6], (3, t, d))
    mask = jnp.tril(jnp.ones((t, t), bool))

    def block(p, x):
        h = _layer_norm(x, **p["ln1"])
        q, kk, v = jnp.split(h @ p["qkv"], 3, axis=-1)
        split = lambda a: a.reshape(a.shape[0], t, heads, d // heads).transpose(0, 2, 1, 3)
        q, kk, v = split(q), split(kk), split(v)
        s = jnp.einsum("bhqd,bhkd->bhqk", q, kk) / jnp.sqrt(d // heads)
        s = jnp.where(mask, s, -1e9)
        a = jax.nn.softmax(s, axis=-1)
        o = jnp.einsum("bhqk,bhkd->bhqd", a, v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = x + o @ p["out"]
        h = _layer_norm(x, **p["ln2"])
        return x + jax.nn.gelu(h @ p["mlp"]["w1"]) @ p["mlp"]["w2"]

    loss = lambda p, x: jnp.mean(block(p, x) ** 2)
    _assert_grads_match(loss, p, x, rtol=5e-5, atol=5e-6)


LOSSES = {
    "softmax_xent": lambda z, y, p: optax.softmax_cross_entropy(z, jax.nn.one_hot(y, 4)).mean(),
    "softmax_xent_int":
        lambda z, y, p: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
    "smoothed": lambda z, y, p: optax.softmax_cross_entropy(
        z, optax.smooth_labels(jax.nn.one_hot(y, 4), 0.1)).mean(),
    "sigmoid_bce": lambda z, y, p: optax.sigmoid_binary_cross_entropy(z, p).mean(),
    "bce_from_probs": lambda z, y, p: -jnp.mean(
        p * jnp.log(jax.nn.sigmoid(z)) + (1 - p) * jnp.log1p(-jax.nn.sigmoid(z))),
    "mse": lambda z, y, p: optax.l2_loss(z, p).mean(),
    "huber": lambda z, y, p: optax.huber_loss(z, p).mean(),
    "hinge": lambda z, y, p: optax.hinge_loss(z, 2.0 * (p > 0.5) - 1.0).mean(),
    "l2_penalty": lambda z, y, p: 0.5 * jnp.sum(z ** 2),
    "l1_penalty": lambda z, y, p: jnp.sum(jnp.abs(z)),
    "kl": lambda z, y, p: optax.kl_divergence(jax.nn.log_softmax(z), jax.nn.softmax(2 * p)).mean(),
}


@pytest.mark.parametrize("name", list(LOSSES), ids=list(LOSSES))
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["normal", "large_logits"])
def test_losses(name, scale):
    k = jax.random.split(jax.random.key(hash(name) % 2**31), 3)
    z = scale * jax.random.normal(k[0], (6, 4))
    y = jax.random.randint(k[1], (6,), 0, 4)
    p = jax.random.uniform(k[2], (6, 4))
    loss = lambda z: LOSSES[name](z, y, p)
    if name == "bce_from_probs" and scale > 1:
        pytest.skip("probabilities saturate at logits of 1e4 (that is why the logits form exists)")
    ours = jax.jit(funcbp.value_and_grad(loss))(z)
    ref = jax.jit(jax.value_and_grad(loss))(z)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(ours))
    chex.assert_trees_all_close(ours, ref, rtol=2e-5, atol=1e-6)


def test_finite_differences_float64_mlp():
    import jax.test_util

    with jax.enable_x64(True):
        k1, k2 = jax.random.split(jax.random.key(8))
        params = _mlp_params(k1, (4, 6, 3))
        x = jax.random.normal(k2, (5, 4), jnp.float64)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        f = lambda p: jnp.sum(jax.nn.log_softmax(_mlp(p, x, jnp.tanh)) ** 2)
        jax.test_util.check_vjp(f, lambda p: funcbp.vjp(f, p), (params,), atol=1e-7, rtol=1e-7,
                                eps=1e-6)
