"""Optimisers: full-batch gradient descent, mini-batch SGD, momentum, Nesterov and Adam.

All runs train the same MLP from the same initial weights for the same number of epochs (the
same number of gradient evaluations per example). Then two sweeps with SGD + momentum: the
learning rate (too small converges slowly, too large overshoots) and the momentum
coefficient.

    python -m experiments.optimisers [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from funcbp import nn, optim

STUDY = "optimisers"


def run_one(run, name, splits, tx, *, batch, epochs, hidden):
    model = common.deep_mlp(hidden, "relu", nn.init.he_normal())
    _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
    _, hist = common.train(model.apply, params, splits, tx, key=jax.random.key(1),
                           batch_size=batch, epochs=epochs, record_steps=True,
                           eval_every=max(1, epochs // 10))
    steps = hist["steps"]
    per_epoch = hist["steps_per_epoch"]
    # Mean training loss per epoch, for curves that share an x axis whatever the batch size.
    loss = np.asarray([s["loss"] for s in steps], dtype=float)
    epoch_loss = [float(np.mean(loss[i:i + per_epoch])) for i in range(0, len(loss), per_epoch)]
    out = {**common.final_metrics(hist), "steps": len(steps), "batch_size": hist["batch_size"],
           "epoch_train_loss": epoch_loss, "curve": hist["epochs"]}
    run.log(f"{name}: {len(steps)} steps, final train loss {epoch_loss[-1]:.4f}, "
            f"test acc {out['test_acc']:.3f}, diverged={out['diverged']}")
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    epochs = 3 if quick else 30
    hidden = [32] if quick else [128, 64]
    splits = common.digits_splits(seed=0)
    full = int(splits.x_train.shape[0])
    # lr / (1 - momentum) = 0.1 for every SGD variant: the same effective step size.
    comparison = {
        "full-batch GD": (optim.sgd(0.1), full),
        "mini-batch SGD": (optim.sgd(0.1), 32),
        "momentum 0.9": (optim.sgd(0.01, 0.9), 32),
        "Nesterov 0.9": (optim.sgd(0.01, 0.9, nesterov=True), 32),
        "Adam": (optim.adam(1e-3), 32),
    }
    results: dict = {"epochs": epochs, "hidden": hidden,
                     "learning_rates": {"full-batch GD": 0.1, "mini-batch SGD": 0.1,
                                        "momentum 0.9": 0.01, "Nesterov 0.9": 0.01,
                                        "Adam": 1e-3},
                     "comparison": {}, "lr_sweep": {}, "momentum_sweep": {}}
    for name, (tx, batch) in comparison.items():
        results["comparison"][name] = run_one(run, name, splits, tx, batch=batch, epochs=epochs,
                                              hidden=hidden)
    lrs = (0.001, 0.3) if quick else (0.001, 0.01, 0.1, 0.3, 1.0)
    for lr in lrs:
        results["lr_sweep"][str(lr)] = run_one(run, f"momentum 0.9, lr {lr}", splits,
                                               optim.sgd(lr, 0.9), batch=32, epochs=epochs,
                                               hidden=hidden)
    mus = () if quick else (0.0, 0.5, 0.9, 0.99)
    for mu in mus:
        tx = optim.sgd(0.01, mu) if mu else optim.sgd(0.01)
        results["momentum_sweep"][str(mu)] = run_one(run, f"lr 0.01, momentum {mu}", splits, tx,
                                                     batch=32, epochs=epochs, hidden=hidden)

    panels = [("comparison", "same epochs, same effective step"),
              ("lr_sweep", "SGD momentum 0.9: learning rate")]
    if mus:
        panels.append(("momentum_sweep", "SGD lr 0.01: momentum"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for name, r in results[key].items():
            label = name if key == "comparison" else f"{key.split('_')[0]} {name}"
            y = np.clip(np.nan_to_num(r["epoch_train_loss"], nan=1e3), 1e-4, 1e3)
            ax.semilogy(range(1, len(y) + 1), y, label=label)
        ax.set(title=title, xlabel="epoch", ylabel="mean training loss")
        ax.legend(fontsize=7)
    run.save_figure(fig, "loss_curves")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
