"""Timing helpers: alternate the contenders, take medians, report ratios."""

from __future__ import annotations

import json
import platform
import statistics
import time

import jax


def block(tree):
    return jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x,
                        tree)


def median_times(fns: dict, args: tuple, *, reps: int = 30, warmup: int = 3) -> dict:
    """Median seconds per call of each fn, alternating them so load affects all alike."""
    for _ in range(warmup):
        for f in fns.values():
            block(f(*args))
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, f in fns.items():
            t = time.perf_counter()
            block(f(*args))
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def compile_time(fn, args) -> float:
    """Seconds to trace, lower and compile ``jax.jit(fn)`` for ``args`` (no cache reuse)."""
    jax.clear_caches()
    t = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t


def machine() -> dict:
    import numpy as np
    import optax

    return {"platform": platform.platform(), "processor": platform.processor() or "?",
            "python": platform.python_version(), "jax": jax.__version__,
            "numpy": np.__version__, "optax": optax.__version__,
            "devices": [str(d) for d in jax.devices()]}


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
