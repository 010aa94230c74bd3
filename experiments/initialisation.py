"""Initialisation: normal(0.01), Xavier/Glorot and He on deep ReLU and tanh MLPs (digits).

For each (activation, initialiser) pair: the standard deviation of every layer's output and
the norm of every layer's weight gradient (``funcbp.value_and_grad``) at initialisation, on
a batch of training images, and the accuracy after training with the same SGD.

    python -m experiments.initialisation [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

from experiments import common
from funcbp import nn, optim

STUDY = "initialisation"
INITS = {
    "normal(0.01)": lambda: nn.init.normal(0.01),
    "glorot_normal": lambda: nn.init.glorot_normal(),
    "he_normal": lambda: nn.init.he_normal(),
}


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    depth, width = (6, 32) if quick else (10, 128)
    epochs = 2 if quick else 30
    lr, mu, batch = 0.01, 0.9, 32
    splits = common.digits_splits(seed=0)
    probe_x, probe_y = splits.x_train[:512], splits.y_train[:512]
    results = {"depth": depth, "width": width, "epochs": epochs, "batch_size": batch,
               "optimizer": f"sgd(lr={lr}, momentum={mu})", "runs": {}}
    for act in ("relu", "tanh"):
        for init_name, make_init in INITS.items():
            name = f"{act}/{init_name}"
            model = common.deep_mlp([width] * (depth - 1), act, make_init())
            _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
            outs = jax.jit(lambda p, x, m=model: m.apply(p, x, return_activations=True))(
                params, probe_x)
            act_std = [float(jnp.std(h)) for h in outs]
            norms = common.grad_norms_fn(model.apply)(params, probe_x, probe_y)
            grad_norms = [float(norms[k]) for k in common.layer_order(list(norms))]
            _, hist = common.train(model.apply, params, splits, optim.sgd(lr, mu),
                                   key=jax.random.key(1), batch_size=batch, epochs=epochs,
                                   eval_every=max(1, epochs // 10))
            results["runs"][name] = {"activation": act, "init": init_name,
                                     "activation_std": act_std, "grad_norms_init": grad_norms,
                                     **common.final_metrics(hist), "curve": hist["epochs"]}
            run.log(f"{name}: last hidden std {act_std[-2]:.2e}, first-layer |g| "
                    f"{grad_norms[0]:.2e}, test acc {results['runs'][name]['test_acc']:.3f}")

    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for col, act in enumerate(("relu", "tanh")):
        for init_name in INITS:
            r = results["runs"][f"{act}/{init_name}"]
            layers = range(1, len(r["activation_std"]) + 1)
            axes[0, col].semilogy(layers, r["activation_std"], "o-", ms=3, label=init_name)
            axes[1, col].semilogy(layers, r["grad_norms_init"], "o-", ms=3, label=init_name)
        axes[0, col].set(title=f"{act}: output std per layer (init)", xlabel="layer",
                         ylabel="std")
        axes[1, col].set(title=f"{act}: ||dL/dW|| per layer (init)", xlabel="layer",
                         ylabel="gradient norm")
        for ax in axes[:, col]:
            ax.legend(fontsize=7)
    run.save_figure(fig, "statistics")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, act in zip(axes, ("relu", "tanh"), strict=True):
        for init_name in INITS:
            curve = results["runs"][f"{act}/{init_name}"]["curve"]
            ax.plot([c["epoch"] for c in curve], [c["val_acc"] for c in curve], "o-", ms=3,
                    label=init_name)
        ax.set(title=f"{depth}-layer {act} MLP", xlabel="epoch", ylabel="validation accuracy",
               ylim=(0, 1))
        ax.legend(fontsize=7)
    run.save_figure(fig, "accuracy")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
