"""Rules for control flow: ``scan`` (and ``fori_loop`` with static bounds), ``cond``, ``while``.

- ``scan``: the body is split once, at trace time, into its loop-invariant part (equations that
  read only the scan's constants, evaluated once before the loop, as jax hoists them too) and
  the per-step part. The forward scan runs funcbp's own forward walk over the per-step part
  and, besides the carries and ``ys``, stacks the values that the backward walk of the body
  will read (the inputs and outputs of every equation that depends on a differentiated value,
  and the residuals of nested forward rules). The backward is a second scan, in the opposite
  direction, that rebuilds the body's record from one slice of those stacks and walks it back:
  carry cotangents flow as the carry, cotangents of constants accumulate in an extra carry,
  cotangents of ``xs`` come out stacked. Finally the walk goes back through the invariant part.
- ``cond`` / ``switch``: only the operands are kept; the backward is a ``lax.switch`` on the
  same index whose branch ``i`` recomputes branch ``i``'s forward and walks it back, so only
  the taken branch's rule runs.
- ``while``: reverse mode cannot go through a loop whose trip count is a runtime value (the
  number of stored steps is unknown when the program is traced); the rule raises
  :class:`NonDifferentiableLoopError` saying what to use instead. Loops that nothing
  differentiated flows into still evaluate.

Everything the backward passes do is ``lax.scan`` / ``lax.switch`` over ordinary rules, so
gradients of gradients work (by funcbp or by jax).

Debugging walks (a ``Hooks`` with ``inline=True``, e.g. ``funcbp.find_nonfinite``) on concrete
values run the same steps as Python loops instead, each iteration's index on the walk's path
(``scan [iteration 3]``, ``while [iteration 7]``, ``cond [branch 1]``), so the hooks see every
iteration's values; the compiled path is unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core
from jax.tree_util import tree_flatten, tree_unflatten

from funcbp.autodiff.rules import EAGER_RULES, UnsupportedPrimitiveError, register_vjp_rule

__all__ = ["NonDifferentiableLoopError"]


class NonDifferentiableLoopError(UnsupportedPrimitiveError, ValueError):
    """Reverse mode met a ``while_loop`` whose trip count depends on runtime values.

    A ``ValueError`` too, as jax's own error for the same case, so code catching jax's keeps
    working."""


def _interp():
    from funcbp.autodiff import interpreter  # the rules package is imported by the interpreter

    return interpreter


def _is_var(v: Any) -> bool:
    return not isinstance(v, core.Literal)


class _Jaxpr(NamedTuple):
    """The fields of a jaxpr that the walk reads, for one piece of a scan body."""

    constvars: list
    invars: list
    outvars: list
    eqns: list


def _eager(interp, values) -> bool:
    """A debugging walk (``Hooks.inline``) on concrete values: loops run as Python loops."""
    return interp.inlining() and not any(
        isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(values))


def _scan(step, init, xs, length, reverse, unroll, eager):
    """``lax.scan``; or, in a debugging walk, the same loop in Python with each step's index on
    the walk's path (``"iteration 3"``, the position along the scanned axis)."""
    if not eager or not length:
        return lax.scan(step, init, xs, length=length, reverse=reverse, unroll=unroll)
    interp = _interp()
    carry, ys = init, [None] * length
    for i in (reversed(range(length)) if reverse else range(length)):
        with interp.detail(f"iteration {i}"):
            carry, ys[i] = step(carry, jax.tree.map(lambda a, i=i: a[i], xs))
    return carry, jax.tree.map(lambda *y: jnp.stack(y), *ys)


# --- scan -------------------------------------------------------------------------------------

class _ScanInfo:
    """Static facts about one scan's forward, shared with its backward (never stacked)."""

    def __init__(self, loop, hoisted, carry_active, xs_needed):
        self.loop = loop                  # _Jaxpr of the per-step part
        self.hoisted = hoisted            # invariant vars the per-step part reads
        self.carry_active = carry_active  # which carries can carry a cotangent
        self.xs_needed = xs_needed        # indices of xs whose slices the backward reads
        self.kept: list = []              # per-step vars stacked by the forward
        self.treedef = None               # structure of (kept values, nested residuals)
        self.static: dict = {}            # non-array leaves of that structure, by position
        self.active: set = set()          # the body record's active set


