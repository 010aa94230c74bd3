"""The Hessian's residual terms, and where the exact diagonal Hessian can be promised.

The Hessian of ``L(theta)`` is the GGN ``J^T H_L J`` plus one *residual* term per nonlinear
equation: at ``y = phi(x)`` applied elementwise, ``R = diag(g_y * phi''(x))`` with ``g_y`` the
gradient arriving at ``y``, carried back to the parameters by the same Jacobians as everything
else (BackPACK's Hessian backpropagation, Dangel et al. 2020). ``R`` is split into its positive
and negative parts, ``R = P P^T - N N^T`` with ``P = diag(sqrt(max(r, 0)))``, and each becomes a
group of columns (one per feature of an example) travelling with the GGN's. ``phi''`` is
funcbp's own VJP applied twice to the equation (``funcbp.grad`` of ``funcbp.grad``), so any
elementwise primitive or elementwise ``custom_jvp`` function (softplus, gelu...) has one.

Exactness needs every other equation to add nothing to the diagonal: linear and piecewise
linear equations (dense, conv, add, max-pooling, relu...) add nothing; a product of two values
that depend on the same parameter (a weight used twice, ``h_t = tanh(W h_{t-1})``) adds cross
terms that do reach the diagonal. Such equations, nonlinear equations that are not elementwise
(softmax, normalisation inside the model), nonlinear functions of parameters and loops with a
nonlinear body are refused with :class:`HessianUnsupportedError`, naming the primitive and line.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.extend import core

from funcbp.autodiff import interpreter
from funcbp.autodiff.extend.batch_axes import _ELEMENTWISE, Analysis, _call_jaxpr

__all__ = ["HessianUnsupportedError", "check", "residual_columns", "residual_sites"]


class HessianUnsupportedError(NotImplementedError):
    """``diag_hessian`` cannot be exact for this model: the message names the equation."""


# Linear (or piecewise linear) in each differentiated operand when the others are held fixed.
_LINEAR = {
    "add", "sub", "neg", "mul", "convert_element_type", "copy", "copy_p", "reduce_precision",
    "select_n", "max", "min", "abs", "funcbp_tag", "name", "optimization_barrier", "pvary",
    "sharding_constraint", "device_put", "real", "imag", "conj", "clamp", "sign", "floor",
    "ceil", "round", "stop_gradient", "broadcast_in_dim", "reshape", "squeeze", "expand_dims",
    "transpose", "rev", "slice", "pad", "concatenate", "split", "dynamic_slice",
    "dynamic_update_slice", "gather", "scatter-add", "scatter_add", "reduce_sum", "reduce_max",
    "reduce_min", "cumsum", "cummax", "cummin", "dot_general", "conv_general_dilated",
    "reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window", "sort",
    "div", "argmax", "argmin", "iota", "stack", "unstack", "tile",
}
# Bilinear: two differentiated operands meet; their cross term matters if they share a parameter.
_BILINEAR = {"mul", "dot_general", "conv_general_dilated"}
_CALLS = {"pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
          "custom_jvp_call"}
_RECURSE = {"pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint"}


def _all_eqns(jaxpr: Any):
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if isinstance(sub, core.ClosedJaxpr):
                    yield from _all_eqns(sub.jaxpr)
                elif isinstance(sub, core.Jaxpr):
                    yield from _all_eqns(sub)


def _body_is(jaxpr: Any, allowed: set) -> bool:
    return all(e.primitive.name in allowed or e.primitive.name in _CALLS
               for e in _all_eqns(jaxpr))


def _elementwise_call(eqn: Any) -> bool:
    jaxpr = _call_jaxpr(eqn)
    return jaxpr is not None and _body_is(jaxpr, _ELEMENTWISE)


def _linear_eqn(eqn: Any, active: list) -> bool:
    name = eqn.primitive.name
    if name == "div":
        return not active[1]  # linear in the numerator only
    if name in _LINEAR:
        return True
    if name in _CALLS:
        jaxpr = _call_jaxpr(eqn)
        return jaxpr is not None and _body_is(jaxpr, _LINEAR - {"div"})
    return False


def _classify(an: Analysis, i: int, eqn: Any) -> tuple[str, int]:
    """("skip" | "linear" | "residual" | "recurse", operand) for one equation, or raises."""
    active = [not isinstance(v, core.Literal) and v in an.active for v in eqn.invars]
    n_active = sum(active)
    if n_active == 0 or not any(interpreter.is_differentiable(v.aval) for v in eqn.outvars):
        return "skip", -1
    if not interpreter.propagates(eqn):
        return "skip", -1
    name = eqn.primitive.name
    where = interpreter.where(eqn)
    if name in _RECURSE and (i, "call") in an.subs:
        return "recurse", -1
    if _linear_eqn(eqn, active):
        if name in _BILINEAR and n_active >= 2:
            deps = [an.deps.get(v, frozenset()) for v, a in zip(eqn.invars, active,
                                                                strict=True) if a]
            if deps[0] & deps[1]:
                raise HessianUnsupportedError(
                    f"diag_hessian: '{name}' at {where} multiplies two values that both depend "
                    "on the same parameter (a weight used twice, a recurrence), so cross terms "
                    "reach the Hessian's diagonal and funcbp does not propagate them; use "
                    "diag_ggn, or compute this Hessian with funcbp.grad twice")
        return "linear", -1
    if n_active == 1:
        j = active.index(True)
        x = eqn.invars[j]
        ok_shape = (len(eqn.outvars) == 1
                    and tuple(eqn.outvars[0].aval.shape) == tuple(x.aval.shape))
        elementwise = name in _ELEMENTWISE or (name in _CALLS and _elementwise_call(eqn))
        if ok_shape and elementwise and an.axis(x) is not None:
            return "residual", j
        if ok_shape and elementwise:
            raise HessianUnsupportedError(
                f"diag_hessian: '{name}' at {where} applies a nonlinear function to a value "
                "computed from the parameters alone; funcbp's Hessian backpropagation handles "
                "nonlinearities of per-example values only. Use diag_ggn, or funcbp.grad twice")
    raise HessianUnsupportedError(
        f"diag_hessian: '{name}' at {where} is nonlinear and not elementwise in one "
        "differentiated input, so its second-derivative term cannot be factorised exactly here. "
        "Use diag_ggn (which needs no second derivatives of the model), or funcbp.grad twice")


def check(an: Analysis) -> None:
    """Raises :class:`HessianUnsupportedError` where the diagonal Hessian cannot be exact, and
    records each analysis' residual sites (see :func:`residual_sites`)."""
    sites: dict = {}
    for i, eqn in enumerate(an.jaxpr.eqns):
        kind, j = _classify(an, i, eqn)
        if kind == "residual":
            sites[i] = j
        elif kind == "recurse":
            check(an.subs[(i, "call")])
    an.residual = sites  # type: ignore[attr-defined]


