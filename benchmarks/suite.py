"""One benchmark case in one fresh process: funcbp vs jax.grad (or PyTorch), as JSON.

    python -m benchmarks.suite --case mlp_784_512_512_10_b128 --json [--quick] [--reps N]
    python -m benchmarks.suite --case cnn_28x28_b128 --framework torch --json
    python -m benchmarks.suite --case matmul_ceiling --json
    python -m benchmarks.suite --case interp_overhead --json

``python -m benchmarks`` runs every case this way (one subprocess each, so compile caches and
memory never leak from one case into the next) and writes the report; see
:mod:`benchmarks.__main__`. The last line of stdout is the case's JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import jax

from benchmarks import flops as flops_mod
from benchmarks import measure, models
from benchmarks.cases import SPECIAL, Case, get

#: every part a jax case can measure; ``--parts`` picks a subset.
PARTS = ("compile", "memory", "hlo", "grad", "step", "eager", "flops", "ceiling")


def _na(e: BaseException) -> str:
    """A short "n/a" reason for a funcbp failure (a missing rule names its primitive)."""
    m = re.search(r"no VJP rule for '([^']+)'", str(e))
    if m:
        return f"n/a (no rule for {m.group(1)} yet)"
    return f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"


def _optimizer():
    """SGD with momentum 0.9, lr 0.01: funcbp.optim's when importable, else optax's."""
    try:
        from funcbp import optim
        return "funcbp.optim.sgd(0.01, momentum=0.9)", optim.sgd(0.01, momentum=0.9), \
            optim.apply_updates
    except Exception:  # noqa: BLE001 - funcbp.optim is optional here; optax is equivalent
        import optax
        return "optax.sgd(0.01, momentum=0.9)", optax.sgd(0.01, momentum=0.9), \
            optax.apply_updates


def train_step(value_and_grad, loss, tx, apply_updates):
    """``step(params, opt_state, x, y) -> (params, opt_state, loss)``, not yet jitted."""
    def step(params, opt_state, x, y):
        value, grads = value_and_grad(loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state, value
    return step


def _contenders() -> tuple[dict, str | None]:
    """``{"funcbp": funcbp.value_and_grad, "jax": jax.value_and_grad}``, less funcbp if broken."""
    try:
        import funcbp
    except Exception as e:  # noqa: BLE001 - report, and still measure jax
        return {"jax": jax.value_and_grad}, f"n/a (funcbp not importable: {type(e).__name__})"
    return {"funcbp": funcbp.value_and_grad, "jax": jax.value_and_grad}, None


def _copy(tree):
    return jax.tree.map(lambda a: a.copy(), tree)


def _times(samples: dict) -> dict:
    if "funcbp" in samples:
        return measure.ratio_stats(samples["funcbp"], samples["jax"])
    import statistics
    return {"jax_s": statistics.median(samples["jax"]), "reps": len(samples["jax"])}


def measure_jax(case: Case, *, reps: int = 50, eager_reps: int = 5, compile_reps: int = 3,
                ceiling_n: int = 2048, budget_s: float | None = None, parts=PARTS) -> dict:
    """Measures one model case, funcbp against jax.grad, in this process.

    Args:
      case: the case (:mod:`benchmarks.cases`).
      reps: timed repetitions of the compiled gradient and train step (alternating).
      eager_reps: timed repetitions of the unjitted gradient.
      compile_reps: cold compilations of the train step per contender (median).
      ceiling_n: size of the square matmul measuring this process's GFLOP/s ceiling.
      budget_s: if set, fewer repetitions (at least 5) for cases slower than this allows.
      parts: which of :data:`PARTS` to measure.

    Returns:
      A JSON-ready dict; a part funcbp cannot run is under ``"na"`` with the reason.
    """
    init, loss = case.make()
    params = init(jax.random.key(0))
    x, y = models.batch(case.x_shape)
    fns, na = _contenders()
    out: dict = {"case": case.name, "kind": case.kind, "batch": case.batch,
                 "x_shape": list(case.x_shape), "na": {}}
    if "funcbp" in fns:
        try:                                  # one trace tells whether funcbp can do this case
            jax.jit(fns["funcbp"](loss)).lower(params, x, y)
        except Exception as e:  # noqa: BLE001 - reported as n/a, the jax side still runs
            na = _na(e)
            fns.pop("funcbp")
    if na:
        out["na"]["funcbp"] = na
    opt_name, tx, apply_updates = _optimizer()
    out["optimizer"] = opt_name
    steps = {k: train_step(vg, loss, tx, apply_updates) for k, vg in fns.items()}
    step_args = (params, tx.init(params), x, y)
    donate = {"donate_argnums": (0, 1)}
    if "flops" in parts or "eager" in parts:
        out["flops"] = flops_mod.count(loss, params, x, y)._asdict()
    m, texts = {}, {}
    if "compile" in parts:   # its compilations also give the memory and HLO parts their data
        c = measure.compile_times(steps, step_args, reps=compile_reps, **donate)
        m = {k: c[k].pop("memory") for k in c}
        texts = {k: c[k].pop("hlo") for k in c}
        out["compile"] = {**c, **({"ratio": c["funcbp"]["total_s"] / c["jax"]["total_s"]}
                                  if "funcbp" in c else {})}
    if "memory" in parts:
        m = m or {k: measure.memory(s, step_args, **donate) for k, s in steps.items()}
        if "funcbp" in m and m["funcbp"] and m["jax"]:
            m["ratio"] = m["funcbp"]["total_bytes"] / m["jax"]["total_bytes"]
            m["temp_ratio"] = m["funcbp"]["temp_bytes"] / max(m["jax"]["temp_bytes"], 1)
        out["memory"] = m
    if "hlo" in parts and "funcbp" in steps:
        from benchmarks import hlo_compare
        texts = texts or {k: jax.jit(s, **donate).lower(*step_args).compile().as_text()
                          for k, s in steps.items()}
        out["hlo"] = {"identical": hlo_compare.structurally_identical(texts["funcbp"],
                                                                      texts["jax"]),
                      **{k: hlo_compare.instruction_counts(t) for k, t in texts.items()}}
    if "grad" in parts:
        jitted = {k: jax.jit(vg(loss)) for k, vg in fns.items()}
        out["grad"] = _times(measure.alternate(
            {k: (lambda f=f: f(params, x, y)) for k, f in jitted.items()}, reps=reps,
            budget_s=budget_s))
    if "step" in parts:
        with warnings.catch_warnings():   # a backend without donation says so; harmless here
            warnings.filterwarnings("ignore", message=".*donated buffers.*")
            calls = {k: measure.stateful(jax.jit(s, **donate), (_copy(params), tx.init(params)),
                                         x, y) for k, s in steps.items()}
            out["step"] = _times(measure.alternate(calls, reps=reps, budget_s=budget_s))
    if "eager" in parts:
        e = _times(measure.alternate({k: (lambda vg=vg: vg(loss)(params, x, y))
                                      for k, vg in fns.items()}, reps=eager_reps, warmup=1))
        if "ratio" in e:
            e["overhead_us_per_eqn"] = 1e6 * (e["funcbp_s"] - e["jax_s"]) / out["flops"]["eqns"]
        out["eager"] = e
    if "ceiling" in parts:
        out["ceiling"] = measure.matmul_ceiling(ceiling_n, reps=5)
    return out


def measure_torch(case: Case, *, reps: int = 20, compile: bool = True) -> dict:
    """PyTorch's timings for ``case`` (see :func:`benchmarks.torch_models.measure`)."""
    from benchmarks import torch_models

    out: dict = {"case": case.name, "framework": "torch"}
    ok, version = torch_models.available()
    if not ok:
        return {**out, "na": version}
    if case.torch is None:
        return {**out, "na": "no PyTorch model for this case"}
    out["version"] = version
    out.update(torch_models.measure(case.torch, case.x_shape, reps=reps, compile=compile,
                                    **case.torch_kwargs))
    return out