def _split_invariant(jaxpr: core.Jaxpr, num_consts: int) -> tuple[_Jaxpr, _Jaxpr, list]:
    """Splits a scan body into its loop-invariant equations and its per-step equations."""
    const_in = list(jaxpr.invars[:num_consts])
    invariant = set(jaxpr.constvars) | set(const_in)
    pre_eqns, loop_eqns = [], []
    for eqn in jaxpr.eqns:
        if not eqn.effects and all(not _is_var(v) or v in invariant for v in eqn.invars):
            pre_eqns.append(eqn)
            invariant.update(eqn.outvars)
        else:
            loop_eqns.append(eqn)
    read = [v for e in loop_eqns for v in e.invars] + list(jaxpr.outvars)
    hoisted = list(dict.fromkeys(v for v in read if _is_var(v) and v in invariant))
    pre = _Jaxpr([], [*jaxpr.constvars, *const_in], hoisted, pre_eqns)
    loop = _Jaxpr([], [*hoisted, *jaxpr.invars[num_consts:]], list(jaxpr.outvars), loop_eqns)
    return pre, loop, hoisted


def _propagate(eqns: list, active: set) -> set:
    """Static mirror of the forward walk's activity rule: float outputs of touched equations."""
    interp = _interp()
    for eqn in eqns:
        if any(_is_var(v) and v in active for v in eqn.invars) and interp.propagates(eqn):
            active.update(v for v in eqn.outvars if interp.is_differentiable(v.aval))
    return active


def _carry_activity(loop: _Jaxpr, head: list[bool], carry: list[bool], xs: list[bool]):
    """Which carries depend on a differentiated value after any number of steps (fixpoint)."""
    nk = len(carry)
    while True:
        flags = head + carry + xs
        active = _propagate(loop.eqns, {v for v, a in zip(loop.invars, flags, strict=True) if a})
        out = [_is_var(v) and v in active for v in loop.outvars[:nk]]
        new = [a or b for a, b in zip(carry, out, strict=True)]
        if new == carry:
            return carry
        carry = new


def scan_forward(*args, needs, jaxpr, num_consts, num_carry, length, reverse, unroll,
                 **params):
    """Runs the scan with funcbp's forward walk in its body, stacking what the backward reads."""
    interp = _interp()
    nc, nk = num_consts, num_carry
    consts, init, xs = args[:nc], list(args[nc:nc + nk]), list(args[nc + nk:])
    body = jaxpr.jaxpr
    in_avals = jaxpr.in_avals
    pre, loop, hoisted = _split_invariant(body, nc)
    n_closed = len(jaxpr.consts)
    head_vals, pre_record = interp.forward(pre, [], [*jaxpr.consts, *consts],
                                           [False] * n_closed + list(needs[:nc]))
    head_active = [v in pre_record.active for v in hoisted]
    diff = [bool(n) and interp.is_differentiable(a) for n, a in zip(needs, in_avals, strict=True)]
    carry_active = _carry_activity(loop, head_active, diff[nc:nc + nk], diff[nc + nk:])
    flags = head_active + carry_active + diff[nc + nk:]
    xs_vars = body.invars[nc + nk:]
    info = _ScanInfo(loop, hoisted, carry_active, [])

    def step(carry, x):
        outs, rec = interp.forward(loop, [], [*head_vals, *carry, *x], flags)
        needed = interp.needed_vars(loop, rec.active)
        skip = set(hoisted) | set(xs_vars)
        info.kept = [v for v in needed if v not in skip]
        info.xs_needed = [i for i, v in enumerate(xs_vars) if v in set(needed)]
        info.active = rec.active
        leaves, info.treedef = tree_flatten(([rec.env[v] for v in info.kept], rec.residuals))
        info.static = {i: leaf for i, leaf in enumerate(leaves) if not isinstance(leaf, jax.Array)}
        stacked = [leaf for leaf in leaves if isinstance(leaf, jax.Array)]
        return outs[:nk], (outs[nk:], stacked)

    carry_out, (ys, stacked) = _scan(step, init, xs, length, reverse, unroll,
                                     _eager(interp, args))
    return [*carry_out, *ys], (pre_record, head_vals, stacked, info)


