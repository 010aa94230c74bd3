"""Tracing a user's function of pytrees to a jaxpr over flat leaves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.extend import core
from jax.tree_util import PyTreeDef, tree_flatten, tree_unflatten

__all__ = ["Traced", "all_jaxprs", "trace"]


def all_jaxprs(jaxpr: core.Jaxpr) -> Iterator[core.Jaxpr]:
    """``jaxpr`` and, recursively, every jaxpr held in its equations' params (jit, scan, ...)."""
    yield jaxpr
    for eqn in jaxpr.eqns:
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if isinstance(sub, core.ClosedJaxpr):
                    yield from all_jaxprs(sub.jaxpr)
                elif isinstance(sub, core.Jaxpr):
                    yield from all_jaxprs(sub)


class Traced:
    """A function traced to a closed jaxpr, with the pytree structures around it."""

    def __init__(self, closed: core.ClosedJaxpr, out_tree: PyTreeDef,
                 aux_tree: PyTreeDef | None, num_out: int):
        self.closed = closed
        self.out_tree = out_tree
        self.aux_tree = aux_tree
        self.num_out = num_out  # leaves of the differentiated output; aux leaves follow


def trace(fun: Callable, in_tree: PyTreeDef, leaves: list[Any], has_aux: bool,
          api_name: str) -> Traced:
    """Traces ``fun(*tree_unflatten(in_tree, leaves))`` to a jaxpr over the leaves.

    Closed-over tracers of outer transformations become the jaxpr's constants, so nesting
    (``funcbp.grad(funcbp.grad(f))``, ``jax.jit``, ``jax.vmap``) works: the walk binds the
    equations under whatever trace is current. A function that branches in Python on its
    inputs' values is traced with concrete values when the inputs are concrete (as
    ``jax.grad`` allows); under ``jax.jit`` it raises jax's concretization error, as jax does.
    """
    store: dict[str, Any] = {}

    def flat_fun(*flat_args):
        args = tree_unflatten(in_tree, flat_args)
        out = fun(*args)
        if has_aux:
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise TypeError(
                    f"{api_name}(..., has_aux=True) expects the function to return a pair "
                    f"(output, aux), but it returned {type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
            out, aux = out
            aux_leaves, store["aux_tree"] = tree_flatten(aux)
        else:
            aux_leaves, store["aux_tree"] = [], None
        out_leaves, store["out_tree"] = tree_flatten(out)
        store["num_out"] = len(out_leaves)
        return [*out_leaves, *aux_leaves]

    try:
        closed = jax.make_jaxpr(flat_fun)(*leaves)
    except jax.errors.ConcretizationTypeError:
        # Python control flow on an input's value (`if x < 2:`): like jax.grad, allowed when
        # the inputs are concrete; the jaxpr then records the branch these values take.
        from funcbp.autodiff.compat import is_concrete, trace_concrete

        if not all(is_concrete(x) for x in leaves):
            raise

        closed = trace_concrete(flat_fun, leaves, api_name)
    from funcbp.autodiff.rules.state import discharge  # mutable refs (jax.new_ref) -> values

    closed = discharge(closed)
    return Traced(closed, store["out_tree"], store["aux_tree"], store["num_out"])
