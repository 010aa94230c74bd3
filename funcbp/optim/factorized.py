"""Adafactor's parts: the factored second-moment rescaling and the parameter-scale factor.

Both follow optax's `scale_by_factored_rms` and `scale_by_param_block_rms` step for step, so
`adafactor` (a `chain` in `funcbp.optim.aliases`) gives optax's numbers and optax's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.optim.base import (
    NO_PARAMS_MSG,
    GradientTransformation,
    abs_sq,
    check_float_leaves,
    check_rate,
    check_updates,
    init_empty_state,
    safe_increment,
)


class FactoredState(NamedTuple):
    """State of `scale_by_factored_rms` (optax's fields).

    Attributes:
        count: the number of updates so far (int32).
        v_row: per leaf, the row statistics of a factored leaf (shape: the leaf's without its
            largest axis), or a `(1,)` placeholder.
        v_col: per leaf, the column statistics of a factored leaf (shape: without its second
            largest axis), or a `(1,)` placeholder.
        v: per leaf, the full second moment of a leaf that is not factored, or a `(1,)`
            placeholder.
    """

    count: jax.Array
    v_row: Any
    v_col: Any
    v: Any


def decay_rate_pow(step: jax.typing.ArrayLike, exponent: float = 0.8) -> jax.Array:
    """Adafactor's second-moment decay at a step: `beta2_t = 1 - (t + 1)^(-exponent)`."""
    t = jnp.array(step + 1, jnp.float32)
    return 1.0 - t ** (-exponent)


def factored_dims(
    shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """The axes `(d1, d0)` a leaf's second moment is factored over, or None.

    `d0` is the largest axis and `d1` the second largest (for equal sizes, the later axis
    counts as larger); a leaf is factored when it has two or more axes and `d1` has at
    least `min_dim_size_to_factor` entries.
    """
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape, kind="stable")
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _placeholder(dtype: Any) -> jax.Array:
    return jnp.zeros((1,), dtype)


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
    decay_rate_fn: Callable[[jax.Array, float], jax.Array] = decay_rate_pow,
) -> GradientTransformation:
    """Scale by a factored estimate of the root mean square of the updates (Adafactor's).

    Formula for a leaf factored over axes `(d1, d0)` (`b_t = decay_rate_fn(t - step_offset,
    decay_rate)`, by default `1 - (t - step_offset + 1)^(-decay_rate)`; `G = g^2 + epsilon`):

        R_t = b_t * R_{t-1} + (1 - b_t) * mean(G, axis=d0)      (v_row: d0 removed)
        C_t = b_t * C_{t-1} + (1 - b_t) * mean(G, axis=d1)      (v_col: d1 removed)
        u_t = g * (R_t / mean(R_t over d1))^(-1/2)  [broadcast along d0]
                * C_t^(-1/2)                        [broadcast along d1]

    and for any other leaf: `V_t = b_t * V_{t-1} + (1 - b_t) * G`, `u_t = g * V_t^(-1/2)`.
    The factored form keeps `O(rows + cols)` numbers instead of `O(rows * cols)`.

    Args:
        factored: factor leaves with two or more axes (False: never).
        decay_rate: the exponent of the decay schedule.
        step_offset: subtracted from the step count (to restart the schedule when
            fine-tuning).
        min_dim_size_to_factor: factor only when the second largest axis is at least this.
        epsilon: added to the squared updates.
        decay_rate_fn: `(step, decay_rate) -> b_t`.

    Returns:
        A `GradientTransformation` with state `FactoredState(count, v_row, v_col, v)`;
        `update` needs `params`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale_by_factored_rms(min_dim_size_to_factor=2)
        >>> p = jnp.ones((2, 3))
        >>> state = tx.init(p)
        >>> state.v_row.shape, state.v_col.shape, state.v.shape
        ((2,), (3,), (1,))
        >>> u, state = tx.update(jnp.full((2, 3), 2.0), state, p)
        >>> u[0, 0]  # 2 / sqrt(4): the step is the sign where |g| is uniform
        Array(1., dtype=float32)

    Reference: Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost, 2018.
    """
    check_rate(epsilon, "epsilon")
    if isinstance(min_dim_size_to_factor, bool) or not isinstance(min_dim_size_to_factor, int):
        raise TypeError(
            f"min_dim_size_to_factor must be an int, got {min_dim_size_to_factor!r} (it decides "
            "array shapes, so it cannot be a traced value: list it in inject_hyperparams' "
            "static_args)."
        )

    def dims(p):
        return factored_dims(jnp.shape(p), factored, min_dim_size_to_factor)

    def init(params):
        check_float_leaves(params)

        def v_row(p):
            d = dims(p)
            return _placeholder(p.dtype) if d is None else jnp.zeros(_drop(p.shape, d[1]), p.dtype)

        def v_col(p):
            d = dims(p)
            return _placeholder(p.dtype) if d is None else jnp.zeros(_drop(p.shape, d[0]), p.dtype)

        def v(p):
            return jnp.zeros_like(p) if dims(p) is None else _placeholder(p.dtype)

        return FactoredState(
            count=jnp.zeros([], jnp.int32),
            v_row=jax.tree.map(v_row, params),
            v_col=jax.tree.map(v_col, params),
            v=jax.tree.map(v, params),
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        check_updates(updates, params=params)  # state.v's leaves are placeholders, not shapes
        b = decay_rate_fn(state.count - step_offset, decay_rate)

        def leaf(g, r, c, v, p):
            dtype = p.dtype
            g_sq = abs_sq(g) + epsilon
            d = dims(p)
            if d is None:
                new_v = (b * v + (1.0 - b) * g_sq).astype(dtype)
                return g * new_v**-0.5, _placeholder(dtype), _placeholder(dtype), new_v
            d1, d0 = d
            new_r = (b * r + (1.0 - b) * jnp.mean(g_sq, axis=d0)).astype(dtype)
            new_c = (b * c + (1.0 - b) * jnp.mean(g_sq, axis=d1)).astype(dtype)
            # d1's position in v_row, which has lost axis d0.
            r_mean = jnp.mean(new_r, axis=d1 - 1 if d1 > d0 else d1, keepdims=True)
            row_factor = (new_r / r_mean) ** -0.5
            col_factor = new_c**-0.5
            u = g * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
            return u, new_r, new_c, _placeholder(dtype)

        flat_g, treedef = jax.tree.flatten(updates)
        others = [treedef.flatten_up_to(t) for t in (state.v_row, state.v_col, state.v, params)]
        results = [leaf(*args) for args in zip(flat_g, *others, strict=True)]
        u, r, c, v = (treedef.unflatten(list(x)) for x in zip(*results, strict=True))
        return u, FactoredState(count=safe_increment(state.count), v_row=r, v_col=c, v=v)

    return GradientTransformation(init, update)


def _drop(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def _safe_rms(x: jax.Array, min_rms: float) -> jax.Array:
    """`max(sqrt(mean(|x|^2)), min_rms)`, with a finite gradient at `x = 0`."""
    rms = jnp.sqrt(jnp.mean(abs_sq(x)))
    # Replacing x before the second root keeps d sqrt at 0 out of the gradient, whose
    # 0 * inf would otherwise be NaN even though the branch is not taken.
    x = jnp.where(rms <= min_rms, jnp.ones_like(x), x)
    return jnp.where(rms <= min_rms, min_rms, jnp.sqrt(jnp.mean(abs_sq(x))))


def scale_by_param_block_rms(min_scale: float = 1e-3) -> GradientTransformation:
    """Scale each leaf's update by the root mean square of that parameter leaf.

    Formula: `u = g * max(rms(p), min_scale)` per leaf, `rms(p) = sqrt(mean(p^2))`, so the
    step is relative to the parameter's own size (Adafactor's `multiply_by_parameter_scale`).

    Args:
        min_scale: the floor on the factor, for parameters near zero.

    Returns:
        A stateless `GradientTransformation`; `update` needs `params`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale_by_param_block_rms()
        >>> p = jnp.array([3.0, -3.0])
        >>> tx.update(jnp.array([1.0, 2.0]), tx.init(p), p)[0]
        Array([3., 6.], dtype=float32)
    """
    check_rate(min_scale, "min_scale")

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        check_updates(updates, params=params)
        return jax.tree.map(lambda u, p: u * _safe_rms(p, min_scale), updates, params), state

    return GradientTransformation(init_empty_state, update)


__all__ = [
    "FactoredState",
    "decay_rate_pow",
    "factored_dims",
    "scale_by_factored_rms",
    "scale_by_param_block_rms",
]