def scan_vjp(cts, *args, res, needs, jaxpr, num_consts, num_carry, length, reverse, unroll,
             **params):
    """Reverse scan over the stacked body records; constants' cotangents accumulate as a carry."""
    interp = _interp()
    pre_record, head_vals, stacked, info = res
    nc, nk = num_consts, num_carry
    xs = args[nc + nk:]
    loop, hoisted = info.loop, info.hoisted
    carry_avals = jaxpr.in_avals[nc:nc + nk]
    head_idx = [i for i, v in enumerate(hoisted) if v in pre_record.active]
    ct_head = [interp.zeros_like_aval(hoisted[i].aval) for i in head_idx]
    ct_carry = [(interp.zeros_like_aval(a) if ct is None else ct) if act else None
                for ct, a, act in zip(cts[:nk], carry_avals, info.carry_active, strict=True)]
    y_vars = loop.outvars[nk:]
    ys_live = [i for i, (v, ct) in enumerate(zip(y_vars, cts[nk:], strict=True))
               if ct is not None and _is_var(v) and v in info.active]
    xs_vars = loop.invars[len(hoisted) + nk:]
    xs_out: list[int] = []  # which xs get a (non-zero) stacked cotangent, found while tracing

    def step(carry, sl):
        ct_h, ct_c = carry
        stacked_sl, xs_sl, ys_ct_sl = sl
        it = iter(stacked_sl)
        leaves = [info.static[i] if i in info.static else next(it)
                  for i in range(info.treedef.num_leaves)]
        kept_vals, residuals = tree_unflatten(info.treedef, leaves)
        env = dict(zip(hoisted, head_vals, strict=True))
        env.update(zip(info.kept, kept_vals, strict=True))
        env.update((xs_vars[i], x) for i, x in zip(info.xs_needed, xs_sl, strict=True))
        record = interp.Record(loop, env, info.active, residuals)
        y_cts: list[Any] = [None] * len(y_vars)
        for i, ct in zip(ys_live, ys_ct_sl, strict=True):
            y_cts[i] = ct
        cts_in = interp.backward(record, [*ct_c, *y_cts])
        nh = len(hoisted)
        new_h = [acc if cts_in[i] is None else acc + cts_in[i]
                 for i, acc in zip(head_idx, ct_h, strict=True)]
        new_c = [None if c is None else (interp.zeros_like_aval(a) if ct is None else ct)
                 for c, ct, a in zip(ct_c, cts_in[nh:nh + nk], carry_avals, strict=True)]
        ct_x = cts_in[nh + nk:]
        xs_out[:] = [i for i, ct in enumerate(ct_x) if ct is not None]
        return (new_h, new_c), [ct_x[i] for i in xs_out]

    sliced = (stacked, [xs[i] for i in info.xs_needed], [cts[nk + i] for i in ys_live])
    (ct_head, ct_carry), ct_xs = _scan(step, (ct_head, ct_carry), sliced, length,
                                       not reverse, unroll, _eager(interp, (args, cts)))
    head_cts: list[Any] = [None] * len(hoisted)
    for i, ct in zip(head_idx, ct_head, strict=True):
        head_cts[i] = ct
    ct_consts = interp.backward(pre_record, head_cts)[len(jaxpr.consts):]
    ct_xs_all: list[Any] = [None] * len(xs)
    for i, ct in zip(xs_out, ct_xs, strict=True):
        ct_xs_all[i] = ct
    return (*ct_consts, *ct_carry, *ct_xs_all)


register_vjp_rule(lax.scan_p, scan_vjp, forward=scan_forward, handles_complex=True)


# --- cond / switch ----------------------------------------------------------------------------

