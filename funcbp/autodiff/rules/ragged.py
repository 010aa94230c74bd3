"""VJP rule for ``ragged_dot_general`` (``lax.ragged_dot``, grouped matmuls of mixture-of-experts).

A ragged dot multiplies each group of rows (or of the contraction, or of a batch) of ``lhs`` by
its own block of ``rhs``. Written densely, it is an ordinary ``dot_general`` of ``lhs`` masked
per group, ``[g, ...]``, against ``rhs`` (whose group axis is contracted with the mask's), which
is linear in each operand: funcbp traces that dense form (jax's reference evaluation of the
primitive, on the same operands and parameters) and walks it with its own ``dot_general``,
``select_n`` and structural rules. Every parameter reaches the dense form: the dimension
numbers, ``precision`` and ``preferred_element_type``; ``group_offset`` is refused, as jax's own
evaluation refuses it. The price is memory: the masked operand has ``g`` times ``lhs``'s size.
"""

from __future__ import annotations

from functools import partial

import jax

from funcbp.autodiff.rules import register_vjp_rule

__all__: list[str] = []

try:  # jax >= 0.4.36
    from jax._src.lax.lax import _ragged_dot_general_impl as _dense_ragged_dot
    from jax._src.lax.lax import ragged_dot_general_p
except ImportError:  # pragma: no cover - older jax: no primitive, nothing to register
    ragged_dot_general_p = None


def _interp():
    from funcbp.autodiff import interpreter  # the interpreter imports this package

    return interpreter


def ragged_dot_general_forward(lhs, rhs, group_sizes, *, needs, group_offset=None, **params):
    """Evaluates the dense form of the ragged dot through funcbp's interpreter."""
    if group_offset is not None:
        raise NotImplementedError(
            "funcbp: ragged_dot_general with group_offset has no VJP rule (jax cannot evaluate "
            "it off TPU either); pass group_offset=None.")
    closed = jax.make_jaxpr(partial(_dense_ragged_dot, **params))(lhs, rhs, group_sizes)
    (out,), record = _interp().forward(closed.jaxpr, list(closed.consts),
                                       [lhs, rhs, group_sizes], list(needs))
    return out, record


def ragged_dot_general_vjp(ct, lhs, rhs, group_sizes, *, res, **params):
    """d ragged_dot: reverse walk of its dense form (per-group masked ``dot_general``)."""
    return tuple(_interp().backward(res, [ct]))


if ragged_dot_general_p is not None:
    register_vjp_rule(ragged_dot_general_p, ragged_dot_general_vjp,
                      forward=ragged_dot_general_forward)
