"""Clipping transformations: element-wise and by the global norm (optax's semantics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcbp.optim.base import (
    GradientTransformation,
    abs_sq,
    check_rate,
    check_updates,
    global_norm,
    init_empty_state,
)


def clip(max_delta: jax.typing.ArrayLike) -> GradientTransformation:
    """Clip each update element to `[-max_delta, max_delta]`: `u = clip(g, -c, c)`.

    Args:
        max_delta: the bound `c >= 0` on each element's magnitude.

    Returns:
        A stateless `GradientTransformation`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.clip(1.0)
        >>> tx.update(jnp.array([-3.0, 0.5, 2.0]), tx.init(jnp.zeros(3)))[0]
        Array([-1. ,  0.5,  1. ], dtype=float32)
    """
    check_rate(max_delta, "max_delta")

    def update(updates, state, params=None):
        check_updates(updates, params=params)
        return jax.tree.map(lambda g: jnp.clip(g, -max_delta, max_delta), updates), state

    return GradientTransformation(init_empty_state, update)


def clip_by_global_norm(max_norm: jax.typing.ArrayLike) -> GradientTransformation:
    """Rescale all updates together so that their global L2 norm is at most `max_norm`.

    Formula (`n = global_norm(g)`, `c = max_norm`):

        u = g                 if n < c
        u = (g / n) * c       otherwise

    The choice is a `where`, not `g * min(1, c / n)`, as in optax (it keeps gradients
    through the update well defined), so results agree with optax bit for bit.

    Args:
        max_norm: the largest global norm `c > 0` let through.

    Returns:
        A stateless `GradientTransformation`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.clip_by_global_norm(1.0)
        >>> g = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
        >>> tx.update(g, tx.init(g))[0]["b"]
        Array([0.8], dtype=float32)

    Reference: Pascanu et al., On the difficulty of training recurrent neural networks, 2013.
    """
    check_rate(max_norm, "max_norm")

    def update(updates, state, params=None):
        check_updates(updates, params=params)
        g_norm = global_norm(updates)
        keep = g_norm < max_norm
        updates = jax.tree.map(
            lambda t: jnp.where(keep, t, (t / g_norm.astype(t.dtype)) * max_norm), updates
        )
        return updates, state

    return GradientTransformation(init_empty_state, update)


def clip_by_block_rms(threshold: jax.typing.ArrayLike) -> GradientTransformation:
    """Scale each leaf down so that its root mean square is at most `threshold`.

    Formula (per leaf): `u = g / max(1, rms(g) / threshold)`, `rms(g) = sqrt(mean(g^2))`
    (Adafactor's update clipping, optax's `clip_by_block_rms`).

    Args:
        threshold: the largest root mean square `d > 0` a leaf's update may keep.

    Returns:
        A stateless `GradientTransformation`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.clip_by_block_rms(1.0)
        >>> tx.update(jnp.array([3.0, -3.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1., -1.], dtype=float32)

    Reference: Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost, 2018, section 6.
    """
    check_rate(threshold, "threshold")

    def update(updates, state, params=None):
        check_updates(updates, params=params)
        f = lambda g: g / jnp.maximum(1.0, jnp.sqrt(jnp.mean(abs_sq(g))) / threshold)
        return jax.tree.map(f, updates), state

    return GradientTransformation(init_empty_state, update)


__all__ = ["clip", "clip_by_block_rms", "clip_by_global_norm"]
