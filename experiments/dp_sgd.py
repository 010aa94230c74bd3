"""DP-SGD-style per-example clipping with noise on digits: three routes to the same update.

Each step clips every example's gradient to norm ``C`` and adds Gaussian noise
(Abadi et al. 2016): ``update = (sum_i g_i min(1, C / |g_i|) + N(0, sigma^2 C^2 I)) / B``.
The routes differ only in how they get there:

- ``batch_grad``: ``funcbp.quantities(which="batch_grad")`` materialises the per-example
  gradients (one pass), which are scaled and summed;
- ``batch_l2``: ``funcbp.quantities(which="batch_l2")`` gives ``|g_i|^2`` without materialising
  them (dense layers: ``|a_i|^2 |d_i|^2``), then one more backward pass of the reweighted loss
  ``sum_i c_i l_i`` (``c_i`` the clip factors, held constant) gives the clipped sum ("ghost
  clipping");
- ``vmap``: ``jax.vmap(jax.grad)`` per example, then clipping (the usual JAX way).

Same initialisation, batches and noise for all three: their trajectories agree up to float
rounding, so what differs is the step time. Non-private SGD is the accuracy reference.

    python -m experiments.dp_sgd [--quick]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import funcbp
from experiments import common
from funcbp import nn

STUDY = "dp_sgd"
ROUTES = ("batch_grad", "batch_l2", "vmap", "non-private")


def _ce(f, y):
    return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(f), y[:, None], 1))


def clipped_sum(route: str, apply, params, x, y, clip: float):
    """``sum_i g_i min(1, C/|g_i|)`` (sum-reduced per-example gradients) and the norms."""
    if route == "batch_grad":
        g = funcbp.quantities(apply, params, x, y, loss="softmax_cross_entropy",
                              which="batch_grad", reduction="sum")["batch_grad"]
        norms = jnp.sqrt(sum(jnp.sum(v.reshape(v.shape[0], -1) ** 2, 1)
                             for v in jax.tree.leaves(g)))
        c = jnp.minimum(1.0, clip / (norms + 1e-12))
        return jax.tree.map(lambda v: jnp.tensordot(c, v, 1), g), norms
    if route == "batch_l2":
        l2 = funcbp.quantities(apply, params, x, y, loss="softmax_cross_entropy",
                               which="batch_l2", reduction="sum")["batch_l2"]
        norms = jnp.sqrt(sum(jax.tree.leaves(l2)))
        c = jax.lax.stop_gradient(jnp.minimum(1.0, clip / (norms + 1e-12)))
        return funcbp.grad(lambda p: jnp.sum(c * jax.vmap(_ce)(
            apply(p, x)[:, None], y[:, None])))(params), norms
    if route == "vmap":
        g = jax.vmap(jax.grad(lambda p, xi, yi: _ce(apply(p, xi[None]), yi[None])),
                     in_axes=(None, 0, 0))(params, x, y)
        norms = jnp.sqrt(sum(jnp.sum(v.reshape(v.shape[0], -1) ** 2, 1)
                             for v in jax.tree.leaves(g)))
        c = jnp.minimum(1.0, clip / (norms + 1e-12))
        return jax.tree.map(lambda v: jnp.tensordot(c, v, 1), g), norms
    return funcbp.grad(lambda p: _ce(apply(p, x), y))(params), jnp.zeros(x.shape[0])


def make_step(route: str, apply, tx, clip: float, sigma: float):
    @jax.jit
    def step(params, opt_state, x, y, key):
        total, norms = clipped_sum(route, apply, params, x, y, clip)
        if route != "non-private":
            leaves, tree = jax.tree.flatten(total)
            keys = jax.random.split(key, len(leaves))
            total = jax.tree.unflatten(tree, [
                v + sigma * clip * jax.random.normal(k, v.shape, v.dtype)
                for v, k in zip(leaves, keys, strict=True)])
        grads = jax.tree.map(lambda v: v / x.shape[0], total)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.median(norms)
    return step


def train(route: str, splits, hidden, epochs: int, batch: int, clip: float, sigma: float,
          lr: float) -> dict:
    model = common.deep_mlp(hidden, "relu", nn.init.he_normal())

    def apply(p, x):
        return model.apply(p, x)

    _, params = model.init(jax.random.key(0), (1, *splits.x_train.shape[1:]))
    tx = optax.sgd(lr, momentum=0.9)
    opt_state = tx.init(params)
    step = make_step(route, apply, tx, clip, sigma)
    n = int(splits.x_train.shape[0])
    times, accs, med_norms = [], [], []
    key = jax.random.key(1)
    for epoch in range(epochs):
        key, k_perm = jax.random.split(key)
        order = np.asarray(jax.random.permutation(k_perm, n))
        for s in range(n // batch):
            idx = order[s * batch:(s + 1) * batch]
            key, k_noise = jax.random.split(key)
            t = time.perf_counter()
            params, opt_state, med = step(params, opt_state, splits.x_train[idx],
                                          splits.y_train[idx], k_noise)
            jax.block_until_ready(params)
            if epoch or s:  # the first step holds the compilation
                times.append(time.perf_counter() - t)
            med_norms.append(float(med))
        accs.append(common.evaluate(model.apply, params, splits.x_test, splits.y_test)[1])
    return ({"test_acc": accs[-1], "test_acc_by_epoch": accs,
             "ms_per_step_in_training": 1e3 * statistics.median(times) if times else float("nan"),
             "median_example_norm": med_norms},
            (step, params, opt_state))


def alternated(steps: dict, splits, batch: int, reps: int) -> dict:
    """Median milliseconds per step of each route, interleaved rep by rep."""
    x, y = splits.x_train[:batch], splits.y_train[:batch]
    key = jax.random.key(2)
    samples: dict = {route: [] for route in steps}
    for _ in range(reps + 2):
        for route, (step, params, opt_state) in steps.items():
            t = time.perf_counter()
            jax.block_until_ready(step(params, opt_state, x, y, key))
            samples[route].append(time.perf_counter() - t)
    return {route: 1e3 * statistics.median(s[2:]) for route, s in samples.items()}


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    splits = common.digits_splits(seed=0)
    cfg = {"hidden": [32] if quick else [128, 64], "epochs": 1 if quick else 20, "batch": 64,
           "clip": 1.0, "sigma": 1.0, "lr": 0.05}
    results: dict = {"config": cfg, "runs": {}}
    steps = {}
    for route in ROUTES:
        rec, steps[route] = train(route, splits, cfg["hidden"], cfg["epochs"], cfg["batch"],
                                  cfg["clip"], cfg["sigma"], cfg["lr"])
        results["runs"][route] = rec
        run.log(f"{route}: test acc {rec['test_acc']:.3f}")
    # Step times measured afterwards, the routes interleaved rep by rep (so that the shared
    # machine's load hits them alike), on one batch from the final parameters.
    times = alternated(steps, splits, cfg["batch"], reps=10 if quick else 60)
    for route, ms in times.items():
        results["runs"][route]["ms_per_step"] = ms
        run.log(f"{route}: {ms:.2f} ms/step (interleaved median)")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for route, rec in results["runs"].items():
        ax1.plot(range(1, cfg["epochs"] + 1), rec["test_acc_by_epoch"], "o-", label=route,
                 alpha=0.8)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy")
    ax1.set_title(f"DP-SGD on digits (C={cfg['clip']}, sigma={cfg['sigma']})")
    ax1.legend(fontsize=7)
    names = list(results["runs"])
    ax2.bar(names, [results["runs"][r]["ms_per_step"] for r in names],
            color=["C0", "C1", "C2", "C7"])
    ax2.set_ylabel("ms per step (median)")
    ax2.set_title("step time by route")
    run.save_figure(fig, "dp_sgd")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
