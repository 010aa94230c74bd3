"""Rules for primitives that call sub-jaxprs: nested ``jit``, custom derivatives, remat.

- ``jit``: the forward recurses into the interpreter and keeps the inner record; the backward
  walks it. (Inside an outer ``jax.jit`` the inner call is simply inlined.)
- ``custom_jvp_call``: the user's JVP rule is honoured. A JVP is linear in its tangents, so its
  transpose is obtained by running funcbp's own reverse walk over the JVP's jaxpr with respect
  to the tangent inputs (``jax.linear_transpose`` is never called).
- ``custom_vjp_call``: the user's ``fwd`` runs in the forward pass and ``bwd`` in the backward.
- ``remat`` (``jax.checkpoint``): only the block's inputs are kept; the backward recomputes the
  block's forward behind an optimisation barrier (so XLA cannot merge the recomputation with the
  original forward), then walks it.
"""

from __future__ import annotations

import contextvars
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import ad_checkpoint, pjit
from jax._src import custom_derivatives as cd

from funcbp.autodiff import compat
from funcbp.autodiff.rules import (
    FORWARD_RULES,
    UnsupportedPrimitiveError,
    register_vjp_rule,
    vjp_rule,
)

__all__: list[str] = []


def _interp():
    from funcbp.autodiff import interpreter  # the rules package is imported by the interpreter

    return interpreter


def _is_zero(ct):
    return ct is None or type(ct).__name__ in ("Zero", "SymbolicZero")


def _instantiate(ct, aval):
    return _interp().zeros_like_aval(aval) if ct is None else ct


# --- nested jit -------------------------------------------------------------------------------

def jit_forward(*args, jaxpr, needs, **params):
    """Evaluates the called jaxpr with the interpreter, keeping its record for the backward."""
    return _interp().forward(jaxpr.jaxpr, list(jaxpr.consts), list(args), list(needs))


def jit_vjp(cts, *args, res, **params):
    """Walks the called jaxpr backward."""
    return tuple(_interp().backward(res, list(cts)))


register_vjp_rule(pjit.jit_p, jit_vjp, forward=jit_forward, handles_complex=True)


def _zero_tangent(aval):
    tangent_aval = aval.to_tangent_aval()
    if tangent_aval.dtype == jax.dtypes.float0:
        return np.zeros(tangent_aval.shape, jax.dtypes.float0)
    return _interp().zeros_like_aval(tangent_aval)


# --- custom_jvp -------------------------------------------------------------------------------

# True while the forward walk evaluates a custom JVP rule's jaxpr, whose active values are all
# tangents (see custom_jvp_call_forward).
_IN_JVP_RULE: contextvars.ContextVar[bool] = contextvars.ContextVar("funcbp_in_jvp_rule",
                                                                     default=False)


class _PlainCall(NamedTuple):
    """Residuals of a custom_jvp call differentiated through its own body."""

    record: Any

def custom_jvp_call_forward(*args, needs, call_jaxpr, jvp_jaxpr_fun, num_consts,
                            symbolic_zeros, **params):
    """Evaluates the user's JVP jaxpr at zero tangents and keeps its record.

    The primal outputs are taken from the JVP's own primal half, so the backward walks the same
    values the forward produced: nothing is recomputed, and only the primal values that the
    JVP's tangent half reads (e.g. relu's input sign) stay live until the backward pass.
    """
    interp = _interp()
    if _IN_JVP_RULE.get():
        # A custom_jvp function applied to tangents inside another custom JVP rule (e.g. a
        # linear f whose rule is ``f(t)``): that part is linear, and jax transposes the
        # function's own body there, not its rule; doing the same avoids recursing forever.
        outs, record = interp.forward(call_jaxpr.jaxpr, list(call_jaxpr.consts), list(args),
                                      list(needs))
        return outs, _PlainCall(record)
    primals = list(args[num_consts:])
    in_avals = call_jaxpr.in_avals[num_consts:]
    wanted = [bool(n) and interp.is_differentiable(aval)
              for n, aval in zip(needs[num_consts:], in_avals, strict=True)]
    # Rules written without symbolic_zeros expect a (zero) tangent for every input.
    in_zeros = [not w for w in wanted] if symbolic_zeros else [False] * len(primals)
    jvp_jaxpr, jvp_consts, out_zeros = jvp_jaxpr_fun.call_wrapped(*in_zeros)
    kept = [i for i, z in enumerate(in_zeros) if not z]
    tangents = [_zero_tangent(in_avals[i]) for i in kept]
    active = [False] * len(primals) + [wanted[i] for i in kept]
    token = _IN_JVP_RULE.set(True)
    try:
        outs, record = interp.forward(jvp_jaxpr, list(jvp_consts), primals + tangents, active)
    finally:
        _IN_JVP_RULE.reset(token)
    n_out = len(out_zeros)
    return outs[:n_out], (record, out_zeros, kept, wanted, len(primals))


