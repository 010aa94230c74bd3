"""Which value carries the example axis, and where: a static pass over a jaxpr.

Per-example quantities need, for every variable of the traced model, the position of the
example (batch) axis, or ``None`` for values that do not depend on which example they serve
(parameters, constants, things computed from them). One rule per primitive maps the axes of an
equation's inputs to those of its outputs; sub-jaxprs (jit, scan, cond, custom_jvp/vjp, remat)
are analysed by recursion. An equation that sums over, reshuffles or otherwise mixes the
example axis of a value that depends on the parameters (BatchNorm in training mode: a mean over
the batch) makes the output :data:`MIXED`; per-example quantities stop there with an error
naming the primitive and the user's line.

The same pass records, for ``diag_hessian``, which parameter leaves each value depends on, so
that products of two values that both depend on one parameter (whose cross terms reach the
Hessian's diagonal) are refused instead of silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from jax.extend import core

from funcbp.autodiff import interpreter

__all__ = ["MIXED", "Analysis", "BatchMixingError", "analyze"]


class _Mixed:
    def __repr__(self) -> str:
        return "MIXED"


#: The axis of a value in which examples have been combined (or whose axis is unknown).
MIXED: Any = _Mixed()


class BatchMixingError(ValueError):
    """A per-example quantity was asked of a model that combines examples (e.g. BatchNorm in
    training mode) at the equation named in the message."""


@dataclass
class Analysis:
    """Batch axes, activity and parameter dependencies of one jaxpr's variables."""

    jaxpr: Any
    axes: dict = field(default_factory=dict)       # var -> int | None | MIXED
    active: set = field(default_factory=set)       # vars that depend on a parameter
    deps: dict = field(default_factory=dict)       # var -> frozenset of parameter leaf indices
    params: dict = field(default_factory=dict)     # var -> parameter leaf index (inputs only)
    uses: dict = field(default_factory=dict)       # var -> number of equations reading it
    subs: dict = field(default_factory=dict)       # (eqn index, name) -> Analysis
    mixing: list = field(default_factory=list)     # (eqn, reason) where an active value mixes

    def axis(self, v: Any) -> Any:
        if isinstance(v, core.Literal):
            return None
        return self.axes.get(v)


def _is_var(v: Any) -> bool:
    return not isinstance(v, core.Literal)


_ELEMENTWISE = {
    "add", "sub", "mul", "div", "rem", "pow", "max", "min", "neg", "sign", "floor", "ceil",
    "round", "is_finite", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin",
    "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh", "atanh",
    "sqrt", "rsqrt", "cbrt", "integer_pow", "abs", "erf", "erfc", "erf_inv", "lgamma",
    "digamma", "select_n", "convert_element_type", "eq", "ne", "lt", "le", "gt", "ge", "and",
    "or", "not", "xor", "nextafter", "clamp", "copy", "copy_p", "real", "imag", "conj",
    "square", "reduce_precision", "population_count", "clz", "shift_left",
    "shift_right_logical", "shift_right_arithmetic", "polygamma", "igamma", "igammac",
    "bessel_i0e", "bessel_i1e", "funcbp_tag", "stop_gradient", "optimization_barrier",
    "name", "pvary", "device_put", "sharding_constraint", "logaddexp",
}
_REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
           "reduce_xor", "argmax", "argmin", "reduce_precision_sum"}
_CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
_CALLS = {"pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
          "custom_jvp_call",
          "custom_vjp_call", "custom_vjp_call_jaxpr"}


