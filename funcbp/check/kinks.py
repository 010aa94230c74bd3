"""Kinks on the finite-difference stencil: does ``x - h`` take another branch than ``x + h``?

A central difference across a point where the function is not differentiable (``relu`` at 0,
a tie of ``max``, ``abs`` at 0, a ``clip`` bound, a ``where`` whose condition flips) measures
the average of the two one-sided slopes, which no gradient rule returns: comparing with it is a
false failure. :func:`probe` evaluates the function at the stencil's points through funcbp's
interpreter with a hook that records, for every kink-prone equation (``max``, ``min``, ``abs``,
``sign``, ``clamp``, ``select_n``, comparisons, rounding, ``reduce_max``/``reduce_min``,
``argmax``/``argmin``, ``cond``), which branch each element took; :func:`switches` names the
first equation whose branch differs between the points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from funcbp.autodiff import interpreter

__all__ = ["KINK_PRIMITIVES", "probe", "switches"]

_CMP = ("gt", "lt", "ge", "le", "eq", "ne")
#: primitives whose branch is recorded (a switch between stencil points is a kink).
KINK_PRIMITIVES = ("max", "min", "abs", "sign", "clamp", "select_n", *_CMP, "floor", "ceil",
                   "round", "reduce_max", "reduce_min", "argmax", "argmin", "cond")


def _branch(eqn: Any, invals: list, outs: list) -> np.ndarray | None:
    """Which branch each element takes at one equation (an integer array)."""
    name = eqn.primitive.name
    a = [np.asarray(v) for v in invals]
    if name in ("max", "min"):
        return np.sign(a[0] - a[1])
    if name in ("abs", "sign"):
        return np.sign(a[0])
    if name == "clamp":  # lax.clamp(lo, x, hi)
        return np.sign(a[1] - a[0]) + 3 * np.sign(a[1] - a[2])
    if name in ("select_n", "cond"):
        return a[0].astype(np.int64)
    if name in (*_CMP, "floor", "ceil", "round", "argmax", "argmin"):
        return np.asarray(outs[0])
    if name in ("reduce_max", "reduce_min"):
        return (a[0] == np.expand_dims(np.asarray(outs[0]), eqn.params["axes"])).astype(
            np.int64)
    return None


class _Probe(interpreter.Hooks):
    inline = True  # see inside jit, custom_jvp (relu), cond and loops

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, np.ndarray]] = []

    def forward_eqn(self, eqn, invals, outs):
        if eqn.primitive.name in KINK_PRIMITIVES:
            b = _branch(eqn, invals, outs)
            if b is not None:
                self.seen.append((eqn.primitive.name, _where(eqn), b))


def _where(eqn: Any) -> str:
    """``"at model.py:12 (loss)"``, with the calls it sits in: ``"in jit(relu) at ..."``."""
    frames = interpreter.path()
    here = interpreter.where(eqn)
    inside = " > ".join(f.primitive for f in frames if not f.primitive.startswith("custom_"))
    outer = frames[0].where if frames else ""
    return (f"in {inside} " if inside else "") + f"at {here or outer}"


def probe(fn: Callable, points: Sequence[Sequence[Any]]) -> list[list[tuple[str, str, Any]]]:
    """The branches of every kink-prone equation of ``fn`` at each point (an argument list),
    in the order the walk meets them: ``[(primitive, location, branch array), ...]``."""
    closed = jax.make_jaxpr(fn)(*points[0])
    found = []
    for args in points:
        hook = _Probe()
        with interpreter.hooks(hook):
            interpreter.forward(closed.jaxpr, list(closed.consts), list(jax.tree.leaves(args)),
                                [False] * len(closed.jaxpr.invars))
        found.append(hook.seen)
    return found


def switches(fn: Callable, points: Sequence[Sequence[Any]]) -> str | None:
    """``"max at model.py:12 ..."`` for the first kink-prone equation whose branch differs
    between the points (e.g. ``x - h`` and ``x + h``), or None when every branch agrees."""
    runs = probe(fn, points)
    first = runs[0]
    for other in runs[1:]:
        for a, b in zip(first, other, strict=False):
            if a[0] != b[0]:
                return f"{a[0]} {a[1]}: the walk took another path"
            if a[2].shape != b[2].shape or not np.array_equal(a[2], b[2]):
                return f"{a[0]} {a[1]}"
        if len(first) != len(other):
            return f"{first[-1][0] if first else 'the function'}: another number of branches"
    return None
