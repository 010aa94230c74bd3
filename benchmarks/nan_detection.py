"""What the NaN detection costs a healthy compiled train step, same process.

    python -m benchmarks.nan_detection [--reps 200] [--quick] [--out FILE.json]

Three contenders train the same model from the same state, step by step, alternating:

- ``plain``: ``make_train_step`` with ``funcbp.value_and_grad`` (its ``finite`` flag is part of
  every step anyway);
- ``debug_nans``: the same step with ``funcbp.value_and_grad(..., debug_nans=True)``, whose
  compiled program adds an ``isfinite`` reduction and a ``lax.cond`` whose untaken branch would
  run the eager search from a host callback;
- ``trainer guard``: the plain step plus what ``funcbp.train.fit`` adds for locating a NaN, a
  copy of the parameters and optimiser state at the start of each window between two checks
  of the ``finite`` flags (every 0.5 s in the trainer; here every ``--window`` steps, default
  the number of steps in 0.5 s).

Steps run in blocks of ``--per-block`` without waiting in between (as the trainer runs them),
the contenders' blocks alternating. Prints the median step time of each, the median of the
paired per-block ratios to ``plain``, and the ratio of the fastest blocks (the least disturbed
by other load on the machine).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp

import funcbp
from benchmarks.timing import machine, write_json
from funcbp import losses, optim
from funcbp.train import make_train_step
from funcbp.train.models import get_model


def run(reps: int = 40, model: str = "digits_cnn", batch_size: int = 32,
        window: int | None = None, per_block: int = 20) -> dict:
    net = get_model(model)
    side = 8 if model.startswith("digits") else 28  # the digits are 8x8, (Fashion-)MNIST 28x28
    _, params = net.init(jax.random.key(0), (1, side, side, 1))
    x = jax.random.uniform(jax.random.key(1), (batch_size, side, side, 1))
    y = jax.random.randint(jax.random.key(2), (batch_size,), 0, 10)
    tx = optim.sgd(0.01, momentum=0.9)
    loss = losses.softmax_cross_entropy_with_integer_labels
    steps = {
        "plain": make_train_step(net.apply, loss, tx),
        "debug_nans": make_train_step(net.apply, loss, tx, functools.partial(
            funcbp.value_and_grad, debug_nans=True)),
        "trainer guard": make_train_step(net.apply, loss, tx),
    }
    state = {k: jax.tree.map(jnp.copy, (params, tx.init(params))) for k in steps}
    key = jax.random.key(3)

    def block(name, start, n):
        """``n`` steps without waiting in between, as a trainer runs them; seconds per step."""
        p, s = state[name]
        t = time.perf_counter()
        for i in range(start, start + n):
            if name == "trainer guard" and window and i % window == 0:
                _ = jax.tree.map(jnp.copy, (p, s))  # the trainer's snapshot
            p, s, m = steps[name](p, s, (x, y), jax.random.fold_in(key, i))
        jax.block_until_ready((p, s, m))
        state[name] = (p, s)
        return (time.perf_counter() - t) / n

    for name in steps:  # compile
        block(name, 1, 1)
    if window is None:
        window = max(1, int(0.5 / block("plain", 0, 20)))
    times = {name: [] for name in steps}
    order = list(steps)
    for r in range(reps):
        order = order[1:] + order[:1]  # rotate, so no contender always runs first
        for name in order:
            times[name].append(block(name, r * per_block, per_block))
    ratios = {name: statistics.median(a / b for a, b in zip(times[name], times["plain"],
                                                            strict=True))
              for name in steps}
    best = {name: min(times[name]) / min(times["plain"]) for name in steps}
    return {"model": model, "batch_size": batch_size, "reps": reps, "window": window,
            "median_ms": {n: 1e3 * statistics.median(t) for n, t in times.items()},
            "ratio_to_plain": ratios, "ratio_of_best": best, "steps_per_block": per_block,
            "backend": jax.default_backend(), "machine": machine()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=40, help="blocks per contender")
    ap.add_argument("--per-block", type=int, default=20, help="steps per timed block")
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--window", type=int, help="steps between snapshots (default: 0.5 s)")
    ap.add_argument("--quick", action="store_true", help="few repetitions (CI smoke run)")
    ap.add_argument("--out", help="write the result as JSON")
    args = ap.parse_args(argv)
    r = run(3 if args.quick else args.reps, args.model, args.batch_size, args.window,
            args.per_block)
    print(f"{r['model']}, batch {r['batch_size']}, {r['backend']}: {r['reps']} blocks of "
          f"{r['steps_per_block']} steps each, snapshot every {r['window']} steps")
    print("| contender | median step ms | median paired ratio | ratio of fastest blocks |\n"
          "|---|---|---|---|")
    for n in r["median_ms"]:
        print(f"| {n} | {r['median_ms'][n]:.3f} | {r['ratio_to_plain'][n]:.3f} | "
              f"{r['ratio_of_best'][n]:.3f} |")
    if args.out:
        write_json(args.out, r)
    return r


if __name__ == "__main__":
    main()