def analyze(jaxpr: Any, in_axes: list, in_active: list, in_params: list | None = None,
            in_deps: list | None = None) -> Analysis:
    """Propagates batch axes, activity and parameter dependencies through ``jaxpr``.

    Args:
      jaxpr: a ``core.Jaxpr``.
      in_axes: per invar, the example axis (int) or None.
      in_active: per invar, whether it depends on a parameter.
      in_params: per invar, the parameter leaf index it *is* (or None).
      in_deps: per invar, the parameter leaf indices it depends on.

    Returns:
      The :class:`Analysis` (``mixing`` lists active values whose example axis was mixed).
    """
    an = Analysis(jaxpr)
    n = len(jaxpr.invars)
    in_params = in_params or [None] * n
    in_deps = in_deps or [frozenset([p]) if p is not None else frozenset() for p in in_params]
    for v in jaxpr.constvars:
        an.axes[v] = None
        an.deps[v] = frozenset()
    for v, a, act, p, d in zip(jaxpr.invars, in_axes, in_active, in_params, in_deps,
                               strict=True):
        an.axes[v] = a
        an.deps[v] = d
        if act and interpreter.is_differentiable(v.aval):
            an.active.add(v)
        if p is not None:
            an.params[v] = p
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if _is_var(v):
                an.uses[v] = an.uses.get(v, 0) + 1
        ax_in = [an.axis(v) for v in eqn.invars]
        active_in = [_is_var(v) and v in an.active for v in eqn.invars]
        deps = frozenset().union(*(an.deps.get(v, frozenset()) for v in eqn.invars
                                   if _is_var(v)))
        out_active = any(active_in) and interpreter.propagates(eqn)
        if MIXED in ax_in:
            ax_out = [MIXED] * len(eqn.outvars)
        elif all(a is None for a in ax_in):
            ax_out = [None] * len(eqn.outvars)
            _maybe_recurse(an, i, eqn, ax_in, active_in)
        else:
            ax_out = _rule(an, i, eqn, ax_in, active_in)
        for v, a in zip(eqn.outvars, ax_out, strict=True):
            an.axes[v] = a
            an.deps[v] = deps
            if out_active and interpreter.is_differentiable(v.aval):
                an.active.add(v)
                if a is MIXED and not any(e is eqn for e, _ in an.mixing):
                    an.mixing.append((eqn, _why(eqn, ax_in)))
    for v in jaxpr.outvars:
        if _is_var(v):
            an.uses[v] = an.uses.get(v, 0) + 1
    return an


def _why(eqn: Any, ax_in: list) -> str:
    axes = ", ".join("-" if a is None else str(a) for a in ax_in)
    return f"'{eqn.primitive.name}' with input example axes ({axes})"


def _join(axes: list) -> Any:
    """The common example axis of values that meet (None: unbatched; MIXED on disagreement)."""
    found = {a for a in axes if a is not None}
    if not found:
        return None
    if len(found) > 1:
        return MIXED
    return found.pop()


def _sub_jaxprs(eqn: Any) -> list:
    out = []
    for k, p in eqn.params.items():
        for j, sub in enumerate(p if isinstance(p, (tuple, list)) else (p,)):
            if isinstance(sub, core.ClosedJaxpr):
                out.append((f"{k}{j}", sub.jaxpr))
            elif isinstance(sub, core.Jaxpr):
                out.append((f"{k}{j}", sub))
    return out


def _sub(an: Analysis, i: int, eqn: Any, name: str, jaxpr: Any, in_axes: list,
         in_active: list, outer_vars: list | None = None) -> Analysis:
    """Analyses a sub-jaxpr; its inputs are parameters where the outer value is one used once."""
    params, deps = [None] * len(jaxpr.invars), [frozenset()] * len(jaxpr.invars)
    if outer_vars is not None:
        for k, v in enumerate(outer_vars):
            if _is_var(v):
                deps[k] = an.deps.get(v, frozenset())
                if v in an.params:
                    params[k] = an.params[v]
    sub = analyze(jaxpr, in_axes, in_active, params, deps)
    an.subs[(i, name)] = sub
    for eqn_in, why in sub.mixing:
        an.mixing.append((eqn_in, why))
    return sub


def _maybe_recurse(an: Analysis, i: int, eqn: Any, ax_in: list, active_in: list) -> None:
    """Unbatched calls are still analysed inside (parameter uses, Hessian checks)."""
    name = eqn.primitive.name
    if name in _CALLS:
        jaxpr = _call_jaxpr(eqn)
        if jaxpr is not None and len(jaxpr.invars) == len(eqn.invars):
            _sub(an, i, eqn, "call", jaxpr, ax_in, active_in, list(eqn.invars))


def _call_jaxpr(eqn: Any) -> Any:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if isinstance(j, core.ClosedJaxpr):
            return j.jaxpr
        if isinstance(j, core.Jaxpr):
            return j
    return None


