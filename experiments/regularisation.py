"""Regularisation: L1 and L2 penalties on an over-parameterised MLP trained on few digits.

A wide two-hidden-layer MLP (hundreds of thousands of weights) is trained on a small
stratified subset of the training split, without a penalty and with L2 (``l2 * 0.5 * |w|^2``)
or L1 (``l1 * |w|``) on the weights, through ``make_train_step``'s ``l1`` / ``l2``; the
gradient of the penalised objective is funcbp's. Reported: the train/validation gap, the
weight histograms and the fraction of (near-)zero weights.

    python -m experiments.regularisation [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from funcbp import nn, optim

STUDY = "regularisation"


def weight_stats(params) -> dict:
    names = common.layer_order(list(params))
    w = np.concatenate([np.asarray(params[k]["w"]).ravel() for k in names])
    first = np.asarray(params["dense_0"]["w"]).ravel()
    return {"count": int(w.size), "mean_abs": float(np.mean(np.abs(w))),
            "exact_zero": float(np.mean(w == 0)),
            "below_1e-3": float(np.mean(np.abs(w) < 1e-3)),
            "below_1e-2": float(np.mean(np.abs(w) < 1e-2)),
            "first_layer": first}


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    train_size = 100 if quick else 200
    hidden = [256, 256] if quick else [512, 512]
    epochs = 40 if quick else 200
    lr, mu, batch = 0.01, 0.9, 20
    splits = common.digits_splits(seed=0, train_size=train_size)
    configs = {"none": {}, "L2 1e-2": {"l2": 1e-2}, "L1 1e-3": {"l1": 1e-3}}
    if not quick:
        configs = {"none": {}, "L2 1e-3": {"l2": 1e-3}, "L2 1e-2": {"l2": 1e-2},
                   "L2 1e-1": {"l2": 1e-1}, "L1 1e-4": {"l1": 1e-4}, "L1 1e-3": {"l1": 1e-3},
                   "L1 1e-2": {"l1": 1e-2}}
    model = common.deep_mlp(hidden, "relu", nn.init.he_normal())
    results: dict = {"train_size": train_size, "hidden": hidden, "epochs": epochs,
                     "optimizer": f"sgd(lr={lr}, momentum={mu})", "batch_size": batch,
                     "runs": {}}
    weights = {}
    for name, pen in configs.items():
        _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
        params, hist = common.train(model.apply, params, splits, optim.sgd(lr, mu),
                                    key=jax.random.key(1), batch_size=batch, epochs=epochs,
                                    eval_every=max(1, epochs // 20), **pen)
        train_loss, train_acc = common.evaluate(model.apply, params, splits.x_train,
                                                splits.y_train)
        stats = weight_stats(params)
        weights[name] = stats.pop("first_layer")
        fm = common.final_metrics(hist)
        results["runs"][name] = {
            **pen, **fm, "train_loss_eval": train_loss, "train_acc_eval": train_acc,
            "gap_acc": train_acc - fm["val_acc"], "gap_loss": fm["val_loss"] - train_loss,
            "weights": stats, "curve": hist["epochs"]}
        run.log(f"{name}: train acc {train_acc:.3f}, val acc {fm['val_acc']:.3f}, val loss "
                f"{fm['val_loss']:.3f}, |w|<1e-3: {stats['below_1e-3']:.3f}, "
                f"exact zeros {stats['exact_zero']:.4f}")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for name, r in results["runs"].items():
        c = r["curve"]
        line, = axes[0].plot([x["epoch"] for x in c], [x["val_loss"] for x in c], label=name)
        axes[1].plot([x["epoch"] for x in c], [x["val_acc"] for x in c], color=line.get_color(),
                     label=name)
    axes[0].set(xlabel="epoch", ylabel="validation cross-entropy", title="validation loss")
    axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    for ax in axes:
        ax.legend(fontsize=7)
    run.save_figure(fig, "curves")

    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    bins = np.linspace(-0.6, 0.6, 121)
    for name, w in weights.items():
        ax.hist(w, bins=bins, histtype="step", label=name, log=True)
    ax.set(xlabel="first-layer weight", ylabel="count", title="weight histograms after training")
    ax.legend(fontsize=7)
    run.save_figure(fig, "weights")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
