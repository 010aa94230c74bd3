"""Gradients of every layer through funcbp.grad against jax.grad, float32 and float64."""

from __future__ import annotations

import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcbp
from funcbp import nn

IMG = (2, 6, 6, 3)

# name: (layer, in_shape, apply kwargs, input kind)
CASES = {
    "dense": (nn.Dense(4, b_init=nn.init.normal(1.0)), (3, 5), {}, "normal"),
    "dense_no_bias_3d": (nn.Dense(4, use_bias=False), (2, 3, 5), {}, "normal"),
    "conv_same": (nn.Conv2D(4, 3), IMG, {}, "normal"),
    "conv_valid_stride": (nn.Conv2D(4, (3, 2), strides=2, padding="VALID"), IMG, {}, "normal"),
    "conv_dilated_pad": (nn.Conv2D(2, 3, padding=((2, 1), (0, 1)), dilation=2), IMG, {},
                         "normal"),
    "conv_groups": (nn.Conv2D(6, 3, groups=3, strides=(1, 2)), IMG, {}, "normal"),
    "maxpool": (nn.MaxPool2D(2), IMG, {}, "normal"),
    "maxpool_same_overlap": (nn.MaxPool2D(3, strides=2, padding="SAME"), IMG, {}, "normal"),
    "maxpool_ties": (nn.MaxPool2D(2, strides=1), IMG, {}, "ties"),
    "avgpool": (nn.AvgPool2D(2), IMG, {}, "normal"),
    "avgpool_same": (nn.AvgPool2D(3, strides=2, padding="SAME"), IMG, {}, "normal"),
    "global_avg_pool": (nn.GlobalAvgPool(), IMG, {}, "normal"),
    "flatten": (nn.Flatten(), IMG, {}, "normal"),
    "dropout_train": (nn.Dropout(0.3), (4, 8), {"key": "key", "train": True}, "normal"),
    "dropout_eval": (nn.Dropout(0.3), (4, 8), {}, "normal"),
    "layernorm": (nn.LayerNorm(scale_init=nn.init.normal(1.0)), (3, 6), {}, "normal"),
    "batchnorm_train": (nn.BatchNorm(), IMG, {"train": True}, "normal"),
    "batchnorm_train_state": (nn.BatchNorm(), (5, 4), {"train": True, "state": "init"},
                              "normal"),
    "batchnorm_eval": (nn.BatchNorm(), (5, 4), {"state": "random"}, "normal"),
    "embedding": (nn.Embedding(6, 3), (4, 5), {}, "ids"),
    # max-pool of a value XLA may recompute inside fusions (batch statistics, rsqrt)
    "batchnorm_then_maxpool": (nn.serial(nn.BatchNorm(), nn.MaxPool2D(2)), IMG, {"train": True},
                               "normal"),
    **{f"act_{n}": (layer, (4, 5), {}, "normal") for n, layer in {
        "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "relu": nn.Relu(),
        "leaky_relu": nn.LeakyRelu(0.1), "elu": nn.Elu(), "gelu": nn.Gelu(),
        "gelu_erf": nn.Gelu(approximate=False), "silu": nn.Silu(), "softplus": nn.Softplus(),
        "softmax": nn.Softmax(), "log_softmax": nn.LogSoftmax()}.items()},
    "act_relu_at_zero": (nn.Relu(), (4, 5), {}, "ties"),
    "serial_cnn": (nn.serial(nn.Conv2D(4, 3), nn.BatchNorm(), nn.relu, nn.MaxPool2D(2),
                             nn.Flatten(), nn.Dropout(0.2), nn.Dense(3), nn.log_softmax),
                   IMG, {"key": "key", "train": True}, "normal"),
    "residual": (nn.serial(nn.FanOut(2), nn.parallel(nn.serial(nn.Dense(5), nn.tanh),
                                                     nn.Identity()),
                           nn.FanInSum(), nn.LayerNorm()), (3, 5), {}, "normal"),
    "embedding_mlp": (nn.serial(nn.Embedding(7, 4), nn.Flatten(), nn.Dense(3), nn.gelu),
                      (2, 3), {}, "ids"),
}

DTYPES = {"float32": (jnp.float32, dict(rtol=1e-5, atol=1e-6)),
          "float64": (jnp.float64, dict(rtol=1e-10, atol=1e-12))}


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                        else a, tree)


def _input(kind, shape, dtype, rng):
    if kind == "ids":
        return jnp.asarray(rng.integers(0, 6, shape), jnp.int32)
    if kind == "ties":   # many exact ties and exact zeros
        return jnp.asarray(rng.integers(-2, 3, shape), dtype)
    return jnp.asarray(rng.standard_normal(shape), dtype)


# Every case runs under jit in float32 and float64; eager runs (one compile per primitive,
# slow) cover one case of each kind of primitive.
VARIANTS = {"float32-eager": ("float32", lambda f: f), "float32-jit": ("float32", jax.jit),
            "float64-jit": ("float64", jax.jit)}
EAGER = {"dense", "conv_groups", "maxpool_ties", "avgpool_same", "global_avg_pool",
         "dropout_train", "layernorm", "batchnorm_train_state", "embedding", "act_relu_at_zero",
         "act_gelu", "act_log_softmax"}


@pytest.mark.parametrize("name, variant", [(n, v) for n in CASES for v in VARIANTS
                                           if n in EAGER or not v.endswith("eager")])
def test_layer_grad_matches_jax(name, variant):
    layer, in_shape, kwargs, kind = CASES[name]
    dtype, wrap = VARIANTS[variant]
    dt, tol = DTYPES[dtype]
    with jax.enable_x64(dtype == "float64"):
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        out_shape, params = layer.init(jax.random.key(0), in_shape)
        params = _cast(params, dt)
        kwargs = dict(kwargs)
        if kwargs.get("key") == "key":
            kwargs["key"] = jax.random.key(5)
        if kwargs.get("state") == "init":
            kwargs["state"] = _cast(layer.init_state(in_shape), dt)
        elif kwargs.get("state") == "random":
            c = in_shape[-1]
            kwargs["state"] = {"mean": jnp.asarray(rng.standard_normal(c), dt),
                               "var": jnp.asarray(1 + rng.random(c), dt)}
        x = _input(kind, in_shape, dt, rng)
        ct = jnp.asarray(rng.standard_normal(out_shape), dt)

        def f(p, x):
            y = layer.apply(p, x, **kwargs)
            if "state" in kwargs:
                y, new_state = y
                y = y + sum(jnp.sum(s) for s in jax.tree.leaves(new_state))
            return jnp.sum(y * ct)

        argnums = 0 if kind == "ids" else (0, 1)
        ours = wrap(funcbp.grad(f, argnums))(params, x)
        ref = wrap(jax.grad(f, argnums))(params, x)
        chex.assert_trees_all_close(ours, ref, **tol)
        assert jax.tree.leaves(ref), "nothing differentiated"
