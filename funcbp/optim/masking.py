"""`masked`: apply a transformation to some parameters and pass the others through.

The usual use is weight decay on weights only, not on biases and normalisation scales:

    optim.masked(optim.add_decayed_weights(1e-4), lambda p: jax.tree.map(lambda x: x.ndim > 1, p))

The inner transformation sees, and keeps state for, only the selected leaves; the others
are replaced by `MaskedNode()` (a pytree node with no leaves) in what it is given.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from funcbp.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)
from funcbp.optim.decay import Mask, _resolve_mask


class MaskedState(NamedTuple):
    """State of `masked`: the inner transformation's state over the selected leaves."""

    inner_state: Any


# optax's own sentinel (an empty NamedTuple), so that masked states have exactly optax's tree
# structure and optax's utilities that look for it (`is_leaf=lambda v: isinstance(v,
# optax.MaskedNode)`) work on funcbp's states too.
MaskedNode = optax.MaskedNode
"""Stands in for a leaf (or subtree) the mask leaves out; it has no leaves itself."""


def _static_bool(m: Any) -> bool:
    if isinstance(m, bool | np.bool_):
        return bool(m)
    if isinstance(m, jax.core.Tracer) or np.ndim(m) != 0 or np.asarray(m).dtype != bool:
        raise TypeError(
            f"masked() needs a mask of Python booleans (one per leaf or subtree), got {m!r}: "
            "which leaves the inner transformation sees must be known when tracing. For an "
            "element-wise mask use add_decayed_weights(wd, mask=boolean_arrays)."
        )
    return bool(m)


def _mask_tree(tree: Any, mask_tree: Any) -> Any:
    return jax.tree.map(lambda m, t: t if _static_bool(m) else MaskedNode(), mask_tree, tree)


def masked(inner: GradientTransformation, mask: Mask) -> GradientTransformationExtraArgs:
    """Apply `inner` to the leaves `mask` selects; pass the other updates through unchanged.

    Formula: `u = inner(g)` on the selected leaves, `u = g` on the others. The inner state
    covers the selected leaves only (`MaskedNode()` stands in for the rest), as in
    `optax.masked`, whose state has the same leaves.

    Args:
        inner: the transformation to restrict (funcbp's or optax's).
        mask: a tree of Python booleans with the params' structure or a prefix of it
            (`{"dense_0": {"w": True, "b": False}, "norm": False}`), or a function
            `tree -> such a tree`, called on the params in `init` and on the updates in
            `update` (as optax does). A mask whose leaves are all callables is a function;
            a callable pytree of booleans (an equinox module) is a tree.

    Returns:
        A `GradientTransformationExtraArgs` with state `MaskedState(inner_state)`.

    Raises:
        ValueError: if the mask does not fit the tree (at `init`/`update`).
        TypeError: if a mask leaf is not a Python boolean.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
        >>> not_biases = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
        >>> tx = optim.masked(optim.add_decayed_weights(0.5), not_biases)
        >>> u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        >>> u["w"][0], u["b"]
        (Array([0.5, 0.5], dtype=float32), Array([0., 0.], dtype=float32))
    """
    if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
        raise TypeError(f"masked's inner must be a gradient transformation, got {inner!r}")
    inner = with_extra_args_support(inner)

    def init(params):
        if not jax.tree.leaves(params):
            # Nothing to mask: e.g. optax.tree.map_params initialises with an empty
            # placeholder tree to find where the params sit in the state.
            return MaskedState(inner_state=inner.init(params))
        mask_tree = _resolve_mask(mask, params)
        return MaskedState(inner_state=inner.init(_mask_tree(params, mask_tree)))

    def update(updates, state, params=None, **extra_args):
        mask_tree = _resolve_mask(mask, updates)
        masked_params = None if params is None else _mask_tree(params, mask_tree)
        new_masked, inner_state = inner.update(
            _mask_tree(updates, mask_tree), state.inner_state, masked_params, **extra_args
        )
        new_updates = jax.tree.map(
            lambda m, new, old: new if _static_bool(m) else old, mask_tree, new_masked, updates
        )
        return new_updates, MaskedState(inner_state=inner_state)

    return GradientTransformationExtraArgs(init, update)


__all__ = ["MaskedNode", "MaskedState", "masked"]
