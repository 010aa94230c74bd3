"""Turns the suite's JSON into Markdown tables and a verdict on each of issue 6's targets.

The generated section of ``docs/benchmarks.md`` lives between :data:`BEGIN` and :data:`END`;
everything outside the markers is hand-written and kept as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BEGIN = "<!-- suite:begin -->"
END = "<!-- suite:end -->"

_TITLE = ("# Benchmarks\n\nfuncbp against `jax.grad` and PyTorch, measured by "
          "`python -m benchmarks`.\n")


def _f(x, fmt=".2f", scale=1.0):
    return "n/a" if x is None else format(x * scale, fmt)


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ratio(part: dict | None) -> str:
    if not part or "ratio" not in part:
        return "n/a"
    noise = part.get("noise")
    return f"**{part['ratio']:.3f}**" + (f" ±{noise:.3f}" if noise is not None else "")


def step_gflops(row: dict, who: str) -> float | None:
    """Achieved GFLOP/s of ``who``'s compiled train step (FLOPs counted from the jaxpr)."""
    t, fl = _get(row, "step", f"{who}_s"), _get(row, "flops", "train")
    return None if not t or not fl else fl / t / 1e9


def torch_gflops(row: dict) -> float | None:
    """Achieved GFLOP/s of PyTorch's eager train step, with funcbp's FLOP count of the model."""
    t, fl = _get(row, "torch", "eager_step_s"), _get(row, "flops", "train")
    return None if not t or not fl else fl / t / 1e9


def ceiling(results: dict, row: dict | None = None) -> float | None:
    """The matmul ceiling measured in ``row``'s own process, else the suite's dedicated one."""
    return _get(row, "ceiling", "gflops") or _get(results, "ceiling", "gflops")


def _na_note(row: dict) -> str:
    note = row.get("error") or _get(row, "na", "funcbp") or ""
    same = _get(row, "hlo", "identical")
    if same is not None and not note:
        note = ("compiled step: same program as jax.grad's" if same
                else "compiled step differs from jax.grad's")
    return note


