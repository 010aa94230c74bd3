"""Weight-decay transformations: add an L2 (`add_decayed_weights`) or L1 term to the gradient.

Both take an optional `mask` choosing the parameters that decay: a pytree of booleans with
the structure of the params (or a prefix of it, e.g. `{"dense_0": True, "norm": False}`),
or a function `params -> such a tree`. Python booleans are resolved when tracing; boolean
arrays also work, through a `where`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.optim.base import (
    NO_PARAMS_MSG,
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    check_float_leaves,
    check_interval,
    check_rate,
    check_updates,
    safe_increment,
)

Mask = Any | Callable[[Any], Any]


def _is_mask_fn(mask: Mask) -> bool:
    """A function `params -> mask`, as opposed to a mask tree that happens to be callable
    (an equinox module of booleans): optax's rule, every leaf of `mask` is callable."""
    leaves = jax.tree.leaves(mask)
    return bool(leaves) and all(callable(leaf) for leaf in leaves)


def _resolve_mask(mask: Mask, params: Any) -> Any:
    mask_tree = mask(params) if _is_mask_fn(mask) else mask
    try:
        jax.tree.map(lambda m, p: None, mask_tree, params)
    except ValueError as e:
        raise ValueError(
            "mask must be a tree of booleans with the structure of params, or a prefix of "
            f"it (one boolean for a whole subtree); got mask structure "
            f"{jax.tree.structure(mask_tree)} for params structure "
            f"{jax.tree.structure(params)}."
        ) from e
    return mask_tree


def _map_masked(fn: Callable, mask: Mask, updates: Any, params: Any) -> Any:
    """`fn(g, p)` on the leaves the mask selects, `g` unchanged elsewhere."""
    if mask is None:
        return jax.tree.map(fn, updates, params)

    def on_subtree(m, u, p):
        if isinstance(m, bool | np.bool_):
            return jax.tree.map(fn, u, p) if m else u
        return jax.tree.map(lambda g, q: jnp.where(m, fn(g, q), g), u, p)

    return jax.tree.map(on_subtree, _resolve_mask(mask, params), updates, params)


class WeightDecaySchedule(NamedTuple):
    """State of a decay term whose coefficient is a schedule: the step count (optax's name)."""

    count: jax.Array  # int32 scalar


def _add_param_term(
    coeff: Any, name: str, term: Callable, mask: Mask, *, signed: bool
) -> GradientTransformation:
    """`g + c_t * term(p)` on the masked leaves, `c_t` a number or a schedule of the step."""
    if signed:
        # Any finite real: optax.fromage decays by a negative coefficient.
        check_interval(coeff, name, -math.inf, low_open=True, schedule_ok=True)
    else:
        check_rate(coeff, name)
    scheduled = callable(coeff)

    def init(params):
        check_float_leaves(params)
        return WeightDecaySchedule(count=jnp.zeros([], jnp.int32)) if scheduled else EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        new_state = WeightDecaySchedule(safe_increment(state.count)) if scheduled else state
        if updates is None:  # optax returns None for None: nothing to add the term to
            return None, new_state
        check_updates(updates, params=params)
        if isinstance(coeff, int | float) and coeff == 0:
            return updates, new_state
        c = coeff(state.count) if scheduled else coeff
        return _map_masked(lambda g, p: g + c * term(p), mask, updates, params), new_state

    return GradientTransformation(init, update)


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0, mask: Mask = None
) -> GradientTransformation:
    """Add `weight_decay * param` to the update: the gradient of `(wd / 2) * |w|^2`.

    Formula: `u_t = g_t + wd_t * p_t` on the masked leaves, `u_t = g_t` elsewhere, where
    `wd_t` is `weight_decay` or, for a schedule, `weight_decay(t)` (`t` counts updates from
    0, kept in the state as in optax).

    Placed before `scale_by_learning_rate` this is L2 regularisation (PyTorch's
    `weight_decay`); placed after `scale_by_adam` it is AdamW's decoupled decay. A mask here
    equals `masked(add_decayed_weights(wd), mask)` (and also takes boolean arrays).

    Args:
        weight_decay: `wd`, any finite number (negative grows the weights, as
            `optax.fromage` uses), or a schedule `step -> wd`.
        mask: which parameters decay (see the module docstring); `None` for all.

    Returns:
        A `GradientTransformation` with state `EmptyState()`, or `WeightDecaySchedule(count)`
        for a schedule; `update` needs `params`. `update(None, state, params)` returns
        `(None, state)`, as optax's does.

    Raises:
        ValueError: for a NaN or infinite `weight_decay`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> p = {"w": jnp.array([2.0]), "b": jnp.array([2.0])}
        >>> tx = optim.add_decayed_weights(0.1, mask={"w": True, "b": False})
        >>> g = {"w": jnp.array([1.0]), "b": jnp.array([1.0])}
        >>> u, _ = tx.update(g, tx.init(p), p)
        >>> u["w"], u["b"]
        (Array([1.2], dtype=float32), Array([1.], dtype=float32))
        >>> tx = optim.add_decayed_weights(lambda t: 0.1 * (t + 1))  # a schedule
        >>> state = tx.init(p)
        >>> u, state = tx.update(g, state, p)
        >>> u, state = tx.update(g, state, p)
        >>> u["w"]  # 1 + 0.2 * 2
        Array([1.4], dtype=float32)

    Reference: Loshchilov and Hutter, Decoupled Weight Decay Regularization, 2019.
    """
    return _add_param_term(weight_decay, "weight_decay", lambda p: p, mask, signed=True)


def add_l1_decay(l1: float = 0.0, mask: Mask = None) -> GradientTransformation:
    """Add `l1 * sign(param)` to the update: a subgradient of `l1 * |w|_1` (0 at w = 0).

    Formula: `u = g + l1 * sign(p)` on the masked leaves, `u = g` elsewhere. optax has no
    counterpart.

    Args:
        l1: the L1 coefficient, `>= 0`.
        mask: which parameters decay (see the module docstring); `None` for all.

    Returns:
        A stateless `GradientTransformation`; `update` needs `params`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> p = jnp.array([-2.0, 0.0, 3.0])
        >>> tx = optim.add_l1_decay(0.5)
        >>> tx.update(jnp.zeros(3), tx.init(p), p)[0]
        Array([-0.5,  0. ,  0.5], dtype=float32)
    """
    return _add_param_term(l1, "l1", jnp.sign, mask, signed=False)


__all__ = ["WeightDecaySchedule", "add_decayed_weights", "add_l1_decay"]
