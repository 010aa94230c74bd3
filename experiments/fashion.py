"""Fashion-MNIST: an MLP (256-128-100) and a two-conv CNN against the published baselines.

Data: the IDX files under /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist),
or anywhere ``funcbp.data.load_mnist(kind="fashion_mnist")`` looks; the study is skipped with a
message when they are absent. 5,000 training images are held out for validation; inputs are
standardised with the training split's mean and standard deviation.

    python -m experiments.fashion [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments import common
from funcbp import data as fdata
from funcbp import nn, optim
from funcbp.train import get_model

STUDY = "fashion"
ROOTS = ("/usr/share/datasets/fashion-mnist", None)
# The accuracies quoted in funcbp's issue 8 from the Fashion-MNIST benchmark table.
BASELINES = {"mlp": ("MLP 256-128-100", 0.883), "cnn": ("2 conv + pooling", 0.916)}


def load(quick: bool):
    last = None
    for root in ROOTS:
        try:
            return fdata.load_mnist(root, kind="fashion_mnist")
        except fdata.DataError as err:  # DataNotFoundError and friends
            last = err
    raise fdata.DataNotFoundError(str(last))


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    try:
        train_set, test_set = load(quick)
    except fdata.DataError as err:
        run.log(f"skipped: Fashion-MNIST not found ({err}). Install Debian's "
                "dataset-fashion-mnist or put the four IDX files in "
                "/usr/share/datasets/fashion-mnist.")
        results = {"skipped": True, "reason": str(err)}
        run.write(results)
        return results
    x, y = train_set
    x_test, y_test = test_set
    n_train = 3000 if quick else len(x) - 5000
    n_test = 1000 if quick else len(x_test)
    (xtr, ytr), (xva, yva), _ = fdata.split(jax.random.key(0), x, y,
                                            (n_train, 1000 if quick else 5000,
                                             len(x) - n_train - (1000 if quick else 5000)),
                                            stratify=True)
    stats = fdata.fit_standardize(xtr, per="channel")
    j = lambda a, dt=np.float32: jnp.asarray(np.asarray(a, dtype=dt))
    splits = common.Splits(j(stats(xtr)), j(ytr, np.int32), j(stats(xva)), j(yva, np.int32),
                           j(stats(x_test[:n_test])), j(y_test[:n_test], np.int32))
    he = nn.init.he_normal()
    models = {"mlp": common.deep_mlp([256, 128, 100], "relu", he), "cnn": get_model("cnn")}
    epochs = {"mlp": 1 if quick else 20, "cnn": 1 if quick else 15}
    results: dict = {"train": n_train, "val": int(splits.x_val.shape[0]), "test": n_test,
                     "optimizer": "adam(1e-3)", "batch_size": 128, "epochs": epochs,
                     "baselines": {k: {"name": n, "accuracy": a}
                                   for k, (n, a) in BASELINES.items()},
                     "runs": {}}
    for name, model in models.items():
        _, params = model.init(jax.random.key(0), (1, 28, 28, 1))
        _, hist = common.train(model.apply, params, splits, optim.adam(1e-3),
                               key=jax.random.key(1), batch_size=128, epochs=epochs[name])
        results["runs"][name] = {**common.final_metrics(hist), "curve": hist["epochs"],
                                 "baseline": BASELINES[name][1]}
        run.log(f"{name}: test acc {results['runs'][name]['test_acc']:.4f} "
                f"(baseline {BASELINES[name][1]}), {hist['train_seconds']:.0f} s")

    fig, ax = plt.subplots(figsize=(5, 3.3))
    for name, r in results["runs"].items():
        c = r["curve"]
        line, = ax.plot([x["epoch"] for x in c], [x["test_acc"] for x in c], "o-", ms=3,
                        label=f"{name} (funcbp)")
        ax.axhline(r["baseline"], color=line.get_color(), ls=":",
                   label=f"{BASELINES[name][0]} baseline {r['baseline']}")
    ax.set(xlabel="epoch", ylabel="test accuracy", title="Fashion-MNIST")
    ax.legend(fontsize=7)
    run.save_figure(fig, "accuracy")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
