"""The checks of ``check_grads`` beyond one gradient against its references: forward mode
against finite differences, a batched gradient against the loop, and two runs bit for bit.

Each returns an :class:`ExtraCheck`; ``check_grads`` adds them to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ExtraCheck", "batched_check", "determinism_check", "forward_mode_check"]


@dataclass
class ExtraCheck:
    """One whole-function check: its name, verdict, largest relative error and a detail line."""

    name: str
    passed: bool
    max_rel_err: float | None
    detail: str

    def __str__(self) -> str:
        err = "" if self.max_rel_err is None else f", max rel err {self.max_rel_err:.2e}"
        return f"{self.name}: {'ok' if self.passed else 'FAIL'}{err} ({self.detail})"


def _rel(ours: np.ndarray, ref: np.ndarray, floor: float) -> float:
    ours, ref = np.asarray(ours, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    if not ours.size:
        return 0.0
    same = (ours == ref) | (np.isnan(ours) & np.isnan(ref))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        rel = np.where(same, 0.0, np.abs(ours - ref) / (np.abs(ref) + floor))
    return float(np.nan_to_num(rel, nan=np.inf).max())


def forward_mode_check(jvp_fn: Callable, name: str, fn64: Callable, xs64: Sequence[Any], *,
                       step: float, rtol: float, atol: float, precision: str,
                       num_directions: int, seed: int) -> ExtraCheck:
    """``jvp_fn(fn64, xs, v)``'s tangent output against ``(f(x + h v) - f(x - h v)) / 2h``,
    every output entry, along ``num_directions`` random unit directions ``v`` (float64)."""
    rng = np.random.default_rng(seed + 17)
    level = max((float(np.abs(np.asarray(o)).max(initial=0.0))
                 for o in jax.tree.leaves(fn64(*xs64)) if _is_float(o)), default=0.0)
    h = step * max(1.0, max(float(np.abs(np.asarray(x)).max(initial=0.0)) for x in xs64))
    worst, ok = 0.0, True
    for _ in range(num_directions):
        vs = [rng.standard_normal(np.shape(x)) for x in xs64]
        norm = np.sqrt(sum(float(np.sum(v * v)) for v in vs)) or 1.0
        vs = [jnp.asarray(v / norm, jnp.result_type(x)) for v, x in zip(vs, xs64, strict=True)]
        _, tangent = jvp_fn(fn64, tuple(xs64), tuple(vs))
        plus = fn64(*[x + h * v for x, v in zip(xs64, vs, strict=True)])
        minus = fn64(*[x - h * v for x, v in zip(xs64, vs, strict=True)])
        for t, p, m in zip(jax.tree.leaves(tangent), jax.tree.leaves(plus),
                           jax.tree.leaves(minus), strict=True):
            if not _is_float(p):
                continue
            fd = (np.asarray(p, np.float64) - np.asarray(m, np.float64)) / (2 * h)
            scale = float(np.abs(fd).max(initial=0.0)) or 1.0
            noise = 16 * float(jnp.finfo(precision).eps) * (level + 1e-300) / h
            floor = (atol * scale + noise) / rtol
            err = _rel(np.asarray(t), fd, floor)
            worst, ok = max(worst, err), ok and err <= rtol
    return ExtraCheck(f"forward mode ({name}) vs finite differences", ok, worst,
                      f"every output entry along {num_directions} random directions, "
                      f"{precision}, rtol {rtol:g}")


def batched_check(grad_of: Callable, xs: Sequence[Any], *, rtol: float, atol: float,
                  batch: int = 3, seed: int = 0) -> ExtraCheck:
    """``jax.vmap(grad_of)`` over ``batch`` perturbed copies of the inputs against a loop."""
    keys = jax.random.split(jax.random.key(seed + 29), len(xs))
    stacked = [jnp.stack([x + jnp.asarray(0.1 * (k + 1), jnp.result_type(x))
                          * jax.random.normal(key, jnp.shape(x), jnp.result_type(x))
                          for k in range(batch)]) for x, key in zip(xs, keys, strict=True)]
    mapped = jax.vmap(lambda *ls: tuple(grad_of(*ls)))(*stacked)
    worst = 0.0
    for k in range(batch):
        loop = grad_of(*[s[k] for s in stacked])
        for m, g in zip(mapped, loop, strict=True):
            ref = np.asarray(g, np.float64)
            scale = float(np.abs(ref).max(initial=0.0)) or 1.0
            worst = max(worst, _rel(np.asarray(m)[k], ref, atol * scale / rtol))
    return ExtraCheck("batched: vmap of the gradient vs a loop", worst <= rtol, worst,
                      f"{batch} perturbed copies, rtol {rtol:g}")


def determinism_check(grad_of: Callable, xs: Sequence[Any]) -> ExtraCheck:
    """Two eager runs, and two runs of one compiled program, bit for bit."""
    def same(a, b):
        return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
                   for x, y in zip(a, b, strict=True))

    eager = same(grad_of(*xs), grad_of(*xs))
    jitted = jax.jit(lambda *ls: tuple(grad_of(*ls)))
    compiled = same(jitted(*xs), jitted(*xs))
    bad = [w for w, ok in (("eager", eager), ("jit", compiled)) if not ok]
    return ExtraCheck("deterministic: two runs bit for bit", not bad, None,
                      "eager and jit" if not bad else f"{' and '.join(bad)} runs differ")


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)
