"""Mutable references (``jax.new_ref``, ``run_state``): differentiated as the pure programs
jax's *discharge* turns them into.

A reference is read (``get``), written (``swap``) and incremented (``addupdate``) in place, so
the value behind it changes along the program. Reverse mode needs those values as they were
at each read, which is what jax's state discharge (``jax._src.state.discharge.discharge_state``,
a program transformation, not differentiation) makes explicit: every reference becomes a value,
every write a new value (``dynamic_update_slice``, ``scatter``...), every read a slice of the
current one. funcbp then walks that pure program with its ordinary rules:

- references created in the differentiated function itself (``jax.new_ref`` at top level, or
  inside ``jit``, ``scan``, ``cond``...) are discharged once, when the function is traced
  (:func:`discharge`, called from ``funcbp/autodiff/trace.py``), so ``get``, ``swap``,
  ``addupdate``, ``new_ref`` and ``freeze`` never reach the walk;
- ``run_state`` (``jax.experimental.pallas.run_state``: a function of references applied to
  initial values, returning their final values) has a rule below that discharges its body and
  walks it like a nested ``jit``.
"""

from __future__ import annotations

import weakref
from typing import Any

from jax._src import core as jax_core
from jax._src.state import discharge as state_discharge
from jax._src.state import types as state_types
from jax.extend import core

from funcbp.autodiff import compat
from funcbp.autodiff.rules import NO_RULE_HINTS, UnsupportedPrimitiveError, register_vjp_rule

__all__ = ["discharge"]


def _interp():
    from funcbp.autodiff import interpreter  # the rules package is imported by the interpreter

    return interpreter


def _is_stateful(jaxpr: core.Jaxpr) -> bool:
    """Whether ``jaxpr`` creates, reads or writes references (its effects say so)."""
    return any(isinstance(e, state_types.RefEffect) or e is jax_core.internal_mutable_array_effect
               for e in jaxpr.effects) or any(
        isinstance(v.aval, state_types.AbstractRef) for v in jaxpr.invars)


def discharge(closed: core.ClosedJaxpr) -> core.ClosedJaxpr:
    """``closed`` with its references turned into values, or ``closed`` itself if it has none.

    Args:
      closed: a traced function (``jax.make_jaxpr``'s result).

    Returns:
      A jaxpr with the same inputs and outputs that reads and writes no reference.

    Example::

        >>> import jax, jax.numpy as jnp
        >>> def f(x):
        ...     r = jax.new_ref(x)
        ...     r[0] += 1.0
        ...     return r[...]
        >>> pure = discharge(jax.make_jaxpr(f)(jnp.zeros(2)))
        >>> sorted({e.primitive.name for e in pure.jaxpr.eqns} & {"get", "swap"})
        []
    """
    if not _is_stateful(closed.jaxpr):
        return closed
    return compat.discharge_state(closed)


# --- run_state --------------------------------------------------------------------------------

_DISCHARGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _discharged_body(jaxpr: core.Jaxpr) -> core.ClosedJaxpr:
    """The pure form of a run_state body: initial values in, final values out (cached)."""
    try:
        return _DISCHARGED[jaxpr]
    except (KeyError, TypeError):
        pure = compat.discharge_state(core.ClosedJaxpr(jaxpr, ()))
        try:
            _DISCHARGED[jaxpr] = pure
        except TypeError:  # pragma: no cover - a jaxpr that cannot be weakly referenced
            pass
        return pure


def run_state_forward(*args: Any, needs, jaxpr, which_linear, is_initialized):
    """Walks the discharged body forward, keeping its record.

    ``which_linear`` marks inputs jax's own partial evaluation may treat as linear; it says
    nothing about the values, so the walk (which differentiates every input) does not need it.
    """
    del which_linear
    if not all(is_initialized):
        raise UnsupportedPrimitiveError(
            "run_state with uninitialized references (is_initialized has False entries) cannot "
            "be differentiated: give every reference an initial value")
    pure = _discharged_body(jaxpr)
    return _interp().forward(pure.jaxpr, list(pure.consts), list(args), list(needs))


def run_state_vjp(cts, *args, res, **params):
    """Walks the discharged body backward: initial values' cotangents from final values'."""
    return tuple(_interp().backward(res, list(cts)))


register_vjp_rule(state_discharge.run_state_p, run_state_vjp, forward=run_state_forward,
                  handles_complex=True)


# References the function did not create stay references; writing a differentiated value into
# one would drop its gradient, so the walk refuses (jax refuses too).
for _name in ("get", "swap", "addupdate"):
    NO_RULE_HINTS[_name] = (
        "a differentiated value is written into a reference created outside the "
        "differentiated function (jax refuses this too). Create the reference inside the "
        "function with jax.new_ref, pass its contents as an argument, or write "
        "lax.stop_gradient(value) if no gradient should flow through it")