def custom_jvp_call_vjp(cts, *args, res, num_consts, **params):
    """Transposes the user's custom JVP with funcbp's own walk.

    The JVP jaxpr maps (primals, tangents) to (primal outputs, tangent outputs) and is linear in
    the tangents. Walking its forward record (see :func:`custom_jvp_call_forward`) back from the
    output cotangents, placed on the tangent outputs, yields the transpose, i.e. the VJP,
    evaluated with the user's derivative.
    """
    if isinstance(res, _PlainCall):
        return tuple(_interp().backward(res.record, list(cts)))
    record, out_zeros, kept, wanted, n_primals = res
    nonzero_cts = [ct for ct, z in zip(cts, out_zeros, strict=True) if not z]
    cts_all = [None] * len(out_zeros) + nonzero_cts
    cts_tangents = _interp().backward(record, cts_all)[n_primals:]
    result = [None] * n_primals
    for i, ct in zip(kept, cts_tangents, strict=True):
        result[i] = ct if wanted[i] else None
    return (None,) * num_consts + tuple(result)


register_vjp_rule(cd.custom_jvp_call_p, custom_jvp_call_vjp, forward=custom_jvp_call_forward,
                  handles_complex=True)


# --- custom_vjp -------------------------------------------------------------------------------

def custom_vjp_call_forward(*args, needs, num_consts, out_trees, **params):
    """Runs the user's ``fwd``, returning the primal outputs and the user's residuals."""
    _, fwd, bwd = compat.custom_vjp_subfuns(
        dict(params, num_consts=num_consts, out_trees=out_trees))
    nonzeros = [False if i < num_consts else bool(n) for i, n in enumerate(needs)]
    fwd_in = [x for pair in zip(args, nonzeros, strict=True) for x in pair]
    res_and_outs = fwd.call_wrapped(*fwd_in)
    _, res_tree, input_fwds = out_trees()
    num_res_out = res_tree.num_leaves - sum(f is not None for f in input_fwds)
    res_out, outs = res_and_outs[:num_res_out], res_and_outs[num_res_out:]
    res_iter = iter(res_out)
    res = [next(res_iter) if f is None else args[f] for f in input_fwds]
    return list(outs), (res, bwd)


def custom_vjp_call_vjp(cts, *args, out, res, call_jaxpr, symbolic_zeros=False, **params):
    """Calls the user's ``bwd`` on the residuals and the output cotangents: zeros are
    instantiated, or passed as ``jax.custom_derivatives.SymbolicZero`` when the function was
    defined with ``symbolic_zeros=True``, as jax does."""
    residuals, bwd = res
    if symbolic_zeros:
        cts = [cd.SymbolicZero(aval.to_tangent_aval()) if ct is None else ct
               for ct, aval in zip(cts, call_jaxpr.out_avals, strict=True)]
    else:
        cts = [_instantiate(ct, aval) for ct, aval in zip(cts, call_jaxpr.out_avals,
                                                          strict=True)]
    cts_in = bwd.call_wrapped(*residuals, *cts)
    return tuple(None if _is_zero(ct) else ct for ct in cts_in)


register_vjp_rule(cd.custom_vjp_call_p, custom_vjp_call_vjp, forward=custom_vjp_call_forward,
                  handles_complex=True)


# --- remat / jax.checkpoint -------------------------------------------------------------------

def _kept_by_policy(jaxpr, policy) -> list[int]:
    """The block's equations whose outputs a ``jax.checkpoint`` policy saves.

    A policy is asked as jax asks it, ``policy(primitive, *input_avals, **params)``, and answers
    True/False or ``Saveable``/``Recompute``/``Offloadable``. Equations with residuals of their
    own (nested calls, loops) are always recomputed with their residuals.
    """
    if policy is None:
        return []
    kept = []
    for i, eqn in enumerate(jaxpr.eqns):
        if eqn.primitive in FORWARD_RULES:
            continue
        answer = policy(eqn.primitive, *[v.aval for v in eqn.invars], **eqn.params)
        if answer is True or type(answer).__name__ in ("SaveableType", "Offloadable"):
            kept.append(i)
    return kept


