"""Handwritten digits: an MLP and a CNN on the embedded 8x8 digits, trained with funcbp.

Writes the training curves, the CNN's test confusion matrix and its misclassified test images.
The CNN trains with random shifts of up to one pixel (``funcbp.data.random_shift``).

    python -m experiments.digits [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from funcbp import data as fdata
from funcbp import nn, optim

STUDY = "digits"


def run_model(name, model, splits, *, epochs, batch_size, lr, augment, seed, run):
    _, params = model.init(jax.random.key(seed), (1, 8, 8, 1))
    params, hist = common.train(model.apply, params, splits, optim.adam(lr),
                                key=jax.random.key(seed + 100), batch_size=batch_size,
                                epochs=epochs, augment=augment)
    run.log(f"{name}: test accuracy {hist['final']['test_acc']:.4f}")
    return params, hist


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    splits = common.digits_splits(seed=0)
    epochs = 6 if quick else 50
    mlp = common.deep_mlp([32] if quick else [256, 128], "relu", nn.init.he_normal())
    cnn = common.digits_cnn((8, 16), 32) if quick else common.digits_cnn((32, 64), 128)
    shift = lambda key, x: fdata.random_shift(key, x, 1)

    results = {"splits": {k: int(v.shape[0]) for k, v in
                          zip(("train", "val", "test"), splits[::2], strict=True)},
               "epochs": epochs, "optimizer": "adam(1e-3)", "batch_size": 32}
    curves = {}
    for name, model, aug in (("mlp", mlp, None), ("cnn", cnn, shift)):
        params, hist = run_model(name, model, splits, epochs=epochs, batch_size=32, lr=1e-3,
                                 augment=aug, seed=0, run=run)
        curves[name] = hist["epochs"]
        best = max(hist["epochs"], key=lambda r: r["val_acc"])
        results[name] = {**common.final_metrics(hist), "curve": hist["epochs"],
                         "best_val_epoch": best["epoch"], "test_acc_at_best_val": best["test_acc"]}
        if name == "cnn":
            logits = common.predict(model.apply, params, splits.x_test)
    y = np.asarray(splits.y_test)
    pred = logits.argmax(axis=1)
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (y, pred), 1)
    wrong = np.flatnonzero(pred != y)
    results["cnn"]["confusion"] = confusion
    results["cnn"]["misclassified"] = [{"index": int(i), "label": int(y[i]), "pred": int(pred[i])}
                                       for i in wrong]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, recs in curves.items():
        ep = [r["epoch"] for r in recs]
        axes[0].plot(ep, [r["train_loss"] for r in recs], label=f"{name} train")
        axes[0].plot(ep, [r["val_loss"] for r in recs], "--", label=f"{name} val")
        axes[1].plot(ep, [r["val_acc"] for r in recs], label=f"{name} val")
        axes[1].plot(ep, [r["test_acc"] for r in recs], ":", label=f"{name} test")
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy", ylim=(0.8, 1.0), title="accuracy")
    for ax in axes:
        ax.legend(fontsize=7)
    run.save_figure(fig, "curves")

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(confusion, cmap="Blues")
    for i in range(10):
        for j in range(10):
            if confusion[i, j]:
                ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=7,
                        color="white" if confusion[i, j] > confusion.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10),
           title=f"CNN test confusion ({len(wrong)} errors / {len(y)})")
    run.save_figure(fig, "confusion")

    shown = wrong[:16]
    images = np.asarray(fdata.load_digits().images)  # unnormalised pixels for display
    _, (_, _), (x_test_raw, _) = fdata.split(jax.random.key(0), images, fdata.load_digits().labels,
                                             (0.7, 0.1, 0.2), stratify=True)
    cols = max(len(shown), 1)
    fig, axes = plt.subplots(1, cols, figsize=(1.1 * cols, 1.4), squeeze=False)
    for ax, i in zip(axes[0], shown, strict=False):
        ax.imshow(x_test_raw[i, :, :, 0], cmap="gray_r")
        ax.set_title(f"{y[i]}->{pred[i]}", fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    run.save_figure(fig, "misclassified")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
