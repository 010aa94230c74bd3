"""Combinators: `chain` transformations, skip non-finite steps, accumulate micro-batches."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcbp.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Updates,
    accepts_extra_args,
    check_float_leaves,
    check_updates,
    safe_increment,
    tree_select,
)


def _check_transform(tx: Any, where: str) -> None:
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"{where} must be a gradient transformation (an object with `init` and "
            f"`update`, from funcbp.optim or optax), got {tx!r}"
        )


def _cast_like(tree: Any, like: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.asarray(x).astype(jnp.result_type(y)), tree, like)


def chain(*transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    """Apply transformations one after the other: `u = f_n(... f_2(f_1(g)))`.

    The state is the tuple of the states of the parts, in order. Parts may be funcbp's
    or optax's transformations; keyword arguments given to `update` (optax's "extra args")
    reach the parts that take them (`GradientTransformationExtraArgs` instances, or an
    `update` with `**kwargs`) and are dropped for the others, as in `optax.chain`.

    Args:
        *transforms: the transformations, applied first to last.

    Returns:
        A `GradientTransformationExtraArgs` (so `isinstance(tx,
        optax.GradientTransformationExtraArgs)` holds, as for `optax.chain`) with state
        `tuple(part states)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.chain(optim.clip(1.0), optim.scale(-0.1))
        >>> tx.update(jnp.array([5.0]), tx.init(jnp.zeros(1)))[0]
        Array([-0.1], dtype=float32)
    """
    for i, tx in enumerate(transforms):
        _check_transform(tx, f"chain argument {i}")
    takes_extra = [accepts_extra_args(tx) for tx in transforms]

    def init(params):
        return tuple(tx.init(params) for tx in transforms)

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            n = len(state) if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"chain of {len(transforms)} transformations got a state with {n} entries; "
                "pass the state returned by this chain's `init` (or its last `update`)."
            )
        new_state = []
        for tx, s, extra in zip(transforms, state, takes_extra, strict=True):
            updates, s = tx.update(updates, s, params, **(extra_args if extra else {}))
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformationExtraArgs(init, update)


class SkipNonfiniteState(NamedTuple):
    """State of `skip_nonfinite`.

    Attributes:
        inner_state: the wrapped transformation's state.
        notfinite_count: how many steps have been skipped so far (int32).
        last_finite: whether the last step's updates were all finite (bool).
    """

    inner_state: OptState
    notfinite_count: jax.Array
    last_finite: jax.Array


def all_finite(tree: Any) -> jax.Array:
    """True when no leaf of `tree` contains a NaN or an infinity."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves]))


def skip_nonfinite(inner: GradientTransformation) -> GradientTransformation:
    """Skip any step whose incoming updates contain NaN or inf, and count the skips.

    On a step with a non-finite value anywhere in `g`: `u = 0`, the inner state is kept
    unchanged (as if the step never happened) and `notfinite_count` grows by one.
    Otherwise `u, s = inner.update(g, s, params)`. This is optax's `apply_if_finite`
    with no limit on consecutive skips, except that it tests the incoming updates.

    Args:
        inner: the transformation to protect (usually the whole optimiser).

    Returns:
        A `GradientTransformation` with state
        `SkipNonfiniteState(inner_state, notfinite_count, last_finite)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.skip_nonfinite(optim.sgd(0.1))
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([1.0, jnp.nan]), state)
        >>> u, state.notfinite_count
        (Array([0., 0.], dtype=float32), Array(1, dtype=int32))
    """
    _check_transform(inner, "skip_nonfinite's inner")

    def init(params):
        check_float_leaves(params)
        return SkipNonfiniteState(
            inner_state=inner.init(params),
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True),
        )

    def update(updates, state, params=None):
        check_updates(updates, params=params)
        finite = all_finite(updates)
        # Both outcomes are computed and one selected (as optax's MultiSteps does): no
        # lax.cond, so eager steps need no compilation and vmap sees no branches.
        new_updates, new_inner = inner.update(updates, state.inner_state, params)
        new_updates = tree_select(finite, new_updates, jax.tree.map(jnp.zeros_like, updates))
        inner_state = tree_select(finite, new_inner, state.inner_state)
        count = jnp.where(finite, state.notfinite_count, safe_increment(state.notfinite_count))
        return new_updates, SkipNonfiniteState(inner_state, count, finite)

    return GradientTransformation(init, update)


class AccumulateState(NamedTuple):
    """State of `accumulate` (field names as `optax.MultiStepsState`).

    Attributes:
        mini_step: micro-batches accumulated since the last inner step, in `[0, k)`.
        gradient_step: inner steps taken so far.
        inner_opt_state: the wrapped transformation's state.
        acc_grads: running mean of the gradients of the current group.
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: OptState
    acc_grads: Updates