def remat_forward(*args, jaxpr, needs, policy=None, **params):
    """Computes the block's outputs with funcbp's forward walk, keeping only what the policy
    saves (nothing by default): the backward recomputes the rest from the block's inputs.

    The outputs come from the same walk a plain call would use (a custom_vjp inside runs its
    ``fwd``), so differentiating the gradient program again sees the same primal program as
    without the checkpoint, as in jax.
    """
    outs, record = _interp().forward(jaxpr, [], list(args), list(needs))
    saved = {i: [record.env[v] for v in jaxpr.eqns[i].outvars]
             for i in _kept_by_policy(jaxpr, policy)}
    return outs, saved


def remat_vjp(cts, *args, res, needs, jaxpr, prevent_cse=True, **params):
    """Recomputes the block's forward from its inputs (and the saved values), then walks it
    backward."""
    interp = _interp()
    args = list(args)
    if prevent_cse:
        # Without the barrier XLA would reuse the original forward values, defeating remat.
        float_idx = [i for i, a in enumerate(args) if interp.is_differentiable(jnp.asarray(a))]
        fenced = lax.optimization_barrier([args[i] for i in float_idx])
        for i, a in zip(float_idx, fenced, strict=True):
            args[i] = a
    _, record = interp.forward(jaxpr, [], args, list(needs), saved=res)
    return tuple(interp.backward(record, list(cts)))


register_vjp_rule(ad_checkpoint.remat_p, remat_vjp, forward=remat_forward, handles_complex=True)


@vjp_rule(lax.optimization_barrier_p if hasattr(lax, "optimization_barrier_p")
          else __import__("jax._src.lax.control_flow", fromlist=["x"]).optimization_barrier_p,
          handles_complex=True)
def optimization_barrier_vjp(cts, *args, **params):
    """The barrier is the identity on values; the cotangents pass through (behind a barrier)."""
    live = [i for i, ct in enumerate(cts) if ct is not None]
    fenced = lax.optimization_barrier([cts[i] for i in live]) if live else []
    out = [None] * len(cts)
    for i, ct in zip(live, fenced, strict=True):
        out[i] = ct
    return tuple(out)


for _prim in (pjit.sharding_constraint_p, getattr(pjit, "reshard_p", None)):
    if _prim is not None:
        register_vjp_rule(_prim, lambda ct, x, **params: (ct,), handles_complex=True)


# --- call_hi_primitive (custom_vjp under jax_custom_vjp3, and other hi-level primitives) ------

def _hi_primitive_p():
    try:
        from jax._src.hijax import call_hi_primitive_p
    except ImportError:  # a jax without hi-level primitives
        return None
    return call_hi_primitive_p


def call_hi_forward(*args, needs, **params):
    """Runs the primitive's own ``vjp_fwd`` (a custom_vjp's ``fwd``) and keeps its residuals."""
    _prim = compat.hi_primitive(params)
    in_nzs = _prim.in_tree.unflatten([bool(n) for n in needs])
    fwd_out = _prim.vjp_fwd(in_nzs, *_prim.in_tree.unflatten(list(args)))
    out, res = fwd_out[0], fwd_out[1]
    return list(_prim.out_tree.flatten_up_to(out)), res


def call_hi_vjp(cts, *args, res, **params):
    """Calls the primitive's own ``vjp_bwd_retval`` (a custom_vjp's ``bwd``) on the cotangents."""
    _prim = compat.hi_primitive(params)
    from jax._src import ad_util
    from jax._src.hijax import VJPHiPrimitive

    if type(_prim).vjp_bwd_retval is VJPHiPrimitive.vjp_bwd_retval:
        raise UnsupportedPrimitiveError(
            f"the hi-level primitive {type(_prim).__name__} only defines an accumulating "
            "vjp_bwd, which funcbp cannot call; give it a vjp_bwd_retval")
    cts = [ad_util.Zero(aval.to_tangent_aval()) if ct is None else ct
           for ct, aval in zip(cts, _prim.out_avals_flat, strict=True)]
    in_cts = _prim.vjp_bwd_retval(res, _prim.out_tree.unflatten(cts))
    flat = _prim.in_tree.flatten_up_to(in_cts)
    return tuple(None if _is_zero(ct) else ct for ct in flat)


