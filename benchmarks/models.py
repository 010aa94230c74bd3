"""Benchmark models, written by hand over plain parameter dicts (no funcbp.nn dependency)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _dense(key, m, n):
    return {"w": jax.random.normal(key, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros(n)}


def xent(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def mlp(sizes, act=jax.nn.relu):
    """An MLP over ``sizes``; returns (init(key) -> params, loss(params, x, y))."""
    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return {f"dense_{i}": _dense(k, m, n)
                for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}

    def apply(params, x):
        n = len(params)
        for i in range(n):
            x = x @ params[f"dense_{i}"]["w"] + params[f"dense_{i}"]["b"]
            if i < n - 1:
                x = act(x)
        return x

    def loss(params, x, y):
        return xent(apply(params, x), y)
    return init, loss


def _maxpool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def cnn():
    """conv3x3(32)-relu-maxpool2-conv3x3(64)-relu-maxpool2-dense(10) on 28x28x1, NHWC."""
    def init(key):
        k = jax.random.split(key, 3)
        return {
            "conv_0": {"w": jax.random.normal(k[0], (3, 3, 1, 32)) * jnp.sqrt(2 / 9),
                       "b": jnp.zeros(32)},
            "conv_1": {"w": jax.random.normal(k[1], (3, 3, 32, 64)) * jnp.sqrt(2 / 288),
                       "b": jnp.zeros(64)},
            "dense_0": _dense(k[2], 7 * 7 * 64, 10),
        }

    def apply(params, x):
        for name in ("conv_0", "conv_1"):
            x = lax.conv_general_dilated(x, params[name]["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = _maxpool(jax.nn.relu(x + params[name]["b"]))
        x = x.reshape(x.shape[0], -1)
        return x @ params["dense_0"]["w"] + params["dense_0"]["b"]

    def loss(params, x, y):
        return xent(apply(params, x), y)
    return init, loss


def gru(steps: int = 64, in_dim: int = 64, hidden: int = 128, classes: int = 10):
    """A GRU (PyTorch's gate order r, z, n) over ``steps`` by ``lax.scan``, then dense(classes).

    Input ``(batch, steps, in_dim)``; the input projection of all steps is one matmul outside
    the scan, the recurrent matmul runs per step.
    """
    def init(key):
        k = jax.random.split(key, 3)
        s = 1.0 / jnp.sqrt(hidden)
        return {"gru": {"w_i": jax.random.uniform(k[0], (in_dim, 3 * hidden), minval=-s, maxval=s),
                        "w_h": jax.random.uniform(k[1], (hidden, 3 * hidden), minval=-s, maxval=s),
                        "b_i": jnp.zeros(3 * hidden), "b_h": jnp.zeros(3 * hidden)},
                "dense_0": _dense(k[2], hidden, classes)}

    def apply(params, x):
        p = params["gru"]
        xs = jnp.swapaxes(x @ p["w_i"] + p["b_i"], 0, 1)        # (steps, batch, 3 * hidden)

        def cell(h, xt):
            xr, xz, xn = jnp.split(xt, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ p["w_h"] + p["b_h"], 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            return (1 - z) * n + z * h, None

        h, _ = lax.scan(cell, jnp.zeros((x.shape[0], hidden), x.dtype), xs)
        return h @ params["dense_0"]["w"] + params["dense_0"]["b"]

    def loss(params, x, y):
        return xent(apply(params, x), y)
    return init, loss


def layer_norm(x, p, eps=1e-5):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def transformer(d: int = 128, heads: int = 4, ff: int = 512, classes: int = 10):
    """One pre-LayerNorm transformer block (softmax attention + tanh-GELU MLP), mean-pooled
    over the sequence, then dense(classes). Input ``(batch, seq, d)``."""
    def init(key):
        k = jax.random.split(key, 5)
        ln = lambda: {"scale": jnp.ones(d), "bias": jnp.zeros(d)}
        return {"ln_0": ln(), "qkv": _dense(k[0], d, 3 * d), "proj": _dense(k[1], d, d),
                "ln_1": ln(), "mlp_0": _dense(k[2], d, ff), "mlp_1": _dense(k[3], ff, d),
                "head": _dense(k[4], d, classes)}

    def apply(params, x):
        b, t, _ = x.shape
        dense = lambda name, h: h @ params[name]["w"] + params[name]["b"]
        q, k, v = jnp.split(dense("qkv", layer_norm(x, params["ln_0"])), 3, axis=-1)
        q, k, v = (a.reshape(b, t, heads, d // heads) for a in (q, k, v))
        scores = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(d // heads).astype(x.dtype)
        att = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)
        x = x + dense("proj", att.reshape(b, t, d))
        h = jax.nn.gelu(dense("mlp_0", layer_norm(x, params["ln_1"])), approximate=True)
        x = x + dense("mlp_1", h)
        return dense("head", jnp.mean(x, axis=1))

    def loss(params, x, y):
        return xent(apply(params, x), y)
    return init, loss


CASES = {
    "mlp_784_512_512_10_b128": (lambda: mlp((784, 512, 512, 10)), (128, 784)),
    "mlp_784_512_512_10_b1024": (lambda: mlp((784, 512, 512, 10)), (1024, 784)),
    "cnn_28x28_b128": (cnn, (128, 28, 28, 1)),
    "sigmoid_mlp_10_layers_b128": (lambda: mlp((784,) + (256,) * 9 + (10,), jax.nn.sigmoid),
                                   (128, 784)),
    "gru_64_steps_b128": (gru, (128, 64, 64)),
}


def batch(shape, seed=1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, shape), jax.random.randint(k2, (shape[0],), 0, 10)
