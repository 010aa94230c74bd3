"""funcbp vs jax.grad: compiled value_and_grad time, compile time and eager time, same process.

    python -m benchmarks.grad_overhead [--reps 30] [--quick] [--out FILE.json]

Prints a Markdown table of times and funcbp/jax ratios (lower is better for funcbp).
"""

from __future__ import annotations

import argparse

import jax

import funcbp
from benchmarks import models
from benchmarks.timing import compile_time, machine, median_times, write_json


def run(reps: int = 30, eager_reps: int = 5, cases=None) -> list[dict]:
    rows = []
    for name, (make, shape) in models.CASES.items():
        if cases and name not in cases:
            continue
        init, loss = make()
        params = init(jax.random.key(0))
        x, y = models.batch(shape)
        ours = funcbp.value_and_grad(loss)
        ref = jax.value_and_grad(loss)
        c_ours, c_ref = compile_time(ours, (params, x, y)), compile_time(ref, (params, x, y))
        c_ours = min(c_ours, compile_time(ours, (params, x, y)))
        c_ref = min(c_ref, compile_time(ref, (params, x, y)))
        t = median_times({"funcbp": jax.jit(ours), "jax": jax.jit(ref)}, (params, x, y),
                         reps=reps)
        e = median_times({"funcbp": ours, "jax": ref}, (params, x, y), reps=eager_reps,
                         warmup=1)
        rows.append({"case": name, "jit_funcbp_ms": 1e3 * t["funcbp"], "jit_jax_ms": 1e3 * t["jax"],
                     "jit_ratio": t["funcbp"] / t["jax"],
                     "compile_funcbp_s": c_ours, "compile_jax_s": c_ref,
                     "compile_ratio": c_ours / c_ref,
                     "eager_funcbp_ms": 1e3 * e["funcbp"], "eager_jax_ms": 1e3 * e["jax"],
                     "eager_ratio": e["funcbp"] / e["jax"]})
        print(_row(rows[-1]), flush=True)
    return rows


HEADER = ("| case | jit funcbp ms | jit jax ms | ratio | compile funcbp s | compile jax s | ratio "
          "| eager funcbp ms | eager jax ms | ratio |\n|---|---|---|---|---|---|---|---|---|---|")


def _row(r):
    return (f"| {r['case']} | {r['jit_funcbp_ms']:.2f} | {r['jit_jax_ms']:.2f} | "
            f"**{r['jit_ratio']:.3f}** | {r['compile_funcbp_s']:.3f} | {r['compile_jax_s']:.3f} | "
            f"{r['compile_ratio']:.2f} | {r['eager_funcbp_ms']:.1f} | {r['eager_jax_ms']:.1f} | "
            f"{r['eager_ratio']:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="few repetitions (CI smoke run)")
    ap.add_argument("--case", action="append", help="only these cases (repeatable)")
    ap.add_argument("--out", default=None, help="write the rows and machine info as JSON")
    args = ap.parse_args(argv)
    reps = 5 if args.quick else args.reps
    print(HEADER)
    rows = run(reps=reps, eager_reps=2 if args.quick else 5, cases=args.case)
    if args.out:
        write_json(args.out, {"machine": machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
