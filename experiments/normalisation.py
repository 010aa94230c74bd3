"""Input normalisation: raw pixel counts (0..16) vs [0, 1] vs standardised inputs (digits).

The same MLP, initialisation and SGD + momentum, over a small learning-rate sweep; the
standardisation statistics (per-pixel mean and standard deviation) come from the training
split only.

    python -m experiments.normalisation [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from funcbp import nn, optim

STUDY = "normalisation"
VARIANTS = {"raw": "raw 0..16", "unit": "[0, 1]", "standardize": "standardised"}


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    lrs = (0.01,) if quick else (0.001, 0.01, 0.1)
    epochs = 3 if quick else 30
    hidden = [32] if quick else [128, 64]
    mu, batch = 0.9, 32
    model = common.deep_mlp(hidden, "relu", nn.init.he_normal())
    results: dict = {"epochs": epochs, "hidden": hidden, "learning_rates": lrs,
                     "optimizer": f"sgd(lr, momentum={mu})", "batch_size": batch, "runs": {}}
    for variant in VARIANTS:
        splits = common.digits_splits(seed=0, normalize=variant)
        results["runs"][variant] = {"input_mean": float(splits.x_train.mean()),
                                    "input_std": float(splits.x_train.std())}
        for lr in lrs:
            _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
            _, hist = common.train(model.apply, params, splits, optim.sgd(lr, mu),
                                   key=jax.random.key(1), batch_size=batch, epochs=epochs)
            results["runs"][variant][str(lr)] = {**common.final_metrics(hist),
                                                 "curve": hist["epochs"]}
            run.log(f"{variant}, lr {lr}: test acc "
                    f"{results['runs'][variant][str(lr)]['test_acc']:.3f}")
        results["runs"][variant]["best_val"] = max(
            (results["runs"][variant][str(lr)] for lr in lrs),
            key=lambda r: np.nan_to_num(r["val_acc"], nan=-1.0))["val_acc"]

    fig, axes = plt.subplots(1, len(lrs), figsize=(3.6 * len(lrs), 3.3), squeeze=False)
    for ax, lr in zip(axes[0], lrs, strict=True):
        for variant, label in VARIANTS.items():
            c = results["runs"][variant][str(lr)]["curve"]
            ax.semilogy([x["epoch"] for x in c],
                        np.clip(np.nan_to_num([x["train_loss"] for x in c], nan=1e3), 1e-4, 1e3),
                        "o-", ms=2, label=label)
        ax.set(title=f"lr {lr}", xlabel="epoch", ylabel="mean training loss")
        ax.legend(fontsize=7)
    run.save_figure(fig, "loss_curves")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
