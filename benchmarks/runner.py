"""Runs suite cases, each in a fresh subprocess, and describes the machine they ran on."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from pathlib import Path

from benchmarks import cases, suite
from benchmarks.timing import machine

ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict:
    """Platform, CPU count and versions (jax, jaxlib, numpy, optax, torch, funcbp's commit)."""
    import jaxlib

    from benchmarks import torch_models

    m = {**machine(), "cpu_count": os.cpu_count(), "jaxlib": jaxlib.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        m["processor"] = names[0] if names else m["processor"]
    except OSError:
        pass
    ok, version = torch_models.available()
    m["torch"] = version if ok else "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "funcbp"], cwd=ROOT,
                               text=True, capture_output=True, timeout=10).stdout.strip()
        m["funcbp"] = f"{commit}{' + local changes' if dirty else ''}" if commit else "?"
    except (OSError, subprocess.SubprocessError):
        m["funcbp"] = "?"
    return m


def run(names: list[str], *, quick: bool = False, reps: int | None = None, torch: bool = True,
        torch_compile: bool = True, parts: str | None = None, specials: bool = True,
        timeout: float = 900, log=print) -> dict:
    """Runs each case in a fresh subprocess and collects the results.

    Args:
      names: model cases (:mod:`benchmarks.cases`) to run.
      quick: few repetitions, 1024 matmul ceiling, no torch.compile.
      reps: override the compiled timings' repetitions.
      torch: also time PyTorch (skipped with a note when torch is not importable).
      torch_compile: also try ``torch.compile``.
      parts: comma-separated subset of :data:`benchmarks.suite.PARTS` (default all).
      specials: also measure the matmul ceiling and the interpreter's per-equation overhead.
      timeout: seconds allowed per subprocess.
      log: called with one progress line per finished subprocess.

    Returns:
      ``{"settings", "ceiling", "interp_overhead", "cases": [...]}``.
    """
    common = (["--quick"] if quick else []) + (["--reps", str(reps)] if reps else [])
    results: dict = {"settings": {**suite.settings(quick, reps), "quick": quick}, "cases": []}
    for special, key in zip(cases.SPECIAL, ("ceiling", "interp_overhead"), strict=True):
        if specials:
            t = time.perf_counter()
            results[key] = suite.run_child(special, common, timeout=timeout)
            log(f"{special}: {time.perf_counter() - t:.0f} s")
    for name in names:
        t = time.perf_counter()
        row = suite.run_child(name, common + (["--parts", parts] if parts else []),
                              timeout=timeout)
        if torch and "error" not in row and importlib.util.find_spec("torch") is None:
            row["torch"] = {"case": name, "framework": "torch", "na": "torch not installed"}
        elif torch and "error" not in row:
            args = common + ([] if torch_compile else ["--no-torch-compile"])
            row["torch"] = suite.run_child(name, [*args, "--framework", "torch"], timeout=timeout)
        results["cases"].append(row)
        log(f"{name}: {time.perf_counter() - t:.0f} s"
            + (f" ({row['error']})" if "error" in row else ""))
    return results