def tables(results: dict) -> str:
    """The Markdown tables of one suite run."""
    rows = [r for r in results["cases"] if "error" not in r]
    out = ["### Compiled gradient and train step (ms, median; ratio = funcbp / jax, ± half "
           "the IQR of the paired per-rep ratios)\n",
           "| case | batch | value_and_grad funcbp | jax | ratio | train step funcbp | jax | ratio "
           "| step GFLOP/s funcbp | % of ceiling funcbp | % of ceiling jax | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["cases"]:
        if "error" in r:
            out.append(f"| {r['case']} | | | | | | | | | | | error: {r['error']} |")
            continue
        ceil = ceiling(results, r)
        pct = {w: (step_gflops(r, w) / ceil if step_gflops(r, w) and ceil else None)
               for w in ("funcbp", "jax")}
        out.append(
            f"| {r['case']} | {r['batch']} | {_f(_get(r, 'grad', 'funcbp_s'), scale=1e3)} | "
            f"{_f(_get(r, 'grad', 'jax_s'), scale=1e3)} | {_ratio(r.get('grad'))} | "
            f"{_f(_get(r, 'step', 'funcbp_s'), scale=1e3)} | "
            f"{_f(_get(r, 'step', 'jax_s'), scale=1e3)} | {_ratio(r.get('step'))} | "
            f"{_f(step_gflops(r, 'funcbp'), '.1f')} | {_f(pct['funcbp'], '.0%')} | "
            f"{_f(pct['jax'], '.0%')} | {_na_note(r)} |")
    out += ["", "### Trace + compile time of the train step (s) and compiled memory (MB)\n",
            "| case | trace+compile funcbp | jax | ratio | temp funcbp | temp jax | total funcbp "
            "| total jax | ratio (total) | XLA peak funcbp | XLA peak jax |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, m = r.get("compile", {}), r.get("memory", {})
        mb = lambda who, k, m=m: _f(_get(m, who, k), ".1f", 1e-6)
        out.append(
            f"| {r['case']} | {_f(_get(c, 'funcbp', 'total_s'))} | {_f(_get(c, 'jax', 'total_s'))}"
            f" | {_f(c.get('ratio'))} | {mb('funcbp', 'temp_bytes')} | {mb('jax', 'temp_bytes')}"
            f" | {mb('funcbp', 'total_bytes')} | {mb('jax', 'total_bytes')} | "
            f"{_f(m.get('ratio'), '.3f')} | {mb('funcbp', 'peak_bytes')} | "
            f"{mb('jax', 'peak_bytes')} |")
    out += ["", "### Eager (unjitted) value_and_grad (ms) and interpreter overhead\n",
            "| case | funcbp | jax | ratio | equations | (funcbp − jax) / equations, µs |",
            "|---|---|---|---|---|---|"]
    for r in rows:
        e = r.get("eager", {})
        out.append(f"| {r['case']} | {_f(e.get('funcbp_s'), '.1f', 1e3)} | "
                   f"{_f(e.get('jax_s'), '.1f', 1e3)} | {_f(e.get('ratio'))} | "
                   f"{_get(r, 'flops', 'eqns') or 'n/a'} | "
                   f"{_f(e.get('overhead_us_per_eqn'), '.1f')} |")
    io = results.get("interp_overhead") or {}
    if io and "na" not in io and "error" not in io:
        out += ["", f"`vjp` through a chain of {io['eqns']} scalar `sin`s, eager forward + "
                f"backward: funcbp {io['funcbp_us_per_eqn']:.1f} µs per equation, jax "
                f"{io['jax_us_per_eqn']:.1f} µs (ratio {io['ratio']:.2f})."]
    elif io:
        out += ["", f"Interpreter overhead (sin chain): {io.get('na') or io.get('error')}"]
    out += ["", "### PyTorch on CPU (samples/s of the SGD-momentum train step)\n",
            "| case | funcbp compiled | jax compiled | torch eager | torch.compile | "
            "funcbp / torch eager | funcbp / torch.compile | torch.compile time s | "
            "% of ceiling: funcbp | torch eager |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r.get("torch") or {}
        if not t or "na" in t and "eager_step_s" not in t:
            out.append(f"| {r['case']} | | | {t.get('na', 'not run')} | | | | | | |")
            continue
        b = r["batch"]
        sps = lambda s, b=b: b / s if s else None
        ours, eager, comp = (sps(_get(r, "step", "funcbp_s")), sps(t.get("eager_step_s")),
                             sps(t.get("compile_step_s")))
        out.append(
            f"| {r['case']} | {_f(ours, '.0f')} | {_f(sps(_get(r, 'step', 'jax_s')), '.0f')} | "
            f"{_f(eager, '.0f')} | {_f(comp, '.0f') if comp else t.get('compile_na', 'n/a')} | "
            f"{_f(ours / eager if ours and eager else None)} | "
            f"{_f(ours / comp if ours and comp else None)} | "
            f"{_f(t.get('compile_time_s'), '.1f')} | "
            f"{_f(_pct(step_gflops(r, 'funcbp'), ceiling(results, r)), '.0%')} | "
            f"{_f(_pct(torch_gflops(r), ceiling(results, r)), '.0%')} |")
    return "\n".join(out)


def _pct(gflops, ceil):
    return gflops / ceil if gflops and ceil else None


def targets(results: dict) -> list[dict]:
    """Issue 6's targets: per-case values and whether every case meets it (None: not measured)."""
    rows = [r for r in results["cases"] if "error" not in r and "funcbp" not in r.get("na", {})]
    checks = []

    def add(name, items, ok):
        """``items``: (case, shown value, value tested by ``ok``) triples; None = not measured."""
        items = [(c, v, t) for c, v, t in items if v is not None]
        checks.append({"target": name, "values": {c: round(v, 4) for c, v, _ in items},
                       "pass": all(ok(t) for _, _, t in items) if items else None})

    dense = [r for r in rows if r["kind"] == "dense"]
    one = lambda c, v: (c, v, v)
    # A train step that XLA compiles to the same program as jax.grad's differs from it only by
    # timing noise, whatever one run measured.
    add("compiled step funcbp/jax <= 1.00 within noise (dense; or the same compiled program)",
        [(r["case"], _get(r, "step", "ratio"),
          0.0 if _get(r, "hlo", "identical") else
          _get(r, "step", "ratio") - (_get(r, "step", "noise") or 0))
         for r in dense if _get(r, "step", "ratio")], lambda v: v <= 1.0)
    add("trace+compile funcbp/jax <= 1.5",
        [one(r["case"], _get(r, "compile", "ratio")) for r in rows], lambda v: v <= 1.5)
    add("compiled memory (total) funcbp/jax <= 1.05",
        [one(r["case"], _get(r, "memory", "ratio")) for r in rows], lambda v: v <= 1.05)
    mlp = [r for r in rows if r["case"] == "mlp_784_512_512_10_b1024"]
    add("MLP b1024 step >= 85% of the matmul ceiling",
        [one(r["case"], (step_gflops(r, "funcbp") or 0) / ceiling(results, r)) for r in mlp
         if ceiling(results, r)], lambda v: v >= 0.85)
    add(">= 1.2x PyTorch eager samples/s (dense)",
        [one(r["case"], _get(r, "torch", "eager_step_s") / _get(r, "step", "funcbp_s"))
         for r in dense if _get(r, "torch", "eager_step_s") and _get(r, "step", "funcbp_s")],
        lambda v: v >= 1.2)
    add("beat jax.grad on convolutional networks (step ratio < 1)",
        [one(r["case"], _get(r, "step", "ratio")) for r in rows if r["kind"] == "conv"],
        lambda v: v < 1.0)
    return checks


def targets_table(checks: list[dict]) -> str:
    """The targets as a Markdown table ("met" is "no" where nothing was measured)."""
    lines = ["| target | values (per case) | met |", "|---|---|---|"]
    for c in checks:
        vals = ", ".join(f"{k}: {v:.3g}" for k, v in c["values"].items()) or "not measured"
        met = {True: "yes", False: "**no**", None: "n/a"}[c["pass"]]
        lines.append(f"| {c['target']} | {vals} | {met} |")
    return "\n".join(lines)


def section(results: dict) -> str:
    """The whole generated Markdown section (machine, versions, command, tables, targets)."""
    m = results["machine"]
    ceil = results.get("ceiling") or {}
    head = [
        f"Generated by `{results['command']}` on {results['date']}"
        + (" (**quick run**: few repetitions)" if results["settings"].get("quick") else "") + ".",
        "",
        f"- machine: {m.get('platform')}, {m.get('cpu_count')} CPUs ({m.get('processor')}), "
        f"devices {', '.join(m.get('devices', []))}",
        "- versions: " + ", ".join(f"{k} {m[k]}" for k in ("python", "jax", "jaxlib", "numpy",
                                                          "optax", "torch", "funcbp") if k in m),
        f"- settings: {json.dumps(results['settings'])}; each case in its own process, funcbp "
        "and jax alternating rep by rep, medians",
        f"- float32 matmul ceiling: {_f(ceil.get('gflops'), '.1f')} GFLOP/s "
        f"({ceil.get('n', '?')}x{ceil.get('n', '?')}); per-case percentages use the ceiling "
        "measured in that case's own process",
        "- FLOPs: matmuls and convolutions counted from the jaxpr; a train step is the forward "
        "plus one forward-sized product per operand that needs a gradient (3x forward less the "
        "first layer's input gradient)",
    ]
    if results.get("note"):
        head += [f"- note: {results['note']}"]
    return "\n".join(head + ["", "### Targets (issue 6)\n", targets_table(targets(results)), "",
                             tables(results)])


def write_markdown(path: str | os.PathLike, results: dict) -> None:
    """Writes :func:`section` between the markers of ``path``, keeping the rest of the file.

    A missing file is created with a title; a file without markers gets the section appended.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else _TITLE
    block = f"{BEGIN}\n{section(results)}\n{END}"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
