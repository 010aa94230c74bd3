"""Max pooling's VJP and a small CNN training step: funcbp against jax.grad, same process.

jax transposes max pooling into ``select_and_scatter_add``, which XLA's CPU backend runs slowly;
funcbp's rule emits strided slices, comparisons, selects and pads that XLA fuses into one pass.
In the CNN step, funcbp also sums the kernel's cotangent of each convolution over slices of the
batch, which XLA's CPU backend runs 2-3x faster than one convolution over the whole batch.
Prints one table (speed-up > 1: funcbp faster); the two run in turns, in the same process.

Run with ``python -m benchmarks.maxpool_vjp [--runs 30]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

import funcbp

NHWC = ("NHWC", "HWIO", "NHWC")


def max_pool(x, window=2, stride=2, padding="VALID"):
    """NHWC max pooling, as ``funcbp.nn`` and flax write it (``lax.reduce_window``)."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                             (1, stride, stride, 1), padding)


def cnn_loss(params, images, labels):
    """conv3x3(32)-relu-maxpool2-conv3x3(64)-relu-maxpool2-dense(10), softmax cross entropy."""
    h = images
    for name in ("conv_0", "conv_1"):
        h = lax.conv_general_dilated(h, params[name]["w"], (1, 1), "SAME",
                                     dimension_numbers=NHWC) + params[name]["b"]
        h = max_pool(jax.nn.relu(h))
    logits = h.reshape(h.shape[0], -1) @ params["dense"]["w"] + params["dense"]["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def init_cnn(key):
    k0, k1, k2 = jax.random.split(key, 3)
    return {
        "conv_0": {"w": jax.random.normal(k0, (3, 3, 1, 32)) / 3.0, "b": jnp.zeros(32)},
        "conv_1": {"w": jax.random.normal(k1, (3, 3, 32, 64)) / 17.0, "b": jnp.zeros(64)},
        "dense": {"w": jax.random.normal(k2, (7 * 7 * 64, 10)) / 56.0, "b": jnp.zeros(10)},
    }


def median_ms(fns, args, runs):
    """Median wall time in ms of each ``fn(*args)``, after two warm-up calls.

    The functions take turns run by run, so that a change in machine load hits all of them.
    """
    for fn in fns:
        for _ in range(2):
            jax.block_until_ready(fn(*args))
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, t in zip(fns, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            t.append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def pool_vjp(vjp):
    def pull(x, ct):
        return vjp(max_pool, x)[1](ct)[0]
    return jax.jit(pull)


def main(runs: int = 30) -> list[tuple]:
    rows = []
    key = jax.random.key(0)
    for shape in [(128, 28, 28, 32), (128, 14, 14, 64)]:
        kx, kc, key = jax.random.split(key, 3)
        # half the inputs are relu zeros, as after a relu: many ties inside windows
        x = jax.nn.relu(jax.random.normal(kx, shape))
        ct = jax.random.normal(kc, max_pool(x).shape)
        ours, ref = pool_vjp(funcbp.vjp), pool_vjp(jax.vjp)
        diff = max_abs_diff(ours(x, ct), ref(x, ct))
        name = "maxpool2 vjp {}x{}x{}".format(*shape[1:])
        rows.append((name, *median_ms([ours, ref], (x, ct), runs), diff))

    kp, ki, kl = jax.random.split(key, 3)
    params = init_cnn(kp)
    images = jax.random.uniform(ki, (128, 28, 28, 1))
    labels = jax.random.randint(kl, (128,), 0, 10)
    ours = jax.jit(funcbp.value_and_grad(cnn_loss))
    ref = jax.jit(jax.value_and_grad(cnn_loss))
    diff = max_abs_diff(ours(params, images, labels), ref(params, images, labels))
    rows.append(("cnn value_and_grad step (batch 128)",
                 *median_ms([ours, ref], (params, images, labels), runs), diff))

    print(f"backend: {jax.default_backend()}, {runs} runs, median")
    header = ("benchmark", "speed-up", "funcbp ms", "jax ms", "max |diff|")
    print("{:38s} {:>9s} {:>10s} {:>9s} {:>11s}".format(*header))
    for name, t_ours, t_ref, d in rows:
        print(f"{name:38s} {t_ref / t_ours:8.2f}x {t_ours:10.2f} {t_ref:9.2f} {d:11.2e}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per benchmark (>= 20)")
    main(parser.parse_args().runs)
