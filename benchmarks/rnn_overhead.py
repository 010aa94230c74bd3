"""funcbp vs jax.grad on recurrent networks: jitted value_and_grad of a 64-step scan.

    python -m benchmarks.rnn_overhead [--reps 30] [--steps 64] [--batch 32] [--hidden 128]

A GRU, an LSTM and a SimpleRNN (funcbp.nn layers over ``lax.scan``) each feed a Dense
classifier with a cross-entropy loss. Both libraries' ``value_and_grad`` are compiled with
``jax.jit`` and timed in the same process, alternating calls, median of ``--reps`` runs after
warm-up. Prints a Markdown table and funcbp/jax ratios (target <= 1.05).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import funcbp
from benchmarks.timing import machine, median_times, write_json
from funcbp import nn
from funcbp.nn.recurrent import GRU, LSTM, SimpleRNN

LAYERS = {"gru": GRU, "lstm": LSTM, "simple_rnn": SimpleRNN}


def make_case(kind: str, steps: int, batch: int, features: int, hidden: int, classes: int = 10):
    """Params, a batch and the loss of ``serial(<recurrent>(hidden), Dense(classes))``."""
    model = nn.serial(LAYERS[kind](hidden), nn.Dense(classes))
    _, params = model.init(jax.random.key(0), (batch, steps, features))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, steps, features))
    y = jax.random.randint(ky, (batch,), 0, classes)

    def loss(params, x, y):
        logp = jax.nn.log_softmax(model.apply(params, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    return params, x, y, loss


def run(reps: int = 30, steps: int = 64, batch: int = 32, features: int = 32,
        hidden: int = 128, kinds=("gru", "lstm", "simple_rnn")) -> list[dict]:
    rows = []
    for kind in kinds:
        params, x, y, loss = make_case(kind, steps, batch, features, hidden)
        ours = jax.jit(funcbp.value_and_grad(loss))
        ref = jax.jit(jax.value_and_grad(loss))
        t = median_times({"funcbp": ours, "jax": ref}, (params, x, y), reps=reps, warmup=5)
        rows.append({"case": f"{kind} {steps} steps, batch {batch}, hidden {hidden}",
                     "funcbp_ms": 1e3 * t["funcbp"], "jax_ms": 1e3 * t["jax"],
                     "ratio": t["funcbp"] / t["jax"]})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--out", help="write rows and machine info to this JSON file")
    args = parser.parse_args(argv)
    rows = run(args.reps, args.steps, args.batch, hidden=args.hidden)
    print(f"device: {jax.devices()[0]}; median of {args.reps} runs after 5 warm-up runs")
    print("| case | funcbp ms | jax ms | funcbp / jax |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['funcbp_ms']:.3f} | {r['jax_ms']:.3f} | {r['ratio']:.3f} |")
    if args.out:
        write_json(args.out, {"machine": machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