if _hi_primitive_p() is not None:
    register_vjp_rule(_hi_primitive_p(), call_hi_vjp, forward=call_hi_forward,
                      handles_complex=True)


# --- more call-like primitives: name, closed_call, call, device_put, custom_vmap, linear_call --
#
# `custom_lin` has no rule on purpose: it is the linear half of a custom_vjp that jax.jvp or
# jax.linearize leaves in a jaxpr. Evaluating it raises jax's "can't apply forward-mode autodiff
# (jvp) to a custom_vjp function" and jax.grad refuses it too; only jax.linear_transpose
# consumes it. The walk refuses it with the hint at the end of this module.

from jax._src import core as _jax_core  # noqa: E402
from jax._src import custom_batching as _custom_batching  # noqa: E402
from jax._src import dispatch as _dispatch  # noqa: E402


@vjp_rule(ad_checkpoint.name_p, handles_complex=True)
def name_vjp(ct, x, *, name, **params):
    """d checkpoint_name(x) = identity; ``name`` only tells remat policies what to save."""
    return (ct,)


def closed_call_forward(*args, needs, call_jaxpr, **params):
    """Walks the called (closed) jaxpr forward, keeping its record, as for a nested jit."""
    return _interp().forward(call_jaxpr.jaxpr, list(call_jaxpr.consts), list(args), list(needs))


def core_call_forward(*args, needs, call_jaxpr, **params):
    """Walks the called jaxpr (``core.call``: an open jaxpr, no constants) forward."""
    return _interp().forward(call_jaxpr, [], list(args), list(needs))


def call_vjp(cts, *args, res, **params):
    """Walks the called jaxpr backward."""
    return tuple(_interp().backward(res, list(cts)))


register_vjp_rule(_jax_core.closed_call_p, call_vjp, forward=closed_call_forward,
                  handles_complex=True)
register_vjp_rule(_jax_core.call_p, call_vjp, forward=core_call_forward, handles_complex=True)


@vjp_rule(_dispatch.device_put_p, handles_complex=True)
def device_put_vjp(cts, *xs, devices, srcs, copy_semantics, **params):
    """d device_put = identity on values; each cotangent is placed back where its operand was
    (``devices`` and ``srcs`` swap) as a fresh copy.

    Operands put to host memory with no explicit source come back from the host's memory space.
    """
    semantics = _dispatch.ArrayCopySemantics
    live = [i for i, ct in enumerate(cts) if ct is not None]
    if not live:
        return (None,) * len(xs)
    if any(copy_semantics[i] == semantics.DONATE_INPUT for i in live):
        raise UnsupportedPrimitiveError(
            "device_put with copy_semantics=DONATE_INPUT (donate=True) cannot be differentiated "
            "(jax refuses too): the donated input is gone when its cotangent is placed back; "
            "drop donate=True inside the differentiated function")
    back = []
    for i in live:
        src, aval = srcs[i], _jax_core.typeof(xs[i])
        host = getattr(_jax_core, "MemorySpace", None)
        if src is None and host is not None and getattr(aval, "memory_space", None) == host.Host:
            src = host.Host
        back.append(src)
    moved = _dispatch.device_put_p.bind(
        *[cts[i] for i in live], devices=tuple(back), srcs=tuple(devices[i] for i in live),
        copy_semantics=(semantics.ALWAYS_COPY,) * len(live))
    out: list[Any] = [None] * len(xs)
    for i, ct in zip(live, moved, strict=True):
        out[i] = ct
    return tuple(out)


@vjp_rule(_custom_batching.custom_vmap_p, handles_complex=True)
def custom_vmap_call_vjp(cts, *args, needs, call, **params):
    """Differentiates the function itself (``call``), recomputed from the saved inputs.

    The forward pass binds ``custom_vmap_call`` as is, so under ``jax.vmap`` the user's batching
    ``rule`` computes the values (as in jax); the backward walk recomputes ``call`` and walks it
    back, and an outer vmap batches that walk generically (``rule``, ``in_tree`` and
    ``out_tree`` describe batching only). Under ``jax.jit`` XLA shares the recomputation with
    the forward.
    """
    interp = _interp()
    _, record = interp.forward(call.jaxpr, list(call.consts), list(args), list(needs))
    return tuple(interp.backward(record, list(cts)))


