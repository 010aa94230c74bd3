"""Measurement primitives of the suite: alternating timings with their spread, compile time,
compiled memory, the matmul ceiling, and the interpreter's per-equation overhead."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import block


def alternate(calls: dict[str, Callable[[], object]], *, reps: int, warmup: int = 3,
              budget_s: float | None = None, min_reps: int = 5) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument callable, interleaved rep by rep.

    Interleaving makes background load hit every contender alike; the lists are paired
    (sample ``i`` of each was taken back to back). With ``budget_s``, slow calls get fewer
    repetitions (at least ``min_reps``) so that the timed loop takes about ``budget_s``.
    """
    last = 0.0
    for _ in range(warmup):
        t = time.perf_counter()
        for call in calls.values():
            block(call())
        last = time.perf_counter() - t
    if budget_s is not None and warmup and last > 0:
        reps = max(min(reps, min_reps), min(reps, int(budget_s / last)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            t = time.perf_counter()
            block(call())
            samples[name].append(time.perf_counter() - t)
    return samples


def stateful(step: Callable, state: tuple, *rest) -> Callable[[], object]:
    """A zero-argument call running ``state = step(*state, *rest)[:len(state)]`` each time.

    For steps that donate their state (``donate_argnums``): each call feeds the previous
    call's outputs back in, so no donated buffer is read twice.
    """
    box = [tuple(state)]

    def call():
        out = step(*box[0], *rest)
        box[0] = tuple(out[:len(box[0])])
        return out
    return call


def ratio_stats(ours: list[float], ref: list[float]) -> dict:
    """Median times, their ratio, and the spread of the paired per-rep ratios.

    ``noise`` is half the interquartile range of the paired ratios ``ours[i] / ref[i]``: a
    ratio within ``noise`` of 1 is a tie on this machine at this moment.
    """
    paired = np.asarray(ours) / np.asarray(ref)
    q1, q3 = np.percentile(paired, [25, 75])
    return {"funcbp_s": statistics.median(ours), "jax_s": statistics.median(ref),
            "ratio": statistics.median(ours) / statistics.median(ref),
            "noise": float(q3 - q1) / 2, "reps": len(ours)}


def compile_time(fn: Callable, args: tuple, **jit_kwargs) -> dict:
    """Seconds to trace+lower and to compile ``jax.jit(fn, **jit_kwargs)`` from a clean cache.

    Also returns the compiled executable's ``memory`` (see :func:`memory_stats`) and its
    optimised ``hlo`` text (neither is timed).
    """
    jax.clear_caches()
    t0 = time.perf_counter()
    lowered = jax.jit(fn, **jit_kwargs).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return {"trace_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0,
            "memory": memory_stats(compiled), "hlo": compiled.as_text()}


def compile_times(fns: dict[str, Callable], args: tuple, *, reps: int, **jit_kwargs) -> dict:
    """Median trace+compile seconds per fn over ``reps`` alternating cold compilations."""
    samples: dict[str, list[dict]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            samples[name].append(compile_time(fn, args, **jit_kwargs))
    untimed = ("memory", "hlo")
    return {name: {**{k: statistics.median(s[k] for s in ss) for k in ss[0] if k not in untimed},
                   **{k: ss[-1][k] for k in untimed}}
            for name, ss in samples.items()}


def memory_stats(compiled) -> dict:
    """Bytes of a compiled executable's buffers, from XLA's memory analysis.

    ``total = arguments + outputs - aliased (donated) + temporaries``; ``peak`` is XLA's own
    heap-simulated peak where it reports one. Empty where the backend reports nothing.
    """
    m = compiled.memory_analysis()
    if m is None:
        return {}
    total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)
    return {"temp_bytes": int(m.temp_size_in_bytes), "total_bytes": int(total),
            "peak_bytes": int(getattr(m, "peak_memory_in_bytes", 0) or 0)}


def memory(fn: Callable, args: tuple, **jit_kwargs) -> dict:
    """:func:`memory_stats` of ``jax.jit(fn, **jit_kwargs)`` compiled for ``args``."""
    return memory_stats(jax.jit(fn, **jit_kwargs).lower(*args).compile())


def matmul_ceiling(n: int = 2048, *, reps: int = 10) -> dict:
    """float32 GFLOP/s of a jitted ``n x n @ n x n`` matmul (median of ``reps``)."""
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    t = statistics.median(alternate({"matmul": lambda: mm(a, b)}, reps=reps, warmup=2)["matmul"])
    return {"n": n, "seconds": t, "gflops": 2 * n**3 / t / 1e9}


def sin_chain(n: int):
    """``x -> sin(sin(...sin(x)))``, ``n`` deep: ``n`` cheap scalar equations."""
    def f(x):
        for _ in range(n):
            x = jnp.sin(x)
        return x
    return f


def interp_overhead(n: int = 1000, *, reps: int = 5) -> dict:
    """Eager forward+backward seconds of ``vjp`` through ``n`` scalar ``sin`` s, funcbp vs jax.

    Everything is op-by-op dispatch here, so the time per equation is the interpreter's (and
    jax's tracing machinery's) own overhead.
    """
    import funcbp

    f, x = sin_chain(n), jnp.float32(0.5)

    def run(vjp):
        def call():
            y, pullback = vjp(f, x)
            return y, pullback(jnp.ones_like(y))
        return call
    s = alternate({"funcbp": run(funcbp.vjp), "jax": run(jax.vjp)}, reps=reps, warmup=1)
    stats = ratio_stats(s["funcbp"], s["jax"])
    return {"eqns": n, **stats, "funcbp_us_per_eqn": 1e6 * stats["funcbp_s"] / n,
            "jax_us_per_eqn": 1e6 * stats["jax_s"] / n}
