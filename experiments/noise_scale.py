"""Gradient noise scale during training (McCandlish et al. 2018), from one backward pass.

The simple noise scale ``B_simple = tr(Sigma) / |G|^2`` (``Sigma`` the covariance of the
per-example gradients, ``G`` the true gradient) predicts the batch size beyond which larger
batches stop buying fewer steps. ``funcbp.quantities(which=("grad", "variance"))`` gives both on
a probe batch of ``P`` training examples in one forward and one backward pass (BackPACK's
scaling: ``variance = Var(grad l_i) / P^2``), so

    tr(Sigma) = P^2 / (1 - 1/P) * sum(variance),   |G|^2 = |grad|^2 - tr(Sigma) / P

(unbiased estimates). An MLP is trained on digits with SGD (batch 64, the batch-size study's
optimiser); ``B_simple`` is probed every few epochs and set beside the batch-size study's
measured accuracy and time per batch size. Fashion-MNIST is added when its IDX files are
present (``funcbp.data.load_mnist(kind="fashion_mnist")``).

    python -m experiments.noise_scale [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import funcbp
from experiments import common
from funcbp import nn, optim

STUDY = "noise_scale"

#: docs/experiments/batch_size.md (full run): batch -> (equal-epochs test acc, seconds,
#: equal-steps test acc), 30 epochs / 600 steps of SGD(0.01, momentum 0.9) on digits.
BATCH_SIZE_STUDY = {4: (0.958, 11.4, 0.925), 16: (0.967, 3.10, 0.964), 64: (0.964, 0.69, 0.964),
                    256: (0.950, 0.19, 0.967), 1258: (0.830, 0.15, 0.967)}


def noise_scale(apply, params, x, y) -> dict:
    """``B_simple`` and its parts from ``funcbp.quantities`` on the probe batch ``(x, y)``."""
    q = funcbp.quantities(lambda p, x: apply(p, x), params, x, y,
                          loss="softmax_cross_entropy", which=("grad", "variance"))
    P = x.shape[0]
    tr_var = sum(jnp.sum(v) for v in jax.tree.leaves(q["variance"]))
    g2 = sum(jnp.sum(g * g) for g in jax.tree.leaves(q["grad"]))
    tr_sigma = P * P * tr_var * P / (P - 1)
    g2_true = g2 - tr_sigma / P
    # |grad|^2 below tr(Sigma)/P: the probe cannot tell the mean gradient from noise; the
    # uncorrected ratio (about P or more) is then a lower bound, flagged "resolved": 0.
    return {"tr_sigma": tr_sigma, "g2_mean": g2, "g2": g2_true,
            "b_simple": tr_sigma / jnp.where(g2_true > 0, g2_true, g2),
            "resolved": (g2_true > 0).astype(jnp.float32)}


def noise_scale_vmap(apply, params, x, y) -> jax.Array:
    """The same ``B_simple`` through ``jax.vmap(jax.grad)`` (a cross-check)."""
    def one(p, xi, yi):
        return common.LOSS(apply(p, xi[None]), yi[None])
    g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)
    flat = jnp.concatenate([v.reshape(x.shape[0], -1) for v in jax.tree.leaves(g)], 1)
    P = x.shape[0]
    mean = flat.mean(0)
    tr_sigma = jnp.sum(jnp.var(flat, axis=0)) * P / (P - 1)
    g2 = mean @ mean - tr_sigma / P
    return tr_sigma / jnp.where(g2 > 0, g2, mean @ mean)


def study(run, name: str, splits, hidden, epochs: int, probe_every: int, probe_size: int,
          batch: int) -> dict:
    model = common.deep_mlp(hidden, "relu", nn.init.he_normal())
    in_shape = (1, *splits.x_train.shape[1:])
    _, params = model.init(jax.random.key(0), in_shape)
    probe_x, probe_y = splits.x_train[:probe_size], splits.y_train[:probe_size]
    measure = jax.jit(lambda p: noise_scale(model.apply, p, probe_x, probe_y))
    records: list = []

    def probe(epoch, p):
        if epoch % probe_every and epoch != epochs:
            return {}
        rec = {k: float(v) for k, v in measure(p).items()}
        rec["epoch"] = epoch
        records.append(rec)
        run.log(f"{name} epoch {epoch}: B_simple {rec['b_simple']:.1f}")
        return rec

    check = float(noise_scale_vmap(model.apply, params, probe_x, probe_y))
    first = float(measure(params)["b_simple"])
    _, hist = common.train(model.apply, params, splits, optim.sgd(0.01, 0.9),
                           key=jax.random.key(1), batch_size=batch, epochs=epochs,
                           eval_every=probe_every, probe=probe)
    return {"records": records, "final": common.final_metrics(hist),
            "vmap_check": {"funcbp": first, "vmap": check},
            "train_examples": int(splits.x_train.shape[0]), "batch": batch,
            "probe_size": probe_size, "hidden": list(hidden)}


def fashion_splits(quick: bool):
    from funcbp import data as fdata

    try:
        (xtr, ytr), (xte, yte) = fdata.load_mnist(kind="fashion_mnist")
    except Exception as err:  # the IDX files are not on this machine
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    n = 2000 if quick else 20000
    xtr = np.asarray(xtr, np.float32)[:n].reshape(-1, 28, 28, 1) / 255.0
    xte = np.asarray(xte, np.float32)[:2000].reshape(-1, 28, 28, 1) / 255.0
    as_j = jnp.asarray
    return common.Splits(as_j(xtr[: n - 1000]), as_j(np.asarray(ytr[: n - 1000], np.int32)),
                         as_j(xtr[n - 1000:]), as_j(np.asarray(ytr[n - 1000:n], np.int32)),
                         as_j(xte), as_j(np.asarray(yte[:2000], np.int32))), None


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    epochs = 2 if quick else 30
    results: dict = {"datasets": {}, "batch_size_study": BATCH_SIZE_STUDY}
    splits = common.digits_splits(seed=0)
    results["datasets"]["digits"] = study(run, "digits", splits, [32] if quick else [128, 64],
                                          epochs, 1 if quick else 2, 256 if quick else 512, 64)
    fashion, why = fashion_splits(quick)
    if fashion is None:
        results["fashion_skipped"] = why
        run.log(f"Fashion-MNIST skipped: {why}")
    else:
        results["datasets"]["fashion_mnist"] = study(
            run, "fashion_mnist", fashion, [64] if quick else [256, 128], 1 if quick else 10, 1,
            256 if quick else 1024, 64)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, res in results["datasets"].items():
        ep = [r["epoch"] for r in res["records"]]
        ax1.plot(ep, [r["b_simple"] for r in res["records"]], "o-", label=name)
        ax1.plot(ep, [r["tr_sigma"] / r["g2_mean"] for r in res["records"]], ".:",
                 color=ax1.lines[-1].get_color(), label=f"{name}, |mean grad|^2 uncorrected")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("B_simple = tr(Sigma) / |G|^2")
    ax1.set_title("gradient noise scale during training")
    ax1.legend()
    sizes = sorted(BATCH_SIZE_STUDY)
    ax2.plot(sizes, [BATCH_SIZE_STUDY[b][0] for b in sizes], "o-", label="test acc, equal epochs")
    ax2.plot(sizes, [BATCH_SIZE_STUDY[b][2] for b in sizes], "s--", label="test acc, equal steps")
    ax2.set_xscale("log")
    ax2.set_xlabel("batch size (batch-size study)")
    ax2.set_ylabel("test accuracy")
    recs = results["datasets"]["digits"]["records"]
    later = [r["b_simple"] for r in recs if r["epoch"] > 0]
    lo, hi = np.percentile(later, [25, 75])
    ax2.axvspan(lo, hi, color="C2", alpha=0.15, label="digits B_simple, IQR after epoch 0")
    ax2.axvline(recs[0]["b_simple"], color="C2", ls=":", label="digits B_simple at init")
    results["datasets"]["digits"]["b_simple_iqr_after_init"] = [float(lo), float(hi)]
    ax2.legend(fontsize=7)
    ax2.set_title("batch-size trade-off beside the noise scale")
    run.save_figure(fig, "noise_scale")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