def cond_vjp(cts, index, *ops, needs, branches, **params):
    """Backward of the taken branch only: ``lax.switch(index, [pullback of branch i])``.

    Only the operands are kept; the branch's forward is recomputed inside its pullback.
    """
    interp = _interp()
    in_avals = branches[0].in_avals
    wanted = [bool(n) and interp.is_differentiable(a)
              for n, a in zip(needs[1:], in_avals, strict=True)]
    live = [i for i, ct in enumerate(cts) if ct is not None]

    def pullback(branch):
        def run(ops, live_cts):
            _, record = interp.forward(branch.jaxpr, list(branch.consts), list(ops), wanted)
            full: list[Any] = [None] * len(cts)
            for i, ct in zip(live, live_cts, strict=True):
                full[i] = ct
            cts_in = interp.backward(record, full)
            return [interp.zeros_like_aval(a) if ct is None else ct
                    for ct, a, w in zip(cts_in, in_avals, wanted, strict=True) if w]
        return run

    live_cts = [cts[i] for i in live]
    if _eager(interp, (index, ops, live_cts)):
        taken = _branch_index(index, len(branches))
        with interp.detail(f"branch {taken}"):
            out = pullback(branches[taken])(list(ops), live_cts)
    else:
        out = lax.switch(index, [pullback(b) for b in branches], list(ops), live_cts)
    it = iter(out)
    return (None, *(next(it) if w else None for w in wanted))


def _branch_index(index, n: int) -> int:
    return min(max(int(index), 0), n - 1)  # lax.switch clamps out-of-range indices


def cond_eager(eqn, invals) -> list:
    """Debugging walks only: evaluates the taken branch through the interpreter."""
    interp = _interp()
    if not _eager(interp, invals):
        return interp.eval_eqn(eqn, invals)
    branches = eqn.params["branches"]
    taken = _branch_index(invals[0], len(branches))
    ops = list(invals[1:])
    with interp.detail(f"branch {taken}"):
        outs, _ = interp.forward(branches[taken].jaxpr, list(branches[taken].consts), ops,
                                 [False] * len(ops))
    return outs


register_vjp_rule(lax.cond_p, cond_vjp, handles_complex=True)
EAGER_RULES[lax.cond_p] = cond_eager


# --- while ------------------------------------------------------------------------------------

def while_vjp(cts, *args, needs, cond_nconsts, body_jaxpr, **params):
    """No reverse mode through a value-dependent trip count; says what to use instead."""
    interp = _interp()
    avals = body_jaxpr.in_avals
    if any(n and interp.is_differentiable(a)
           for n, a in zip(needs[cond_nconsts:], avals, strict=True)):
        raise NonDifferentiableLoopError(
            "reverse-mode differentiation does not work for lax.while_loop (nor lax.fori_loop "
            "with bounds that are traced values): its number of iterations is only known at run "
            "time, so the values each iteration would have to keep for the backward pass cannot "
            "be allocated when the program is traced. For a loop that runs until convergence, "
            "use funcbp.bounded_while_loop(cond, body, init, max_steps) (the same arguments plus "
            "a bound; checkpoint_every=k saves memory): funcbp.grad and jax.grad differentiate "
            "it. Otherwise use lax.fori_loop with Python-int bounds or lax.scan (both give a "
            "fixed trip count), wrapping the step in jax.checkpoint to save memory.")
    return (None,) * len(args)


def while_eager(eqn, invals) -> list:
    """Debugging walks only: the loop in Python, each iteration's index on the walk's path."""
    interp = _interp()
    if not _eager(interp, invals):
        return interp.eval_eqn(eqn, invals)
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, carry = invals[:nc], invals[nc:nc + nb], list(invals[nc + nb:])
    cond, body = p["cond_jaxpr"], p["body_jaxpr"]
    i = 0
    while True:
        with interp.detail(f"iteration {i}"):
            (pred,), _ = interp.forward(cond.jaxpr, list(cond.consts), [*cond_consts, *carry],
                                        [False] * (nc + len(carry)))
            if not bool(pred):
                return carry
            carry, _ = interp.forward(body.jaxpr, list(body.consts), [*body_consts, *carry],
                                      [False] * (nb + len(carry)))
        i += 1


register_vjp_rule(lax.while_p, while_vjp)
EAGER_RULES[lax.while_p] = while_eager
