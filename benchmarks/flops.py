"""FLOPs of a forward pass and of a training step, counted from the jaxpr.

Only ``dot_general`` and ``conv_general_dilated`` count (elementwise work is noise next to them):

    matmul: 2 * M * N * K               (2 * output elements * contracted size)
    conv:   2 * out_elems * kernel_spatial * in_channels_per_group

A training step costs the forward plus, per matmul or conv, one more forward-sized product for
each operand that needs a cotangent: an operand that does not depend on the parameters (the
data entering the first layer) gets none. For an MLP this is "3x the forward, less the first
layer's input gradient". Equations inside ``jit``/``custom_jvp``/``custom_vjp``/``remat`` are
counted once, inside ``scan`` ``length`` times, inside ``cond`` the costliest branch; ``while``
loops (unknown trip count) count zero.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.extend import core


class Flops(NamedTuple):
    """FLOPs of one forward pass and of one gradient (training) step, and the equation count."""

    forward: float
    train: float
    eqns: int


def _is_float(aval) -> bool:
    return hasattr(aval, "dtype") and np.issubdtype(aval.dtype, np.inexact)


def product_flops(eqn) -> float:
    """Forward FLOPs of one ``dot_general`` or ``conv_general_dilated`` equation (else 0)."""
    name = eqn.primitive.name
    out = eqn.outvars[0].aval
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        k = math.prod(lhs.shape[d] for d in lhs_contract)
        return 2.0 * math.prod(out.shape) * k
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval
        spec = eqn.params["dimension_numbers"].rhs_spec      # (out feature, in feature, spatial...)
        spatial = math.prod(rhs.shape[d] for d in spec[2:])
        in_per_group = rhs.shape[spec[1]]                   # already C_in / feature_group_count
        return 2.0 * math.prod(out.shape) * spatial * in_per_group
    return 0.0


def _sub_jaxprs(eqn) -> list:
    found = []
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if isinstance(j, (core.ClosedJaxpr, core.Jaxpr)):
            found.append(j)
    return found


def _open(j):
    return j.jaxpr if isinstance(j, core.ClosedJaxpr) else j


def _walk(jaxpr, active_in: list[bool]) -> tuple[float, float, int, list[bool]]:
    """(forward flops, train flops, equations, output activity) of an open jaxpr."""
    active: set[Any] = {v for v, a in zip(jaxpr.invars, active_in, strict=True) if a}
    is_active = lambda v: not isinstance(v, core.Literal) and v in active
    fwd = train = 0.0
    eqns = 0
    for eqn in jaxpr.eqns:
        eqns += 1
        ins = [is_active(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "scan":
            f, t, n, outs = _scan(eqn, ins)
        elif name == "cond":
            f = t = 0.0
            n, outs = 0, [False] * len(eqn.outvars)
            for branch in eqn.params["branches"]:
                bf, bt, bn, bo = _walk(_open(branch), ins[1:])
                f, t, n = max(f, bf), max(t, bt), max(n, bn)
                outs = [a or b for a, b in zip(outs, bo, strict=True)]
        elif name == "while":
            f = t = 0.0
            n, outs = 0, [any(ins)] * len(eqn.outvars)
        elif _sub_jaxprs(eqn):
            sub = _open(_sub_jaxprs(eqn)[0])
            f, t, n, outs = _walk(sub, ins[-len(sub.invars):] if sub.invars else [])
        else:
            f = product_flops(eqn)
            t = f * (1 + sum(ins[:2])) if any(ins[:2]) else f
            n, outs = 0, [any(ins)] * len(eqn.outvars)
        fwd, train, eqns = fwd + f, train + t, eqns + n
        for v, a in zip(eqn.outvars, outs, strict=True):
            if a and _is_float(v.aval):
                active.add(v)
    return fwd, train, eqns, [is_active(v) for v in jaxpr.outvars]


def _scan(eqn, ins: list[bool]):
    body = _open(eqn.params["jaxpr"])
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    body_in = list(ins)
    while True:                                  # a carry becomes active once any step makes it so
        f, t, n, outs = _walk(body, body_in)
        carry = [a or b for a, b in zip(body_in[n_consts:n_consts + n_carry], outs[:n_carry],
                                        strict=True)]
        if carry == body_in[n_consts:n_consts + n_carry]:
            break
        body_in[n_consts:n_consts + n_carry] = carry
    length = eqn.params["length"]
    return f * length, t * length, n, outs


def count(loss, params, *data) -> Flops:
    """Counts the FLOPs of ``loss(params, *data)`` and of its gradient with respect to params.

    Args:
      loss: the scalar loss function.
      params: the pytree of parameters (every float leaf is differentiated).
      *data: the remaining arguments (inputs, labels): never differentiated.

    Returns:
      ``Flops(forward, train, eqns)``: ``train`` counts the forward and the backward products
      (not the optimizer update); ``eqns`` counts equations, nested ones included.

    Example:
      >>> import jax.numpy as jnp
      >>> count(lambda w, x: jnp.sum(x @ w), jnp.ones((3, 2)), jnp.ones((5, 3))).train
      120.0
    """
    closed = jax.make_jaxpr(loss)(params, *data)
    n_params = len(jax.tree.leaves(params))
    active = [i < n_params and _is_float(a) for i, a in enumerate(closed.in_avals)]
    fwd, train, eqns, _ = _walk(closed.jaxpr, active)
    return Flops(fwd, train, eqns)