def _constant_thunk(value):
    return lambda: value


@vjp_rule(cd.linear_call_p, handles_complex=True)
def linear_call_vjp(cts, *args, needs, callee, transpose_thunk, num_callee_consts, num_res,
                    **params):
    """The user's transpose, evaluated on the cotangents, is the linear inputs' cotangent.

    It is bound as another ``linear_call`` (whose own transpose is ``callee``), as jax does, so
    a second derivative uses the user's functions again. Residual inputs, in which ``callee`` is
    not linear, get the cotangent of ``callee`` itself, walked by funcbp (jax refuses these).
    """
    interp = _interp()
    n_fixed = num_callee_consts + num_res
    f_consts, res = list(args[:num_callee_consts]), list(args[num_callee_consts:n_fixed])
    transpose, t_consts = transpose_thunk()
    out: list[Any] = [None] * len(args)
    if any(needs[n_fixed:]):
        ct_avals = transpose.in_avals[len(t_consts) + num_res:]
        full = [_instantiate(ct, aval) for ct, aval in zip(cts, ct_avals, strict=True)]
        lin_cts = cd.linear_call_p.bind(
            *t_consts, *res, *full, callee=transpose,
            transpose_thunk=_constant_thunk((callee, f_consts)),
            num_callee_consts=len(t_consts), num_res=num_res)
        for i, ct in enumerate(lin_cts):
            if needs[n_fixed + i]:
                out[n_fixed + i] = ct
    if any(needs[:n_fixed]):
        fixed_needs = [*needs[:n_fixed], *(False,) * (len(args) - n_fixed)]
        _, record = interp.forward(callee.jaxpr, list(callee.consts), list(args), fixed_needs)
        out[:n_fixed] = interp.backward(record, list(cts))[:n_fixed]
    return tuple(out)


# A callback runs Python that no jaxpr describes, so no rule can differentiate it: as jax says,
# the user gives it a derivative with jax.custom_vjp (funcbp then calls the user's bwd).
from funcbp.autodiff.rules import NO_RULE_HINTS  # noqa: E402

for _name in ("pure_callback", "io_callback"):
    NO_RULE_HINTS[_name] = (
        "a callback runs Python code that funcbp cannot see into. Wrap the function that "
        "calls it in jax.custom_vjp and give it a bwd rule (funcbp calls your bwd), as jax "
        "asks for its own gradients of callbacks")
NO_RULE_HINTS["custom_lin"] = (
    "this is the linear half of a jax.custom_vjp function that jax.jvp or jax.linearize left "
    "in the program; a custom_vjp function has no forward-mode derivative, so it cannot be "
    "evaluated or differentiated here (jax refuses too). Differentiate the function itself, "
    "or give it a jax.custom_jvp rule if you need its jvp")
# Two primitives of jax 0.9 only (gone in 0.10), refused with what to use instead.
NO_RULE_HINTS["xla_pmap"] = (
    "jax.pmap makes this primitive only under the deprecated jax_pmap_shmap_merge=False of "
    "jax 0.9; by default jax.pmap is a shard_map, which funcbp differentiates. Leave "
    "jax_pmap_shmap_merge at its default (True), or use jax.shard_map")
NO_RULE_HINTS["custom_transpose_call"] = (
    "jax.custom_transpose (jax 0.9's experimental API, and the custom_vjp of its "
    "jax_enable_custom_vjp_by_custom_transpose=True) is not supported by funcbp; use "
    "jax.custom_vjp or jax.custom_jvp instead (and leave that option at False)")


# --- remat_opt (custom_vjp(..., optimize_remat=True)) ------------------------------------------

def remat_opt_forward(*args, fwd_jaxpr, needs, **params):
    """Runs the custom_vjp's ``fwd`` jaxpr (residuals, then outputs) with funcbp's walk.

    funcbp meets this primitive only when it differentiates a program that *contains* a
    custom_vjp's forward (e.g. the gradient program of such a function, differentiated again);
    the ``fwd`` function is then an ordinary function, differentiated through its body.
    """
    return _interp().forward(fwd_jaxpr.jaxpr, list(fwd_jaxpr.consts), list(args), list(needs))


if hasattr(cd, "remat_opt_p"):
    register_vjp_rule(cd.remat_opt_p, jit_vjp, forward=remat_opt_forward, handles_complex=True)