def accumulate(
    inner: GradientTransformation, every_k: int, accumulator_dtype: Any = None
) -> GradientTransformation:
    """Gradient accumulation: one inner step on the mean of every `k` micro-batch gradients.

    Formula (`j` = `mini_step`, `a` = `acc_grads`):

        a <- a + (g - a) / (j + 1)              (running mean of the group)
        if j == k - 1:  u, s = inner.update(a, s, params);  a <- 0
        else:           u = 0,  s unchanged

    The returned updates are zero on the first `k - 1` calls of each group, so parameters
    move once per `k` micro-batches, and the inner state (its step count, momentum, ...)
    advances once per group. Matches `optax.MultiSteps(inner, k)`. The inner update is
    computed on every call and selected, which keeps the step free of branches.

    Args:
        inner: the transformation applied to the averaged gradient.
        every_k: the number `k >= 1` of micro-batches per step.
        accumulator_dtype: dtype of `acc_grads`; `None` keeps the params' dtypes.

    Returns:
        A `GradientTransformation` with state
        `AccumulateState(mini_step, gradient_step, inner_opt_state, acc_grads)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.accumulate(optim.sgd(1.0), every_k=2)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([1.0]), state)   # held back
        >>> tx.update(jnp.array([3.0]), state)[0]           # -mean(1, 3)
        Array([-2.], dtype=float32)
    """
    _check_transform(inner, "accumulate's inner")
    if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
        raise ValueError(f"every_k must be an int >= 1, got {every_k!r}")

    def init(params):
        check_float_leaves(params)
        return AccumulateState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=jnp.zeros([], jnp.int32),
            inner_opt_state=inner.init(params),
            acc_grads=jax.tree.map(lambda p: jnp.zeros_like(p, dtype=accumulator_dtype), params),
        )

    def update(updates, state, params=None):
        check_updates(updates, state.acc_grads, "state.acc_grads", params)
        acc = jax.tree.map(
            lambda g, a: a + (g - a) / (state.mini_step + 1), updates, state.acc_grads
        )
        emit = state.mini_step == every_k - 1
        # The inner step is computed on every call and kept only when `emit` (see
        # skip_nonfinite for why a select rather than lax.cond).
        new_updates, new_inner = inner.update(
            _cast_like(acc, updates), state.inner_opt_state, params
        )
        new_updates = tree_select(emit, new_updates, jax.tree.map(jnp.zeros_like, updates))
        inner_state = tree_select(emit, new_inner, state.inner_opt_state)
        new_state = AccumulateState(
            mini_step=safe_increment(state.mini_step) % every_k,
            gradient_step=jnp.where(emit, safe_increment(state.gradient_step), state.gradient_step),
            inner_opt_state=inner_state,
            acc_grads=jax.tree.map(
                lambda a, old: jnp.where(emit, jnp.zeros_like(a), a).astype(old.dtype),
                acc,
                state.acc_grads,
            ),
        )
        return new_updates, new_state

    return GradientTransformation(init, update)


__all__ = [
    "AccumulateState",
    "SkipNonfiniteState",
    "accumulate",
    "all_finite",
    "chain",
    "skip_nonfinite",
]
