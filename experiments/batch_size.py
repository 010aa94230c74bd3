"""Mini-batch size: accuracy and wall-clock against batch size, at equal epochs and equal steps.

One MLP, one initialisation, SGD with momentum 0.9 and a fixed learning rate for every batch
size (no linear scaling), trained (a) for the same number of epochs and (b) for the same
number of steps. Wall-clock is the time spent in training steps, after the first epoch (which
holds the compilation).

    python -m experiments.batch_size [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from funcbp import nn, optim

STUDY = "batch_size"


def steady_seconds(hist: dict) -> float:
    """Training time with the first epoch (compilation) replaced by the median epoch time."""
    sec = hist["epoch_seconds"]
    if len(sec) == 1:
        return float(sec[0])
    return float(np.median(sec[1:]) + np.sum(sec[1:]))


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    splits = common.digits_splits(seed=0)
    n = int(splits.x_train.shape[0])
    sizes = (8, 64, n) if quick else (4, 16, 64, 256, n)
    epochs = 2 if quick else 30
    steps = 60 if quick else 600
    hidden = [32] if quick else [128, 64]
    lr, mu = 0.01, 0.9
    results: dict = {"train_examples": n, "sizes": sizes, "epochs": epochs, "steps": steps,
                     "optimizer": f"sgd(lr={lr}, momentum={mu})", "hidden": hidden,
                     "equal_epochs": {}, "equal_steps": {}}
    model = common.deep_mlp(hidden, "relu", nn.init.he_normal())
    for mode in ("equal_epochs", "equal_steps"):
        for b in sizes:
            _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
            budget = {"epochs": epochs} if mode == "equal_epochs" else {"steps": steps}
            _, hist = common.train(model.apply, params, splits, optim.sgd(lr, mu),
                                   key=jax.random.key(1), batch_size=b, **budget,
                                   eval_every=10_000)
            rec = {**common.final_metrics(hist), "steps": hist["final"]["step"],
                   "epochs_run": hist["final"]["epoch"],
                   "seconds_steady": steady_seconds(hist),
                   "seconds_per_step": steady_seconds(hist) / max(hist["final"]["step"], 1)}
            results[mode][str(b)] = rec
            run.log(f"{mode} b={b}: {rec['steps']} steps, test acc {rec['test_acc']:.3f}, "
                    f"{rec['seconds_steady']:.2f} s")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for mode, marker in (("equal_epochs", "o-"), ("equal_steps", "s--")):
        r = results[mode]
        label = f"{epochs} epochs" if mode == "equal_epochs" else f"{steps} steps"
        axes[0].semilogx(sizes, [r[str(b)]["test_acc"] for b in sizes], marker, label=label)
        axes[1].loglog(sizes, [r[str(b)]["seconds_steady"] for b in sizes], marker, label=label)
    axes[0].set(xlabel="batch size", ylabel="test accuracy", title="accuracy")
    axes[1].set(xlabel="batch size", ylabel="training seconds", title="wall-clock")
    for ax in axes:
        ax.legend(fontsize=7)
    run.save_figure(fig, "accuracy_time")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
