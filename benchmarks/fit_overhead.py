"""What ``fit`` costs over a hand-written jitted optax loop training the same model, one process.

    python -m benchmarks.fit_overhead [--epochs 16] [--grad funcbp|jax] [--model digits_cnn]

Both train the digits CNN of ``make train`` (the default recipe: batches of 32, random shifts,
SGD with Nesterov momentum and a cosine schedule, L2 on the weights, the same gradient
implementation) on the device-resident training split. The hand loop is what one writes
without a trainer: ``optax.sgd`` + ``jax.jit`` with donated buffers, one epoch's permutation
by ``funcbp.data.batch_epoch``, no metrics read back. ``fit`` adds its per-step metrics, the
NaN/label guard and its read-backs, the progress bookkeeping, the epoch's validation, metrics
files and checkpoint. The two run interleaved, one hand epoch inside each ``fit`` epoch's
callback, so the machine's load hits both alike; the first epoch of each (compilation) is left
out, and the medians of the rest are compared. The trainer's time is its ``train_time_s``
(the steps of the epoch, up to the parameters being ready), the hand loop's the same span.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

import funcbp
from funcbp import data as fdata
from funcbp import losses
from funcbp.train import TrainConfig, fit, get_model, load_data


def hand_loop(config: TrainConfig):
    """The hand-written loop: ``run_epoch(epoch) -> seconds`` over the same data and model."""
    (x, y), _, _ = load_data(config)
    x, y = jnp.asarray(x), jnp.asarray(y)
    model = get_model(config.model)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    params = model.init(init_key, (1, *x.shape[1:]))[1]
    steps = len(x) // config.batch_size
    schedule = optax.cosine_decay_schedule(config.lr, config.epochs * steps)
    tx = optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov)
    grad_fn = funcbp.value_and_grad if config.grad == "funcbp" else jax.value_and_grad

    def objective(p, xb, yb, key):
        logits = model.apply(p, xb, key=key, train=True)
        return (losses.softmax_cross_entropy_with_integer_labels(logits, yb)
                + config.l2 * losses.l2_penalty(p, losses.default_weight_mask))

    @jax.jit
    def epoch_batches(key):
        return fdata.batch_epoch(key, x, y, config.batch_size)

    def step(p, s, xb, yb, key):
        k_aug, k_model = jax.random.split(key)
        xb = fdata.random_shift(k_aug, xb, config.max_shift)
        _, g = grad_fn(objective)(p, xb, yb, k_model)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(step, donate_argnums=(0, 1))
    state = {"p": params, "s": tx.init(params)}

    def run_epoch(epoch: int) -> float:
        t0 = time.perf_counter()
        perm_key, steps_key = jax.random.split(jax.random.fold_in(train_key, epoch))
        xs, ys = epoch_batches(perm_key)
        p, s = state["p"], state["s"]
        for i in range(steps):
            p, s = step(p, s, xs[i], ys[i], jax.random.fold_in(steps_key, i))
        jax.block_until_ready(p)
        state["p"], state["s"] = p, s
        return time.perf_counter() - t0

    return run_epoch


def measure(config: TrainConfig) -> dict[str, list[float]]:
    """Per-epoch seconds of ``fit`` and of the hand loop, interleaved; compile epochs dropped."""
    run_epoch = hand_loop(config)
    run_epoch(0)  # compiles
    hand: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(config, run_dir=f"{tmp}/run", quiet=True, log=lambda line: None,
                     callbacks=[lambda record: hand.append(run_epoch(record["epoch"]))])
    ours = [r["train_time_s"] for r in result.history][1:]
    return {"fit": ours, "hand": hand[1:]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--grad", choices=("funcbp", "jax"), default="funcbp")
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    config = TrainConfig(model=args.model, epochs=args.epochs, grad=args.grad,
                         batch_size=args.batch_size, schedule="cosine", writers="")
    t = measure(config)
    fit_s, hand_s = statistics.median(t["fit"]), statistics.median(t["hand"])
    steps = 1258 // config.batch_size
    print(f"| model | grad | steps/epoch | fit s/epoch | hand loop s/epoch | fit/hand |\n"
          f"|---|---|---|---|---|---|\n"
          f"| {config.model} b{config.batch_size} | {config.grad} | {steps} | {fit_s:.4f} | "
          f"{hand_s:.4f} | {fit_s / hand_s:.3f} |")
    print(f"(medians of {len(t['fit'])} epochs each, interleaved; {jax.default_backend()})")


if __name__ == "__main__":
    main()
