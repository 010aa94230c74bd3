"""Run every study: ``python -m experiments [--quick] [--only a,b] [--publish]``.

Each study runs in this process, one after the other; a study that fails is reported and the
others still run. The exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from experiments import STUDIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny runs (CI smoke test)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated subset of {', '.join(STUDIES)}")
    parser.add_argument("--publish", action=argparse.BooleanOptionalAction, default=None,
                        help="copy figures to docs/experiments/figures (default: full mode only)")
    args = parser.parse_args(argv)
    chosen = [s for s in args.only.split(",") if s] or list(STUDIES)
    unknown = sorted(set(chosen) - set(STUDIES))
    if unknown:
        parser.error(f"unknown studies {unknown}; choose from {', '.join(STUDIES)}")
    study_args = (["--quick"] if args.quick else []) + (
        [] if args.publish is None else ["--publish" if args.publish else "--no-publish"])
    failed = []
    for name in chosen:
        start = time.perf_counter()
        try:
            importlib.import_module(f"experiments.{name}").main(study_args)
        except Exception:  # noqa: BLE001 - report and go on with the other studies
            traceback.print_exc()
            failed.append(name)
        print(f"== {name}: {'FAILED' if name in failed else 'ok'} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
