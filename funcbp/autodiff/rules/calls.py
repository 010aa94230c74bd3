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

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import ad_checkpoint, pjit
from jax._src import custom_derivatives as cd

from funcbp.autodiff.rules import register_vjp_rule, vjp_rule

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

def custom_jvp_call_forward(*args, needs, call_jaxpr, jvp_jaxpr_fun, num_consts,
                            symbolic_zeros, **params):
    """Evaluates the user's JVP jaxpr at zero tangents and keeps its record.

    The primal outputs are taken from the JVP's own primal half, so the backward walks the same
    values the forward produced: nothing is recomputed, and only the primal values that the
    JVP's tangent half reads (e.g. relu's input sign) stay live until the backward pass.
    """
    interp = _interp()
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
    outs, record = interp.forward(jvp_jaxpr, list(jvp_consts), primals + tangents, active)
    n_out = len(out_zeros)
    return outs[:n_out], (record, out_zeros, kept, wanted, len(primals))


def custom_jvp_call_vjp(cts, *args, res, num_consts, **params):
    """Transposes the user's custom JVP with funcbp's own walk.

    The JVP jaxpr maps (primals, tangents) to (primal outputs, tangent outputs) and is linear in
    the tangents. Walking its forward record (see :func:`custom_jvp_call_forward`) back from the
    output cotangents, placed on the tangent outputs, yields the transpose, i.e. the VJP,
    evaluated with the user's derivative.
    """
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
    bind_params = cd.custom_vjp_call_p.get_bind_params(
        dict(params, num_consts=num_consts, out_trees=out_trees))
    _, fwd, bwd = bind_params["subfuns"]
    nonzeros = [False if i < num_consts else bool(n) for i, n in enumerate(needs)]
    fwd_in = [x for pair in zip(args, nonzeros, strict=True) for x in pair]
    res_and_outs = fwd.call_wrapped(*fwd_in)
    _, res_tree, input_fwds = out_trees()
    num_res_out = res_tree.num_leaves - sum(f is not None for f in input_fwds)
    res_out, outs = res_and_outs[:num_res_out], res_and_outs[num_res_out:]
    res_iter = iter(res_out)
    res = [next(res_iter) if f is None else args[f] for f in input_fwds]
    return list(outs), (res, bwd)


def custom_vjp_call_vjp(cts, *args, out, res, call_jaxpr, **params):
    """Calls the user's ``bwd`` on the residuals and the (instantiated) output cotangents."""
    residuals, bwd = res
    cts = [_instantiate(ct, aval) for ct, aval in zip(cts, call_jaxpr.out_avals, strict=True)]
    cts_in = bwd.call_wrapped(*residuals, *cts)
    return tuple(None if _is_zero(ct) else ct for ct in cts_in)


register_vjp_rule(cd.custom_vjp_call_p, custom_vjp_call_vjp, forward=custom_vjp_call_forward,
                  handles_complex=True)


# --- remat / jax.checkpoint -------------------------------------------------------------------

def remat_forward(*args, jaxpr, needs, **params):
    """Computes the block's outputs and keeps only its inputs."""
    outs = ad_checkpoint.remat_p.bind(*args, jaxpr=jaxpr, **params)
    return list(outs), None


def remat_vjp(cts, *args, needs, jaxpr, prevent_cse=True, **params):
    """Recomputes the block's forward from its inputs, then walks it backward."""
    interp = _interp()
    args = list(args)
    if prevent_cse:
        # Without the barrier XLA would reuse the original forward values, defeating remat.
        float_idx = [i for i, a in enumerate(args) if interp.is_differentiable(jnp.asarray(a))]
        fenced = lax.optimization_barrier([args[i] for i in float_idx])
        for i, a in zip(float_idx, fenced, strict=True):
            args[i] = a
    _, record = interp.forward(jaxpr, [], args, list(needs))
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