def _rule(an: Analysis, i: int, eqn: Any, ax_in: list, active_in: list) -> list:
    name = eqn.primitive.name
    p = eqn.params
    nout = len(eqn.outvars)
    shapes_in = [getattr(v.aval, "shape", ()) for v in eqn.invars]
    out_shapes = [getattr(v.aval, "shape", ()) for v in eqn.outvars]
    batched = [a for a in ax_in if a is not None]
    a = batched[0]

    if name in _ELEMENTWISE:
        ax = _join(ax_in)
        if ax is MIXED:
            return [MIXED] * nout
        # an input whose example axis has size one broadcasts across examples: mixing
        out_rank = len(out_shapes[0])
        for x, s in zip(ax_in, shapes_in, strict=True):
            if x is not None and len(s) != out_rank:
                return [MIXED] * nout
        return [ax] * nout
    if name == "broadcast_in_dim":
        return [p["broadcast_dimensions"][a]] + [None] * (nout - 1)
    if name == "reshape":
        return [_reshape_axis(shapes_in[0], out_shapes[0], a)]
    if name == "squeeze":
        dims = [d % len(shapes_in[0]) for d in p["dimensions"]]
        return [MIXED if a in dims else a - sum(d < a for d in dims)]
    if name == "expand_dims":
        dims = sorted(p["dimensions"])
        for d in dims:
            if d <= a:
                a += 1
        return [a]
    if name == "transpose":
        return [list(p["permutation"]).index(a)]
    if name in _REDUCE:
        axes = tuple(p["axes"])
        return [MIXED if a in axes else a - sum(d < a for d in axes)] * nout
    if name in _CUMULATIVE:
        return [MIXED if p["axis"] == a else a]
    if name == "sort":
        ax = _join(ax_in)
        return [MIXED if ax is MIXED or p["dimension"] == ax else ax] * nout
    if name == "rev":
        return [MIXED if a in p["dimensions"] else a]
    if name in ("slice",):
        full = (p["start_indices"][a] == 0 and p["limit_indices"][a] == shapes_in[0][a]
                and (p["strides"] is None or p["strides"][a] == 1))
        return [a if full else MIXED]
    if name == "pad":
        if ax_in[1] is not None:
            return [MIXED]
        return [a if tuple(p["padding_config"][a]) == (0, 0, 0) else MIXED]
    if name == "concatenate":
        ax = _join(ax_in)
        return [MIXED if ax is MIXED or ax == p["dimension"] else ax]
    if name == "stack":
        ax = _join(ax_in)
        if ax is MIXED:
            return [MIXED]
        return [ax + 1 if ax >= p["axis"] else ax]
    if name == "unstack":
        return [MIXED if p["axis"] == a else a - (a > p["axis"])] * nout
    if name == "tile":
        return [a if p["reps"][a] == 1 else MIXED]
    if name == "split":
        return [MIXED if p["axis"] == a else a] * nout
    if name == "dynamic_slice":
        if any(x is not None for x in ax_in[1:]) or ax_in[0] is None:
            return [MIXED]
        return [a if p["slice_sizes"][a] == shapes_in[0][a] else MIXED]
    if name == "dynamic_update_slice":
        if any(x is not None for x in ax_in[2:]):
            return [MIXED]
        ax = _join(ax_in[:2])
        if ax is MIXED or (ax_in[1] is not None and ax_in[0] is None
                           and shapes_in[1][ax] != shapes_in[0][ax]):
            return [MIXED]
        if ax_in[1] is None and ax_in[0] is not None:
            return [ax]
        return [ax if shapes_in[1][ax] == shapes_in[0][ax] else MIXED]
    if name == "dot_general":
        return [_dot_axis(p["dimension_numbers"], shapes_in, ax_in)]
    if name == "conv_general_dilated":
        lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
        if ax_in[1] is not None or ax_in[0] != lhs_spec[0] or p["batch_group_count"] != 1:
            return [MIXED]
        return [out_spec[0]]
    if name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min",
                "reduce_window"):
        return [_window_axis(p, ax_in, nout)] * nout
    if name == "gather":
        return [_gather_axis(p["dimension_numbers"], shapes_in, out_shapes[0], ax_in)]
    if name == "iota":
        return [None]
    if name == "scan":
        return _scan_axes(an, i, eqn, ax_in, active_in)
    if name == "cond":
        if ax_in[0] is not None:
            return [MIXED] * nout
        outs = []
        for b, br in enumerate(p["branches"]):
            sub = _sub(an, i, eqn, f"branch{b}", br.jaxpr, ax_in[1:], active_in[1:],
                       list(eqn.invars[1:]))
            outs.append([sub.axis(v) for v in br.jaxpr.outvars])
        return [_join(list(col)) for col in zip(*outs, strict=True)]
    if name == "while":
        return [MIXED] * nout
    if name in _CALLS:
        jaxpr = _call_jaxpr(eqn)
        if jaxpr is None or len(jaxpr.invars) != len(eqn.invars):
            return [MIXED] * nout
        sub = _sub(an, i, eqn, "call", jaxpr, ax_in, active_in, list(eqn.invars))
        return [sub.axis(v) for v in jaxpr.outvars]
    return [MIXED] * nout


