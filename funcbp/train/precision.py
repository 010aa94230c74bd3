"""Mixed precision: compute in bfloat16 or float16, keep float32 master weights.

``precision="bf16"`` (or ``"f16"``) casts the float parameters and inputs to the compute dtype
inside the step, runs the model there, and casts its outputs back to float32 before the loss;
the gradient flows back through the casts to the float32 parameters, which the optimiser
updates in float32. float16's narrow range needs *dynamic loss scaling*: the objective is
multiplied by a scale ``S`` before differentiating and the gradient divided by it after; a
step whose scaled gradient overflows is skipped and ``S`` halved, and ``S`` doubles after
``period`` good steps in a row (the scheme of Micikevicius et al., "Mixed precision training",
ICLR 2018, and of ``jmp.DynamicLossScale``). bfloat16 has float32's range and needs none.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "PRECISIONS",
    "LossScaleState",
    "LossScaledState",
    "cast_floating",
    "compute_dtype",
    "init_loss_scale",
    "update_loss_scale",
]

PRECISIONS = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}
#: Dynamic loss scaling (float16): start, growth period, factor, smallest scale.
INITIAL_SCALE, PERIOD, FACTOR, MIN_SCALE = 2.0 ** 15, 2000, 2.0, 1.0


class LossScaleState(NamedTuple):
    """The dynamic loss scale: ``scale`` (float32) and ``good_steps`` since it last changed."""

    scale: jax.Array
    good_steps: jax.Array


class LossScaledState(NamedTuple):
    """The optimiser state of a float16 step: the optimiser's own, and the loss scale."""

    opt_state: Any
    loss_scale: LossScaleState


def compute_dtype(precision: str) -> Any:
    """The dtype the model computes in: ``"f32"``, ``"bf16"`` or ``"f16"``.

    Examples:
      >>> from funcbp.train.precision import compute_dtype
      >>> compute_dtype("bf16")
      <class 'jax.numpy.bfloat16'>
    """
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision {precision!r}: choose one of "
                         f"{', '.join(PRECISIONS)}") from None


def cast_floating(tree: Any, dtype: Any) -> Any:
    """``tree`` with every floating-point leaf cast to ``dtype`` (integers untouched).

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp.train.precision import cast_floating
      >>> t = cast_floating({"w": jnp.ones(2), "i": jnp.arange(2)}, jnp.bfloat16)
      >>> t["w"].dtype, t["i"].dtype
      (dtype(bfloat16), dtype('int32'))
    """
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def init_loss_scale(initial: float = INITIAL_SCALE) -> LossScaleState:
    """A fresh dynamic loss scale at ``initial`` (``2**15``)."""
    return LossScaleState(jnp.asarray(initial, jnp.float32), jnp.zeros((), jnp.int32))


def update_loss_scale(state: LossScaleState, grads_finite: jax.Array, *, period: int = PERIOD,
                      factor: float = FACTOR, minimum: float = MIN_SCALE) -> LossScaleState:
    """The next scale: ``S / factor`` after an overflow (not below ``minimum``), ``S * factor``
    after ``period`` finite steps in a row, else ``S``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp.train.precision import init_loss_scale, update_loss_scale
      >>> s = update_loss_scale(init_loss_scale(8.0), jnp.array(False))
      >>> float(s.scale), int(s.good_steps)
      (4.0, 0)
    """
    good = state.good_steps + 1
    grow = good >= period
    scale = jnp.where(grads_finite,
                      jnp.where(grow, state.scale * factor, state.scale),
                      jnp.maximum(state.scale / factor, minimum))
    good = jnp.where(grads_finite & ~grow, good, 0)
    return LossScaleState(scale.astype(jnp.float32), good.astype(jnp.int32))
