"""Vanishing gradients: 5-, 10- and 20-layer MLPs with sigmoid, tanh and ReLU on the digits.

Sigmoid and tanh networks start from Glorot-normal weights (the setting of Glorot & Bengio,
2010), ReLU networks from He-normal weights (He et al., 2015). For each we record the
gradient norm of every layer's weight matrix (computed with ``funcbp.value_and_grad``) at
initialisation and during training, next to every hidden layer's activation statistics
(``funcbp.diagnostics.activation_stats``: the fraction of saturated sigmoid/tanh inputs,
``|z| > 4``, and of zero ReLU outputs), and how far each network trains with the same SGD.

    python -m experiments.vanishing [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from funcbp import nn, optim
from funcbp.diagnostics import activation_stats

STUDY = "vanishing"
ACTIVATIONS = ("sigmoid", "tanh", "relu")


def init_for(activation: str):
    return nn.init.he_normal() if activation == "relu" else nn.init.glorot_normal()


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    depths = (5, 10) if quick else (5, 10, 20)
    width = 32 if quick else 64
    epochs = 2 if quick else 40
    lr, mu, batch = 0.01, 0.9, 32
    splits = common.digits_splits(seed=0)
    probe_x, probe_y = splits.x_train[:256], splits.y_train[:256]
    results = {"depths": depths, "width": width, "epochs": epochs,
               "optimizer": f"sgd(lr={lr}, momentum={mu})", "batch_size": batch,
               "init": {"sigmoid": "glorot_normal", "tanh": "glorot_normal", "relu": "he_normal"},
               "runs": {}}
    for depth in depths:
        for act in ACTIVATIONS:
            name = f"{act}_{depth}"
            # depth counts weight layers: depth - 1 hidden layers and the classifier.
            model = common.deep_mlp([width] * (depth - 1), act, init_for(act))
            _, params = model.init(jax.random.key(depth), (1, 8, 8, 1))
            norms_fn = common.grad_norms_fn(model.apply)
            stats_fn = jax.jit(lambda p, x, model=model: activation_stats(model.apply, p, x))
            order = common.layer_order(list(params))

            def probe(epoch, p, norms_fn=norms_fn, stats_fn=stats_fn, order=order,
                      key="zero" if act == "relu" else "saturated"):
                norms = norms_fn(p, probe_x, probe_y)
                stats = stats_fn(p, probe_x).to_dict()  # hidden layers, input side first
                return {"grad_norms": [float(norms[k]) for k in order],
                        "activation": key, key: [s[key] for s in stats.values()],
                        "pre_std": [s["std"] for s in stats.values()]}

            _, hist = common.train(model.apply, params, splits, optim.sgd(lr, mu),
                                   key=jax.random.key(1), batch_size=batch, epochs=epochs,
                                   probe=probe, eval_every=max(1, epochs // 8))
            probes = hist["probes"]
            init_norms = probes[0]["grad_norms"]
            stat = probes[0]["activation"]
            results["runs"][name] = {
                "activation": act, "depth": depth,
                "grad_norms_init": init_norms,
                "first_over_last_init": init_norms[0] / init_norms[-1],
                f"{stat}_init": probes[0][stat],
                f"{stat}_final": probes[-1][stat],
                "pre_std_init": probes[0]["pre_std"],
                "grad_norms_during": probes,
                **common.final_metrics(hist),
                "curve": hist["epochs"],
            }
            run.log(f"{name}: first-layer |g| {init_norms[0]:.2e}, last {init_norms[-1]:.2e}, "
                    f"test acc {results['runs'][name]['test_acc']:.3f}")

    fig, axes = plt.subplots(1, len(depths), figsize=(3.4 * len(depths), 3.2), squeeze=False)
    for ax, depth in zip(axes[0], depths, strict=True):
        for act in ACTIVATIONS:
            g = results["runs"][f"{act}_{depth}"]["grad_norms_init"]
            ax.semilogy(range(1, len(g) + 1), g, "o-", ms=3, label=act)
        ax.set(title=f"{depth} layers, at initialisation", xlabel="layer (1 = input side)",
               ylabel="||dL/dW||")
        ax.legend(fontsize=7)
    run.save_figure(fig, "grad_norms_init")

    deepest = depths[-1]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, act in zip(axes, ACTIVATIONS, strict=True):
        probes = results["runs"][f"{act}_{deepest}"]["grad_norms_during"]
        colors = plt.cm.viridis(np.linspace(0, 1, len(probes)))
        for p, c in zip(probes, colors, strict=True):
            ax.semilogy(range(1, len(p["grad_norms"]) + 1), p["grad_norms"], color=c,
                        label=f"epoch {p['epoch']}")
        ax.set(title=f"{act}, {deepest} layers, during training", xlabel="layer",
               ylabel="||dL/dW||")
        ax.legend(fontsize=6)
    run.save_figure(fig, "grad_norms_training")

    # Saturation (sigmoid/tanh inputs beyond +-4) and dead ReLU outputs per layer, at
    # initialisation and at the end, next to the gradient norms.
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, act in zip(axes, ACTIVATIONS, strict=True):
        r = results["runs"][f"{act}_{deepest}"]
        stat = "zero" if act == "relu" else "saturated"
        for when, style in (("init", "o-"), ("final", "s--")):
            ax.plot(range(1, len(r[f"{stat}_{when}"]) + 1), r[f"{stat}_{when}"], style, ms=3,
                    label=f"{stat}, {'initialisation' if when == 'init' else 'end'}")
        ax.set(title=f"{act}, {deepest} layers", xlabel="hidden layer",
               ylabel="fraction of units", ylim=(-0.02, 1.02))
        ax.legend(fontsize=6)
    run.save_figure(fig, "activation_stats")

    fig, axes = plt.subplots(1, len(depths), figsize=(3.4 * len(depths), 3.2), squeeze=False)
    for ax, depth in zip(axes[0], depths, strict=True):
        for act in ACTIVATIONS:
            curve = results["runs"][f"{act}_{depth}"]["curve"]
            ax.plot([r["epoch"] for r in curve], [r.get("val_acc", np.nan) for r in curve],
                    "o-", ms=3, label=act)
        ax.set(title=f"{depth} layers", xlabel="epoch", ylabel="validation accuracy",
               ylim=(0, 1))
        ax.legend(fontsize=7)
    run.save_figure(fig, "accuracy")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
