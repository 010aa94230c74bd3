"""CI guard against gross slowdowns: fails when a compiled funcbp/jax ratio exceeds 1.5.

    python -m benchmarks.ci_guard [--reps 10] [--max-ratio 1.5] [--case NAME ...]

Every case of the suite, each in a fresh process, funcbp and jax alternating rep by rep,
medians; the compiled ``value_and_grad`` and the compiled train step. Prints the table, exits 1
if any ratio is above ``--max-ratio`` or a case crashed. A case funcbp cannot differentiate yet
(e.g. no rule for ``scan``) is shown as n/a and does not fail the guard. About a minute on
2 cores. The threshold is loose on purpose: CI machines are noisy; this catches a 2x
regression, not a 10% one (``python -m benchmarks`` measures those).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import cases
from benchmarks.runner import run

#: Every case of the suite (issue 6: "fails when a compiled funcbp/jax ratio exceeds 1.5 on
#: any case"), less the tiny plumbing cases.
GUARD_CASES = tuple(name for name, case in cases.CASES.items() if not case.hidden)


def verdicts(rows: list[dict], max_ratio: float) -> list[tuple[str, str, float | None, bool]]:
    """``(case, what, ratio, ok)`` for each compiled ratio; a crashed case is not ok."""
    out = []
    for r in rows:
        if "error" in r:
            out.append((r["case"], "error: " + r["error"], None, False))
            continue
        if "funcbp" in r.get("na", {}):
            out.append((r["case"], r["na"]["funcbp"], None, True))
            continue
        for part in ("grad", "step"):
            ratio = r.get(part, {}).get("ratio")
            out.append((r["case"], part, ratio, ratio is not None and ratio <= max_ratio))
    return out


def table(rows: list[dict], max_ratio: float) -> str:
    """The guard's Markdown table: times in ms, ratio funcbp/jax, and the verdict."""
    lines = ["| case | compiled | funcbp ms | jax ms | ratio | ok |", "|---|---|---|---|---|---|"]
    by_case = {r["case"]: r for r in rows}
    for case, what, ratio, ok in verdicts(rows, max_ratio):
        part = by_case[case].get(what, {}) if what in ("grad", "step") else {}
        ms = lambda k, part=part: f"{1e3 * part[k]:.2f}" if k in part else ""
        label = {"grad": "value_and_grad", "step": "train step"}.get(what, what)
        lines.append(f"| {case} | {label} | {ms('funcbp_s')} | {ms('jax_s')} | "
                     f"{'' if ratio is None else f'{ratio:.3f}'} | {'yes' if ok else '**NO**'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ci_guard",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10, help="alternating repetitions per timing")
    ap.add_argument("--max-ratio", type=float, default=1.5, help="fail above this funcbp/jax")
    ap.add_argument("--case", action="append", help="cases to run (default: "
                    + ", ".join(GUARD_CASES) + ")")
    ap.add_argument("--timeout", type=float, default=170, help="seconds per case")
    args = ap.parse_args(argv)
    names = args.case or list(GUARD_CASES)
    for name in names:
        cases.get(name)
    results = run(names, quick=True, reps=args.reps, torch=False, parts="grad,step",
                  specials=False, timeout=args.timeout,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    print(table(results["cases"], args.max_ratio))
    bad = [v for v in verdicts(results["cases"], args.max_ratio) if not v[3]]
    if bad:
        print(f"FAIL: {len(bad)} compiled funcbp/jax ratio(s) above {args.max_ratio} or crashed: "
              + ", ".join(f"{c} {w}" for c, w, _, _ in bad))
        return 1
    print(f"OK: every compiled funcbp/jax ratio <= {args.max_ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
