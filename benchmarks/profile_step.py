"""Where a compiled step's time goes: XLA's per-instruction profile of funcbp's or jax's step.

    python -m benchmarks.profile_step --case cnn_28x28_b128              # funcbp and jax
    python -m benchmarks.profile_step --case cnn_28x28_b128 --who funcbp --top 25

Runs the jitted ``value_and_grad`` of a benchmark case a few times under ``jax.profiler``
(a Perfetto trace, read back here; no TensorBoard needed), sums each XLA instruction's time
per step, and prints the largest with what they compute: the fused computation's root
operation (``convolution``, ``dot``, ``reduce-window``, elementwise ``fusion``...), its output
shape, and the jax primitive it came from. This is how the CNN's remaining cost was located
(``docs/benchmarks.md``). Times are those of one process on this machine: compare the two
contenders from the same run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

from benchmarks import hlo_compare

__all__ = ["profile"]


def _describe(hlo_text: str) -> dict[str, dict]:
    """Entry instruction name -> {"op", "shape", "source"} from optimised HLO text."""
    comps, entry = hlo_compare.parse(hlo_text, keep_metadata=True)
    out = {}
    for name, body in comps[entry][1].items():
        op = hlo_compare.opcode(body)
        if op is None:
            continue
        called = re.search(r"calls=(%[\w.\-]+)", body)
        if op == "fusion" and called and called.group(1) in comps:
            root, called_body = comps[called.group(1)]
            op = f"fusion[{hlo_compare.opcode(called_body[root])}]"
        src = re.search(r'op_name="([^"]*)"', body)
        out[name.lstrip("%")] = {"op": op, "shape": body.split(" ", 1)[0],
                                 "source": src.group(1).rsplit("/", 1)[-1] if src else ""}
    return out


def profile(case_name: str, who: str, *, steps: int = 5) -> tuple[float, list[dict]]:
    """``(wall ms per step, [{"name", "ms", "op", "shape", "source"}...] largest first)``."""
    import time

    import jax

    import funcbp
    from benchmarks import models
    from benchmarks.cases import CASES

    case = CASES[case_name]
    init, loss = case.make()
    params = init(jax.random.key(0))
    x, y = models.batch(case.x_shape)
    vg = {"funcbp": funcbp.value_and_grad, "jax": jax.value_and_grad}[who]
    compiled = jax.jit(vg(loss)).lower(params, x, y).compile()
    info = _describe(compiled.as_text())
    for _ in range(3):
        jax.block_until_ready(compiled(params, x, y))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(steps):
                jax.block_until_ready(compiled(params, x, y))
            wall = (time.perf_counter() - start) / steps
        (path,) = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in info:
            total[e["name"]] += e.get("dur", 0) / 1e3 / steps
    rows = [{"name": n, "ms": ms, **info[n]} for n, ms in total.most_common()]
    return wall * 1e3, rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cases import CASES

    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--who", choices=("funcbp", "jax", "both"), default="both")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    for who in (("funcbp", "jax") if args.who == "both" else (args.who,)):
        wall, rows = profile(args.case, who, steps=args.steps)
        by_op = collections.Counter()
        for r in rows:
            by_op[r["op"]] += r["ms"]
        print(f"\n{who}: {wall:.1f} ms per step (wall, under the profiler); "
              f"instructions sum to {sum(r['ms'] for r in rows):.1f} ms")
        print("  by operation: " + ", ".join(f"{op} {ms:.1f}" for op, ms in by_op.most_common(6)))
        for r in rows[:args.top]:
            print(f"  {r['ms']:7.2f} ms  {r['op']:28s} {r['shape']:26s} {r['source']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