def has_residuals(an: Analysis) -> bool:
    """Whether any equation (nested calls included) creates residual columns."""
    return bool(residual_sites(an)) or any(
        has_residuals(sub) for key, sub in an.subs.items() if hasattr(sub, "residual"))


def residual_sites(an: Analysis) -> dict:
    """Equation index -> operand whose residual columns that equation creates."""
    if not hasattr(an, "residual"):
        check(an)
    return an.residual  # type: ignore[attr-defined]


def second_derivative(eqn: Any, invals: list, j: int) -> Any:
    """``phi''(x)`` elementwise for the equation ``y = phi(x)`` in operand ``j``, with funcbp's
    own VJP applied twice (no jax autodiff)."""
    from funcbp.autodiff.api import grad

    def phi(z):
        vals = list(invals)
        vals[j] = z
        return interpreter.eval_eqn(eqn, vals)[0]

    def dphi(z):
        return grad(lambda u: jnp.sum(phi(u)))(z)

    with interpreter.carrier(None):
        return grad(lambda z: jnp.sum(dphi(z)))(jnp.asarray(invals[j]))


def residual_columns(eqn: Any, j: int, invals: list, axis: int, pack: Any, tag: str) -> dict:
    """The groups ``tag+`` and ``tag-`` of residual columns for operand ``j``.

    Column ``k`` of example ``i`` is ``sqrt(max(+-r_ik, 0)) e_k``: one column per feature of an
    example, so the group is ``(D, *x.shape)`` with ``D`` the features per example.
    """
    if pack is None or "grad" not in pack.groups:
        return {}
    x = jnp.asarray(invals[j])
    r = pack.groups["grad"][0] * second_derivative(eqn, invals, j)
    moved = jnp.moveaxis(r, axis, 0)
    B = moved.shape[0]
    rest = moved.shape[1:]
    flat = moved.reshape(B, -1)
    D = flat.shape[1]
    eye = jnp.eye(D, dtype=x.dtype)
    out = {}
    for sign, part in (("+", jnp.maximum(flat, 0)), ("-", jnp.maximum(-flat, 0))):
        cols = eye[:, None, :] * jnp.sqrt(part)[None]          # (D, B, D)
        cols = cols.reshape(D, B, *rest)
        out[tag + sign] = jnp.moveaxis(cols, 1, axis + 1)
    return out
