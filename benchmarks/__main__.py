"""The benchmark suite: every case in its own process, then JSON and docs/benchmarks.md.

    python -m benchmarks                   # full run (make bench): ~4 min on 2 quiet cores
    python -m benchmarks --quick           # few repetitions, no torch.compile: ~2 min
    python -m benchmarks --case cnn_28x28_b128 --no-torch

Writes ``benchmarks/results/suite.json``, a copy in ``docs/benchmarks.json`` and the generated
section of ``docs/benchmarks.md`` (between ``<!-- suite:begin -->`` and ``<!-- suite:end -->``;
hand-written text around it is kept). Ratios are funcbp / jax measured in the same process.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

from benchmarks import cases, report, suite
from benchmarks.runner import ROOT, machine_info, run
from benchmarks.timing import write_json


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions, no torch.compile")
    ap.add_argument("--case", action="append", help="only these cases (repeatable); known: "
                    + ", ".join(cases.CASES))
    ap.add_argument("--reps", type=int, default=None, help="compiled timing repetitions")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    ap.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--parts", default=None, help="comma-separated subset of "
                    + ",".join(suite.PARTS) + " (default: all)")
    ap.add_argument("--no-specials", action="store_true",
                    help="skip the matmul-ceiling and interpreter-overhead processes")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    ap.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"),
                    help="the Markdown file whose generated section is rewritten")
    ap.add_argument("--json-out", default=str(ROOT / "benchmarks" / "results" / "suite.json"))
    ap.add_argument("--docs-json", default=str(ROOT / "docs" / "benchmarks.json"),
                    help="copy of the JSON kept with the docs ('' to skip)")
    ap.add_argument("--note", default="", help="a line added to the report (e.g. 'machine busy')")
    args = ap.parse_args(argv)
    names = args.case or cases.default_cases()
    for name in names:
        cases.get(name)                                   # unknown names fail before any work
    started = time.perf_counter()
    results = run(names, quick=args.quick, reps=args.reps, torch=not args.no_torch,
                  torch_compile=not args.no_torch_compile, parts=args.parts,
                  specials=not args.no_specials, timeout=args.timeout,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    results.update({
        "command": "python -m benchmarks" + "".join(f" {shlex.quote(a)}"
                                                    for a in (argv if argv is not None
                                                              else sys.argv[1:])),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(), "wall_s": round(time.perf_counter() - started, 1),
        "note": args.note})
    results["targets"] = report.targets(results)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json_out, results)
    if args.docs_json:
        write_json(args.docs_json, results)
    if args.markdown:
        report.write_markdown(args.markdown, results)
    print(report.section(results))
    return results


if __name__ == "__main__":
    main()
