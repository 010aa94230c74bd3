"""Measurements kept in the optimiser state: the pre-clipping gradient norm, snapshots.

A monitor is a transformation that returns its updates unchanged and records something
about them in its state; `tree_get(state, name)` finds the record in a chain's state:

    tx = optim.chain(optim.monitor_global_norm(), optim.clip_by_global_norm(1.0), optim.adam(1e-3))
    ...
    updates, state = tx.update(grads, state, params)
    optim.tree_get(state, "grad_norm")      # the norm before clipping
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcbp.optim.base import (
    GradientTransformation,
    Updates,
    check_float_leaves,
    check_updates,
    global_norm,
)


class SnapshotState(NamedTuple):
    """State of `snapshot` and `monitor_global_norm`: `{measure_name: measurement}`."""

    measurement: dict[str, Any]


def snapshot(measure_name: str, measure: Callable[[Updates], Any]) -> GradientTransformation:
    """Record `measure(updates)` in the state and pass the updates on (optax's `snapshot`).

    Formula: `u = g`, state `{measure_name: measure(g)}`; `init` records `measure(params)`,
    as optax does (so the state keeps one shape and dtype from step to step).

    Args:
        measure_name: the key of the measurement, for `tree_get(state, measure_name)`.
        measure: a function of the updates returning an array or a pytree of arrays.

    Returns:
        A `GradientTransformation` with state `SnapshotState(measurement)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.snapshot("max", lambda u: jnp.max(jnp.abs(u)))
        >>> u, state = tx.update(jnp.array([3.0, -4.0]), tx.init(jnp.zeros(2)))
        >>> state.measurement["max"]
        Array(4., dtype=float32)
    """
    if not isinstance(measure_name, str):
        raise TypeError(f"measure_name must be a str, got {measure_name!r}")

    def init(params):
        return SnapshotState({measure_name: measure(params)})

    def update(updates, state, params=None):
        del params, state
        return updates, SnapshotState({measure_name: measure(updates)})

    return GradientTransformation(init, update)


def monitor_global_norm(measure_name: str = "grad_norm") -> GradientTransformation:
    """Record the global L2 norm of the incoming updates; pass them on unchanged.

    Formula: `u = g`, state `{measure_name: sqrt(sum over leaves of sum(g^2))}`. Placed first
    in a `chain`, before `clip_by_global_norm`, it records the gradient's norm before
    clipping, which the trainer can log:

        tx = chain(monitor_global_norm(), clip_by_global_norm(1.0), adamw(1e-3))
        norm = tree_get(state, "grad_norm")

    The norm is kept in float32 (or the params' dtype when wider), so bfloat16 gradients do
    not change the state's dtype under `jax.jit`; it is 0 after `init`.

    Args:
        measure_name: the key under which the norm is stored.

    Returns:
        A `GradientTransformation` with state `SnapshotState({measure_name: norm})`; the
        same as `optax.snapshot(measure_name, optax.tree.norm)` after the first update.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.chain(optim.monitor_global_norm(), optim.clip_by_global_norm(1.0))
        >>> g = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
        >>> u, state = tx.update(g, tx.init(g))
        >>> optim.tree_get(state, "grad_norm"), u["b"]
        (Array(5., dtype=float32), Array([0.8], dtype=float32))
    """
    if not isinstance(measure_name, str):
        raise TypeError(f"measure_name must be a str, got {measure_name!r}")

    def init(params):
        check_float_leaves(params)
        dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
        dtype = jnp.result_type(jnp.float32, *dtypes)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            dtype = jnp.finfo(dtype).dtype  # a norm is real
        return SnapshotState({measure_name: jnp.zeros([], dtype)})

    def update(updates, state, params=None):
        check_updates(updates, params=params)
        dtype = state.measurement[measure_name].dtype
        norm = global_norm(
            jax.tree.map(lambda g: g.astype(jnp.promote_types(g.dtype, dtype)), updates)
        )
        return updates, SnapshotState({measure_name: norm.astype(dtype)})

    return GradientTransformation(init, update)


def _children(node: Any) -> list[tuple[str, Any]]:
    """`(name, child)` pairs of a dict, NamedTuple, tuple or list; nothing for a leaf."""
    if isinstance(node, dict):
        return [(str(k), v) for k, v in node.items()]
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return list(zip(node._fields, node, strict=True))
    if isinstance(node, tuple | list):
        return [(f"[{i}]", v) for i, v in enumerate(node)]
    return []


def tree_get(tree: Any, key: str, default: Any = None) -> Any:
    """The value stored under `key` (a dict key or NamedTuple field) anywhere in `tree`.

    Used to read monitors and injected hyperparameters out of a chain's state, e.g.
    `tree_get(state, "grad_norm")` or `tree_get(state, "learning_rate")`; optax's
    `optax.tree.get` for funcbp's and optax's states alike.

    Args:
        tree: an optimiser state (nested tuples, NamedTuples, dicts and lists).
        key: the name to look for.
        default: returned when `key` occurs nowhere.

    Returns:
        The one value stored under `key`, or `default`.

    Raises:
        KeyError: if `key` occurs more than once (the message lists where).

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.inject_hyperparams(optim.adam)(learning_rate=1e-3)
        >>> optim.tree_get(tx.init(jnp.zeros(2)), "learning_rate")
        Array(0.001, dtype=float32)
    """
    found: list[tuple[str, Any]] = []

    def walk(node, path):
        for name, child in _children(node):
            child_path = f"{path}.{name}" if not name.startswith("[") else f"{path}{name}"
            if name == key:
                found.append((child_path, child))
            else:
                walk(child, child_path)

    walk(tree, "state")
    if len(found) > 1:
        raise KeyError(
            f"{key!r} occurs {len(found)} times in the state ({', '.join(p for p, _ in found)}); "
            "read it from one of these paths instead."
        )
    return found[0][1] if found else default


__all__ = ["SnapshotState", "monitor_global_norm", "snapshot", "tree_get"]
