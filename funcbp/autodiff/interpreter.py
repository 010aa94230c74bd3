"""The walk: evaluate a jaxpr forward keeping what the rules need, then run it backward.

``forward`` evaluates every equation with ordinary ``bind`` calls (so it works eagerly, under
``jax.jit``, under ``jax.vmap`` and under another differentiation), records which variables
depend on a differentiable input ("active" variables) and keeps the residuals that forward
rules return. ``backward`` walks the equations in reverse, pops each output cotangent once it is
used, applies the primitive's VJP rule and accumulates the input cotangents. Zero cotangents are
``None`` throughout: nothing is materialised for unused outputs, integer values or inputs that
do not depend on what is being differentiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core

from funcbp.autodiff.rules import FORWARD_RULES, VJP_RULES, check_complex, rule_for

__all__ = ["Record", "backward", "forward", "is_differentiable", "where"]


@dataclass
class Record:
    """What the forward pass of one jaxpr leaves for its backward pass."""

    jaxpr: core.Jaxpr
    env: dict[Any, Any]
    active: set[Any]
    residuals: dict[int, Any] = field(default_factory=dict)


def is_differentiable(aval: Any) -> bool:
    """True for float and complex avals: the only values a cotangent can flow into."""
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def where(eqn: core.JaxprEqn) -> str:
    """A short 'file:line (function)' for an equation, for error messages."""
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - best effort only
        return "unknown location"


def _read(env: dict, v: Any) -> Any:
    return v.val if isinstance(v, core.Literal) else env[v]


def eval_eqn(eqn: core.JaxprEqn, invals: list[Any]) -> list[Any]:
    """Evaluates one equation with ``bind``, as ``jax.core.eval_jaxpr`` does."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    out = eqn.primitive.bind(*invals, **bind_params)
    return list(out) if eqn.primitive.multiple_results else [out]


def forward(jaxpr: core.Jaxpr, consts: list[Any], args: list[Any],
            active_in: list[bool]) -> tuple[list[Any], Record]:
    """Evaluates ``jaxpr`` on ``consts`` and ``args``; ``active_in[i]`` marks differentiable args.

    Returns the outputs and the :class:`Record` that :func:`backward` consumes.
    """
    env: dict[Any, Any] = {}
    active: set[Any] = set()
    record = Record(jaxpr, env, active)
    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, x, a in zip(jaxpr.invars, args, active_in, strict=True):
        env[v] = x
        if a and is_differentiable(v.aval):
            active.add(v)
    for i, eqn in enumerate(jaxpr.eqns):
        invals = [_read(env, v) for v in eqn.invars]
        needs = tuple(not isinstance(v, core.Literal) and v in active for v in eqn.invars)
        fwd = FORWARD_RULES.get(eqn.primitive)
        if any(needs) and fwd is not None:
            outs, record.residuals[i] = fwd(*invals, needs=needs, **eqn.params)
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
        else:
            outs = eval_eqn(eqn, invals)
        for v, x in zip(eqn.outvars, outs, strict=True):
            env[v] = x
        if any(needs):
            float_outs = [v for v in eqn.outvars if is_differentiable(v.aval)]
            if float_outs:
                if eqn.primitive not in VJP_RULES:
                    rule_for(eqn.primitive, where(eqn))  # raises UnsupportedPrimitiveError
                check_complex(eqn.primitive, [v.aval for v in (*eqn.invars, *eqn.outvars)],
                              where(eqn))
            active.update(float_outs)
    return [_read(env, v) for v in jaxpr.outvars], record


def backward(record: Record, cts_out: list[Any], observer: Any = None) -> list[Any]:
    """Pulls the output cotangents ``cts_out`` back to the jaxpr's inputs (None = zero).

    ``observer``, if given, is called as ``observer(eqn, cts_out, cts_in)`` after each rule is
    applied (``cts_in`` with None where no cotangent flows); ``funcbp.explain`` uses it.
    """
    jaxpr, env, active = record.jaxpr, record.env, record.active
    cotangents: dict[Any, Any] = {}
    for v, ct in zip(jaxpr.outvars, cts_out, strict=True):
        accumulate(cotangents, active, v, ct, "the function's output")
    for i in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[i]
        cts = [cotangents.pop(v, None) for v in eqn.outvars]
        if all(ct is None for ct in cts):
            continue  # nothing flows back through this equation
        rule = rule_for(eqn.primitive, where(eqn))
        invals = [_read(env, v) for v in eqn.invars]
        needs = tuple(not isinstance(v, core.Literal) and v in active for v in eqn.invars)
        outs = [env[v] for v in eqn.outvars]
        kwargs = dict(eqn.params, needs=needs)
        if i in record.residuals:
            kwargs["res"] = record.residuals[i]
        if eqn.primitive.multiple_results:
            cts_in = rule(cts, *invals, out=outs, **kwargs)
        else:
            cts_in = rule(cts[0], *invals, out=outs[0], **kwargs)
        if len(cts_in) != len(eqn.invars):
            raise RuntimeError(
                f"the VJP rule for '{eqn.primitive.name}' returned {len(cts_in)} cotangents "
                f"for {len(eqn.invars)} inputs; a rule returns one per input (None for none)")
        computed = []
        for v, ct, need in zip(eqn.invars, cts_in, needs, strict=True):
            if need and ct is not None:
                if callable(ct):
                    ct = ct()  # rules may defer work that only some inputs need
                accumulate(cotangents, active, v, ct, f"the '{eqn.primitive.name}' rule")
            computed.append(ct if need and not callable(ct) else None)
        if observer is not None:
            observer(eqn, cts, computed)
    return [cotangents.pop(v, None) if v in active else None for v in jaxpr.invars]


def accumulate(cotangents: dict, active: set, v: Any, ct: Any, source: str) -> None:
    """Adds ``ct`` into ``v``'s cotangent; skips literals, inactive variables and ``None``."""
    if ct is None or isinstance(v, core.Literal) or v not in active:
        return
    aval = v.aval
    if np.shape(ct) != aval.shape:
        raise ValueError(
            f"{source} produced a cotangent of shape {np.shape(ct)} for a value of shape "
            f"{aval.shape}; this is a bug in that VJP rule")
    if jnp.result_type(ct) != aval.dtype:
        ct = lax.convert_element_type(ct, aval.dtype)
    prev = cotangents.get(v)
    cotangents[v] = ct if prev is None else lax.add(prev, ct)


def zeros_like_aval(aval: Any) -> jax.Array:
    """Materialises a zero of ``aval``'s shape and dtype (only where an API must return one)."""
    return lax.full(aval.shape, 0, aval.dtype)
