"""``bounded_while_loop``: a while loop that reverse mode can differentiate.

Reverse mode cannot cross ``lax.while_loop``: its trip count is only known at run time, so the
values each iteration must keep for the backward pass cannot be allocated when the program is
traced. A bound on the number of iterations fixes that: the loop becomes a ``lax.scan`` over
``max_steps`` steps whose body runs the user's ``body`` while the loop is still running (a
``lax.cond``, so finished steps neither compute nor differentiate it) and passes the value
through unchanged afterwards. ``funcbp.grad`` and ``jax.grad`` both differentiate it; with
``checkpoint_every=k`` the steps are grouped in blocks of ``k`` under ``jax.checkpoint``, so the
backward pass keeps one value per block and recomputes the steps inside a block (memory
``O(max_steps / k + k)`` instead of ``O(max_steps)``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["LoopBoundWarning", "bounded_while_loop"]


class LoopBoundWarning(UserWarning):
    """A ``bounded_while_loop`` evaluated eagerly stopped at ``max_steps`` with its condition
    still true."""


def bounded_while_loop(cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any],
                       init_val: Any, max_steps: int, *, checkpoint_every: int | None = None,
                       return_steps: bool = False) -> Any:
    """``lax.while_loop(cond_fun, body_fun, init_val)`` run at most ``max_steps`` times, and
    differentiable in reverse mode.

    ``val = init_val; while cond_fun(val) and steps < max_steps: val = body_fun(val)``.
    When the loop ends within ``max_steps`` the result is exactly ``lax.while_loop``'s. When it
    does not, it **stops at the bound** and returns the value after ``max_steps`` iterations
    (``cond_fun`` of the result is then still True); pass ``return_steps=True`` to get the
    number of iterations run as well, and a ``LoopBoundWarning`` is raised when this happens
    eagerly (under ``jax.jit`` nothing can warn: check ``cond_fun(result)`` or the steps).

    Gradients are those of the iterations actually run: the loop is a ``lax.scan`` of
    ``max_steps`` steps, each a ``lax.cond`` between ``body_fun`` and the identity, so its cost is
    that of ``max_steps`` (cheap) steps even when the loop ends early, and the derivative
    through a convergence test is zero (as through ``while_loop``'s own condition).

    Args:
      cond_fun: ``cond_fun(val) -> bool`` scalar.
      body_fun: ``body_fun(val) -> val`` with the same structure, shapes and dtypes.
      init_val: the initial value (a pytree).
      max_steps: the bound, a Python int ``>= 0``.
      checkpoint_every: group the steps in blocks of this many under ``jax.checkpoint``: the
        backward pass stores one value per block and recomputes the block's steps.
      return_steps: also return the number of iterations run (an int32 scalar).

    Returns:
      The final value, or ``(value, steps)`` with ``return_steps``.

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> def sqrt2(a):  # Newton's iteration for sqrt(a), until converged
      ...     cond = lambda x: jnp.abs(x * x - a) > 1e-6
      ...     return funcbp.bounded_while_loop(cond, lambda x: 0.5 * (x + a / x), a, 50)
      >>> round(float(sqrt2(2.0)), 5), round(float(funcbp.grad(sqrt2)(2.0)), 4)  # 1 / (2 sqrt 2)
      (1.41421, 0.3536)
    """
    if not callable(cond_fun) or not callable(body_fun):
        raise TypeError("bounded_while_loop(cond_fun, body_fun, init_val, max_steps): cond_fun "
                        "and body_fun must be functions")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps must be a Python int >= 0 (the bound is what makes the loop "
                         f"differentiable), got {max_steps!r}")
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(
            checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive int or None, got "
                         f"{checkpoint_every!r}")

    def step(state, _):
        val, running, n = state
        pred = jnp.asarray(cond_fun(val))
        if pred.shape != () or pred.dtype != jnp.bool_:
            raise TypeError(f"cond_fun must return a boolean scalar, got {pred.dtype}"
                            f"{list(pred.shape)}")
        running = running & (n < max_steps) & pred
        val = lax.cond(running, body_fun, lambda v: v, val)
        return (val, running, n + running.astype(jnp.int32)), None

    state = (init_val, jnp.asarray(True), jnp.asarray(0, jnp.int32))
    if checkpoint_every is None or checkpoint_every >= max_steps:
        state, _ = lax.scan(step, state, None, length=max_steps)
    else:
        k = checkpoint_every

        @jax.checkpoint
        def block(state, _):
            return lax.scan(step, state, None, length=k)[0], None

        state, _ = lax.scan(block, state, None, length=math.ceil(max_steps / k))
    val, _, steps = state
    if max_steps and not any(isinstance(x, jax.core.Tracer)
                             for x in jax.tree.leaves((val, steps))):
        if int(steps) == max_steps and bool(cond_fun(val)):
            warnings.warn(f"bounded_while_loop stopped at max_steps={max_steps} with its "
                          "condition still true; the value returned is the one after "
                          f"{max_steps} iterations", LoopBoundWarning, stacklevel=2)
    return (val, steps) if return_steps else val
