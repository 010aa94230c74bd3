"""Exploding gradients and clipping: a too-large initialisation and a tanh RNN on long sequences.

Part 1: a deep ReLU MLP whose weights are drawn with ``variance_scaling(scale)``, ``scale``
well above He's 2, so activations and gradients grow by ``sqrt(scale / 2)`` per layer;
trained with plain SGD, with ``clip_by_global_norm`` and with element-wise ``clip``.

Part 2: a simple tanh RNN (``h_t = tanh(x_t W_xh + h_{t-1} W_hh + b)``, written with
``lax.scan``, differentiated by funcbp's scan rule) reading each digit one pixel at a time
(64 steps), with a recurrent matrix of spectral norm above 1, with and without clipping.

    python -m experiments.exploding [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax import lax

from experiments import common
from funcbp import nn, optim

STUDY = "exploding"


def tanh_rnn(hidden: int, w_hh_gain: float, num_classes: int = 10) -> nn.Layer:
    """A tanh RNN over ``(N, T)`` sequences of scalars; the last state feeds a classifier.

    ``W_hh`` is ``w_hh_gain`` times a random orthogonal matrix (all singular values equal to
    the gain); ``W_xh`` and the classifier are Glorot-normal.
    """

    def init(key, in_shape):
        k1, k2, k3 = jax.random.split(key, 3)
        params = {
            "rnn": {"w_xh": nn.init.glorot_normal()(k1, (1, hidden)),
                    "w_hh": nn.init.orthogonal(w_hh_gain)(k2, (hidden, hidden)),
                    "b": jnp.zeros(hidden)},
        }
        _, params["dense_0"] = nn.Dense(num_classes).init(k3, (1, hidden))
        return (in_shape[0], num_classes), params

    def apply(params, x, *, key=None, train=False):
        p = params["rnn"]
        seq = x.reshape(x.shape[0], -1).T[:, :, None]  # (T, N, 1): one pixel per step

        def cell(h, x_t):
            h = jnp.tanh(x_t @ p["w_xh"] + h @ p["w_hh"] + p["b"])
            return h, None

        h, _ = lax.scan(cell, jnp.zeros((x.shape[0], hidden), x.dtype), seq)
        return h @ params["dense_0"]["w"] + params["dense_0"]["b"]

    return nn.Layer(init, apply, name="rnn")


def clipped(base, how: str | None, threshold: float):
    if how is None:
        return base
    clip = optim.clip_by_global_norm(threshold) if how == "global_norm" else optim.clip(threshold)
    return optim.chain(clip, base)


def run_variants(run, name, model, splits, variants, *, lr, epochs, batch, seed):
    out = {}
    for label, how, thr in variants:
        _, params = model.init(jax.random.key(seed), (1, 8, 8, 1))
        tx = clipped(optim.sgd(lr), how, thr)
        _, hist = common.train(model.apply, params, splits, tx, key=jax.random.key(seed + 1),
                               batch_size=batch, epochs=epochs, record_steps=True,
                               eval_every=max(1, epochs // 5))
        steps = hist["steps"]
        out[label] = {
            "clip": how, "threshold": thr, **common.final_metrics(hist),
            "diverged_at_step": hist.get("diverged_at_step"),
            "loss": [s["loss"] for s in steps],
            "grad_norm": [s["grad_norm"] for s in steps],
            "max_grad_norm": float(np.nanmax([s["grad_norm"] for s in steps] or [np.nan])),
            "first_loss": steps[0]["loss"] if steps else float("nan"),
            "curve": hist["epochs"],
        }
        run.log(f"{name}/{label}: diverged={hist['diverged']} "
                f"max |g|={out[label]['max_grad_norm']:.3g} test acc "
                f"{out[label]['test_acc']:.3f}")
    return out


def plot_traces(run, name, results, title):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, r in results.items():
        steps = np.arange(1, len(r["loss"]) + 1)
        axes[0].semilogy(steps, np.clip(np.nan_to_num(r["loss"], nan=np.inf), 1e-3, 1e12),
                         label=label, lw=0.8)
        axes[1].semilogy(steps, np.clip(np.nan_to_num(r["grad_norm"], nan=np.inf), 1e-6, 1e30),
                         label=label, lw=0.8)
    axes[0].set(xlabel="step", ylabel="training loss (batch)", title=f"{title}: loss")
    axes[1].set(xlabel="step", ylabel="global gradient norm (before clipping)",
                title=f"{title}: gradient norm")
    for ax in axes:
        ax.legend(fontsize=7)
    run.save_figure(fig, name)


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    splits = common.digits_splits(seed=0)
    results: dict = {}

    depth, width, scale = (8, 32, 8.0) if quick else (12, 64, 8.0)
    mlp = common.deep_mlp([width] * (depth - 1), "relu",
                          nn.init.variance_scaling(scale, "fan_in", "normal"))
    lr = 0.01
    variants = [("no clipping", None, 0.0), ("clip_by_global_norm(1)", "global_norm", 1.0),
                ("clip(0.01) element-wise", "elementwise", 0.01)]
    results["mlp"] = {
        "depth": depth, "width": width, "init": f"variance_scaling({scale}, fan_in, normal)",
        "gain_per_layer": float(np.sqrt(scale / 2)), "optimizer": f"sgd({lr})",
        "runs": run_variants(run, "mlp", mlp, splits, variants, lr=lr,
                             epochs=3 if quick else 30, batch=32, seed=0)}
    plot_traces(run, "mlp_traces", results["mlp"]["runs"],
                f"{depth}-layer ReLU MLP, weights x{np.sqrt(scale / 2):.1f}")

    hidden, gain = (16, 1.5) if quick else (64, 1.5)
    rnn = tanh_rnn(hidden, gain)
    rnn_lr = 0.05
    rnn_variants = [("no clipping", None, 0.0), ("clip_by_global_norm(1)", "global_norm", 1.0)]
    if not quick:
        rnn_variants.append(("clip(0.01) element-wise", "elementwise", 0.01))
    results["rnn"] = {
        "hidden": hidden, "sequence_length": 64, "w_hh_gain": gain,
        "optimizer": f"sgd({rnn_lr})", "implementation": "lax.scan (funcbp scan rule)",
        "runs": run_variants(run, "rnn", rnn, splits, rnn_variants, lr=rnn_lr,
                             epochs=1 if quick else 8, batch=32, seed=0)}
    plot_traces(run, "rnn_traces", results["rnn"]["runs"],
                f"tanh RNN, 64 steps, ||W_hh||={gain}")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