def measure_special(name: str, *, quick: bool) -> dict:
    """The machine's matmul ceiling, or the interpreter's overhead per equation."""
    if name == "matmul_ceiling":
        return {"case": name, **measure.matmul_ceiling(1024 if quick else 2048,
                                                       reps=5 if quick else 20)}
    try:
        return {"case": name, **measure.interp_overhead(200 if quick else 1000,
                                                        reps=2 if quick else 5)}
    except Exception as e:  # noqa: BLE001 - funcbp may be mid-edit; report instead of crash
        return {"case": name, "na": _na(e)}


def settings(quick: bool, reps: int | None = None) -> dict:
    """The repetition counts of a quick or a full run."""
    if quick:
        return {"reps": reps or 10, "eager_reps": 2, "compile_reps": 1, "ceiling_n": 1024,
                "budget_s": 5.0, "torch_reps": reps or 5}
    return {"reps": reps or 50, "eager_reps": 5, "compile_reps": 3, "ceiling_n": 2048,
            "budget_s": None, "torch_reps": reps or 20}


def run_child(name: str, args: list[str], *, timeout: float) -> dict:
    """Runs ``python -m benchmarks.suite --case name --json *args`` and parses its JSON line."""
    cmd = [sys.executable, "-m", "benchmarks.suite", "--case", name, "--json", *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {"case": name, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return {"case": name, "error": f"exit {p.returncode}: {' | '.join(tail)}"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, help="a case of benchmarks/cases.py, or one of "
                    + ", ".join(SPECIAL))
    ap.add_argument("--framework", choices=("jax", "torch"), default="jax",
                    help="jax: funcbp vs jax.grad; torch: the PyTorch reference")
    ap.add_argument("--quick", action="store_true", help="few repetitions")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (compiled)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = ap.parse_args(argv)
    s = settings(args.quick, args.reps)
    try:
        if args.case in SPECIAL:
            result = measure_special(args.case, quick=args.quick)
        elif args.framework == "torch":
            result = measure_torch(get(args.case), reps=s["torch_reps"],
                                   compile=not (args.quick or args.no_torch_compile))
            if args.quick and "compile_na" in result:
                result["compile_na"] = "not run (--quick)"
        else:
            parts = tuple(p for p in args.parts.split(",") if p)
            unknown = set(parts) - set(PARTS)
            if unknown:
                ap.error(f"unknown --parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
            result = measure_jax(get(args.case), reps=s["reps"], eager_reps=s["eager_reps"],
                                 compile_reps=s["compile_reps"], ceiling_n=s["ceiling_n"],
                                 budget_s=s["budget_s"], parts=parts)
    except Exception as e:  # noqa: BLE001 - the parent wants a JSON line, not a traceback
        traceback.print_exc()
        result = {"case": args.case, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2), flush=True)
    return result


if __name__ == "__main__":
    main()