def _reshape_axis(shape_in: tuple, shape_out: tuple, a: int) -> Any:
    before = math.prod(shape_in[:a])
    size = shape_in[a]
    acc = 1
    for k, d in enumerate(shape_out):
        if acc == before and d == size:
            return k
        acc *= d
        if acc > before:
            break
    return MIXED


def _dot_axis(dims: Any, shapes: list, ax_in: list) -> Any:
    (lc, rc), (lb, rb) = dims
    la, ra = ax_in
    nb = len(lb)
    lfree = [d for d in range(len(shapes[0])) if d not in lc and d not in lb]
    rfree = [d for d in range(len(shapes[1])) if d not in rc and d not in rb]
    out = []
    if la is not None:
        if la in lc:
            return MIXED
        out.append(lb.index(la) if la in lb else nb + lfree.index(la))
    if ra is not None:
        if ra in rc:
            return MIXED
        out.append(rb.index(ra) if ra in rb else nb + len(lfree) + rfree.index(ra))
    return out[0] if len(set(out)) == 1 else MIXED


def _window_axis(p: dict, ax_in: list, nout: int) -> Any:
    n_ops = len(ax_in) // 2 if "jaxpr" in p and len(ax_in) > 1 else len(ax_in)
    ax = _join(ax_in[:n_ops])
    if ax is MIXED or any(x is not None for x in ax_in[n_ops:]):
        return MIXED
    ok = (p["window_dimensions"][ax] == 1 and p["window_strides"][ax] == 1
          and tuple(p["padding"][ax]) == (0, 0)
          and p.get("base_dilation", (1,) * (ax + 1))[ax] == 1
          and p.get("window_dilation", (1,) * (ax + 1))[ax] == 1)
    return ax if ok else MIXED


def _gather_axis(dn: Any, shapes: list, out_shape: tuple, ax_in: list) -> Any:
    oa, ia = ax_in
    operand_batching = tuple(getattr(dn, "operand_batching_dims", ()))
    indices_batching = tuple(getattr(dn, "start_indices_batching_dims", ()))
    n_idx = len(shapes[1])
    index_vector_dim = n_idx - 1  # jax always puts the index vector last
    idx_batch = [d for d in range(n_idx) if d != index_vector_dim]
    out_batch = [d for d in range(len(out_shape)) if d not in dn.offset_dims]
    if ia is not None:
        if ia == index_vector_dim:
            return MIXED
        k = out_batch[idx_batch.index(ia)]
        if oa is None:
            return k
        # both batched: only through paired batching dims (take_along_axis per example)
        if oa in operand_batching and indices_batching[operand_batching.index(oa)] == ia:
            return k
        return MIXED
    if oa in dn.start_index_map or oa in dn.collapsed_slice_dims or oa in operand_batching:
        return MIXED
    kept = [d for d in range(len(shapes[0]))
            if d not in dn.collapsed_slice_dims and d not in operand_batching]
    return dn.offset_dims[kept.index(oa)]


def _scan_axes(an: Analysis, i: int, eqn: Any, ax_in: list, active_in: list) -> list:
    p = eqn.params
    nc, nk = p["num_consts"], p["num_carry"]
    body = p["jaxpr"].jaxpr
    consts, carry, xs = ax_in[:nc], list(ax_in[nc:nc + nk]), ax_in[nc + nk:]
    if any(x == 0 for x in xs):
        return [MIXED] * len(eqn.outvars)  # scanning over the example axis itself
    xs_body = [None if x is None else x - 1 for x in xs]
    act = list(active_in)
    for _ in range(len(carry) + 2):
        sub = _sub(an, i, eqn, "body", body, [*consts, *carry, *xs_body], act,
                   list(eqn.invars))
        out_carry = [sub.axis(v) for v in body.outvars[:nk]]
        new = [_join([c, o]) for c, o in zip(carry, out_carry, strict=True)]
        new_act = act[:nc] + [a or (_is_var(v) and v in sub.active)
                              for a, v in zip(act[nc:nc + nk], body.outvars[:nk],
                                              strict=True)] + act[nc + nk:]
        if new == carry and new_act == act:
            break
        carry, act = new, new_act
    ys = [sub.axis(v) for v in body.outvars[nk:]]
    return [*carry, *[None if y is None else (MIXED if y is MIXED else y + 1) for y in ys]]
