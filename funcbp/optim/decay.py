"""Weight-decay transformations: add an L2 (`add_decayed_weights`) or L1 term to the gradient.

Both take an optional `mask` choosing the parameters that decay: a pytree of booleans with
the structure of the params (or a prefix of it, e.g. `{"dense_0": True, "norm": False}`),
or a function `params -> such a tree`. Python booleans are resolved when tracing; boolean
arrays also work, through a `where`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.optim.base import (
    NO_PARAMS_MSG,
    GradientTransformation,
    check_rate,
    check_updates,
    init_empty_state,
)

Mask = Any | Callable[[Any], Any]


def _resolve_mask(mask: Mask, params: Any) -> Any:
    mask_tree = mask(params) if callable(mask) else mask
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


def _add_param_term(coeff: Any, name: str, term: Callable, mask: Mask) -> GradientTransformation:
    check_rate(coeff, name)
    if callable(coeff):
        raise TypeError(f"{name} must be a number, got the callable {coeff!r}")

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        check_updates(updates, params=params)
        if isinstance(coeff, int | float) and coeff == 0:
            return updates, state
        return _map_masked(lambda g, p: g + coeff * term(p), mask, updates, params), state

    return GradientTransformation(init_empty_state, update)


def add_decayed_weights(weight_decay: float = 0.0, mask: Mask = None) -> GradientTransformation:
    """Add `weight_decay * param` to the update: the gradient of `(wd / 2) * |w|^2`.

    Formula: `u = g + wd * p` on the masked leaves, `u = g` elsewhere.

    Placed before `scale_by_learning_rate` this is L2 regularisation (PyTorch's
    `weight_decay`); placed after `scale_by_adam` it is AdamW's decoupled decay.

    Args:
        weight_decay: `wd >= 0`.
        mask: which parameters decay (see the module docstring); `None` for all.

    Returns:
        A stateless `GradientTransformation`; `update` needs `params`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> p = {"w": jnp.array([2.0]), "b": jnp.array([2.0])}
        >>> tx = optim.add_decayed_weights(0.1, mask={"w": True, "b": False})
        >>> g = {"w": jnp.array([1.0]), "b": jnp.array([1.0])}
        >>> u, _ = tx.update(g, tx.init(p), p)
        >>> u["w"], u["b"]
        (Array([1.2], dtype=float32), Array([1.], dtype=float32))
    """
    return _add_param_term(weight_decay, "weight_decay", lambda p: p, mask)


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
    return _add_param_term(l1, "l1", jnp.sign, mask)


__all__ = ["add_decayed_weights", "add_l1_decay"]
