"""The gradient-transformation interface, its checks, and `apply_updates`.

A gradient transformation is a pair of pure functions in a `NamedTuple`, exactly as in
optax, so that funcbp's transformations run inside `optax.chain` and optax's inside ours:

    init(params) -> state
    update(updates, state, params=None) -> (updates, state)

Every state is a `NamedTuple` of arrays and pytrees: `jax.jit`, `jax.tree_util` and
checkpointing handle it like any other pytree.

The two classes subclass optax's namesakes, so `isinstance(tx, optax.GradientTransformation)`
(and, for chains and aliases, `optax.GradientTransformationExtraArgs`) holds for funcbp's
transformations: optax's wrappers and type checks treat them as their own. This is the one
place funcbp.optim imports optax (a dependency either way; `import funcbp` alone does not
load it, since `funcbp.optim` is imported on first use).

The checks in this module run in Python on tree structures, shapes and dtypes, which are
static under `jax.jit`: they cost nothing in a compiled step.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any
"""A pytree of arrays: the model parameters, usually nested dicts."""
Updates = Any
"""A pytree with the structure of `Params`: gradients or the updates made from them."""
OptState = Any
"""An optimiser state: a `NamedTuple` (or tuple of them) of arrays and pytrees."""
Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]
"""A function from the step count (an int or int32 array) to a value such as a rate."""
ScalarOrSchedule = float | jax.Array | Schedule


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(optax.GradientTransformation):
    """A pair of pure functions `(init, update)`, optax's interface.

    `init(params)` builds the initial state from example parameters; `update(updates,
    state, params=None)` maps incoming updates (usually gradients) and the state to new
    updates and the next state. It is a subclass of `optax.GradientTransformation` (a
    `NamedTuple` with the same two fields), so optax accepts it wherever it accepts its own.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.sgd(0.1)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        >>> optim.apply_updates(params, updates)["w"]
        Array([0.9, 0.9, 0.9], dtype=float32)
    """

    __slots__ = ()
    init: TransformInitFn
    update: TransformUpdateFn


class GradientTransformationExtraArgs(
    GradientTransformation, optax.GradientTransformationExtraArgs
):
    """A `GradientTransformation` whose `update` also takes keyword "extra args".

    `update(updates, state, params=None, **extra_args)`: what `chain`, `masked`,
    `inject_hyperparams` and every alias return, as in optax. Extra args (e.g. `value=` for
    `optax.polyak_sgd`) are passed on to the parts that take them and ignored elsewhere.
    It subclasses both funcbp's `GradientTransformation` and
    `optax.GradientTransformationExtraArgs`, so either library's `isinstance` checks pass.

    Examples:
        >>> import optax
        >>> from funcbp import optim
        >>> tx = optim.chain(optim.clip(1.0), optim.scale(-0.1))
        >>> isinstance(tx, optax.GradientTransformationExtraArgs)
        True
    """

    __slots__ = ()


def accepts_extra_args(tx: Any) -> bool:
    """Whether `tx.update` takes extra keyword args: an ExtraArgs instance or a `**kwargs`."""
    if isinstance(tx, optax.GradientTransformationExtraArgs):
        return True
    try:
        params = inspect.signature(tx.update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def with_extra_args_support(tx: Any) -> GradientTransformationExtraArgs:
    """`tx` with an `update` that accepts (and drops, if `tx` cannot take them) extra args.

    Args:
        tx: a funcbp or optax transformation.

    Returns:
        A `GradientTransformationExtraArgs` (`tx` itself when it already is one of funcbp's).

    Examples:
        >>> from funcbp import optim
        >>> tx = optim.with_extra_args_support(optim.scale(2.0))
        >>> tx.update(1.0, tx.init(0.0), loss=3.0)[0]
        2.0
    """
    if isinstance(tx, GradientTransformationExtraArgs):
        return tx
    if accepts_extra_args(tx):
        return GradientTransformationExtraArgs(tx.init, tx.update)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return tx.update(updates, state, params)

    return GradientTransformationExtraArgs(tx.init, update)


class EmptyState(NamedTuple):
    """The state of a stateless transformation (no leaves)."""


NO_PARAMS_MSG = (
    "this transformation needs the current parameters: call "
    "`update(updates, state, params)` with `params`."
)


# --------------------------------------------------------------------------- checks


def _path_str(path: tuple) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def check_rate(value: Any, name: str = "learning_rate") -> None:
    """Raise ValueError if a numeric rate is negative or NaN; callables pass untouched.

    Tracers (a rate computed inside `jax.jit`) cannot be inspected and pass too.
    """
    if callable(value) or isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub" or arr.ndim != 0:
        raise TypeError(
            f"{name} must be a scalar number or a callable step -> value, got {value!r}"
        )
    v = float(arr)
    if math.isnan(v) or v < 0:
        hint = (
            " (give the step size; the minus sign is applied for you)" if "learning" in name else ""
        )
        raise ValueError(f"{name} must be a non-negative number, got {value!r}{hint}.")


def _concrete_scalar(value: Any, name: str, schedule_ok: bool) -> float | None:
    """The float value of a scalar hyperparameter, or None when it cannot be inspected."""
    if isinstance(value, jax.core.Tracer):
        return None  # a value computed inside jit (e.g. by inject_hyperparams)
    if callable(value):
        if schedule_ok:
            return None
        raise TypeError(
            f"{name} must be a number, got the callable {value!r}; to change it during "
            f"training, wrap the optimiser: optim.inject_hyperparams(factory)({name}=schedule)."
        )
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.ndim != 0:
        kind = "a number or a schedule step -> value" if schedule_ok else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__}).")
    return float(arr)


def check_interval(
    value: Any,
    name: str,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = True,
    schedule_ok: bool = False,
) -> None:
    """Raise ValueError unless `low <= value < high` (bounds open or closed as asked).

    Numbers and 0-d arrays are checked; tracers pass, and callables pass when `schedule_ok`
    (otherwise a TypeError says how to schedule the value). The message names `name`.
    """
    v = _concrete_scalar(value, name, schedule_ok)
    if v is None:
        return
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if not (above and below):  # NaN fails both
        if low == -math.inf and high == math.inf:
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
        interval = (
            f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            if high != math.inf
            else f"{'>' if low_open else '>='} {low:g}"
        )
        where = f"in {interval}" if high != math.inf else interval
        raise ValueError(f"{name} must be {where}, got {value!r}.")


def check_float_leaves(tree: Any, what: str = "params") -> None:
    """Raise TypeError naming the first leaf of `tree` whose dtype is not floating point."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{what}{_path_str(path)} has dtype {dtype}; optimisers only update "
                "floating-point leaves. Cast it (e.g. jnp.asarray(x, jnp.float32)) or keep "
                "integer/boolean values out of the tree you optimise."
            )


def check_tree_match(tree: Any, reference: Any, what: str, ref_what: str) -> None:
    """Raise ValueError if `tree` and `reference` differ in structure or leaf shapes.

    The message names the key paths present in one tree and not the other, or the first
    leaf whose shape differs.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    ref_flat, ref_treedef = jax.tree_util.tree_flatten_with_path(reference)
    if treedef != ref_treedef:
        paths = {_path_str(p) for p, _ in flat}
        ref_paths = {_path_str(p) for p, _ in ref_flat}
        extra = sorted(paths - ref_paths)[:5]
        missing = sorted(ref_paths - paths)[:5]
        detail = []
        if extra:
            detail.append(f"only in {what}: {', '.join(extra)}")
        if missing:
            detail.append(f"only in {ref_what}: {', '.join(missing)}")
        if not detail:
            detail.append(f"containers differ: {treedef} vs {ref_treedef}")
        raise ValueError(
            f"{what} and {ref_what} have different tree structures ({'; '.join(detail)}). "
            "The optimiser state must come from `init` on parameters with the same "
            "structure as the updates."
        )
    for (path, leaf), (_, ref_leaf) in zip(flat, ref_flat, strict=True):
        shape, ref_shape = jnp.shape(leaf), jnp.shape(ref_leaf)
        if shape != ref_shape:
            raise ValueError(
                f"{what}{_path_str(path)} has shape {shape} but {ref_what}{_path_str(path)} "
                f"has shape {ref_shape}; re-run `init` on parameters shaped like the updates."
            )


def check_updates(
    updates: Updates, reference: Any = None, ref_what: str = "state", params: Params | None = None
) -> None:
    """The checks every `update` runs: float leaves, and structure against state/params."""
    check_float_leaves(updates, "updates")
    if reference is not None:
        check_tree_match(updates, reference, "updates", ref_what)
    if params is not None:
        check_tree_match(updates, params, "updates", "params")


# ------------------------------------------------------------------- small helpers


def init_empty_state(params: Params) -> EmptyState:
    """`init` of a stateless transformation: checks `params`, returns `EmptyState()`."""
    check_float_leaves(params)
    return EmptyState()


def identity() -> GradientTransformation:
    """The transformation that returns its updates unchanged: `u = g`."""

    def update(updates, state, params=None):
        del params
        check_updates(updates)
        return updates, state

    return GradientTransformation(init_empty_state, update)


def safe_increment(count: jax.typing.ArrayLike) -> jax.Array:
    """`count + 1`, saturating at the dtype's maximum instead of wrapping around."""
    count = jnp.asarray(count)
    max_value = jnp.array(jnp.iinfo(count.dtype).max, count.dtype)
    return jnp.where(count < max_value, count + jnp.array(1, count.dtype), max_value)


def tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leaf-wise `where(pred, on_true, on_false)`, keeping `on_false`'s dtypes."""
    return jax.tree.map(
        lambda t, f: jnp.where(pred, t, f).astype(jnp.result_type(f)), on_true, on_false
    )


@functools.partial(jax.jit, inline=True)
def bias_correction(decay: jax.typing.ArrayLike, count: jax.Array) -> jax.Array:
    """`1 - decay**count`, Adam's bias correction, in float32 for a float `decay`."""
    # `1 - decay**count` is ill-conditioned for decay near 1; compiling it (inlined under
    # an outer jit) makes eager and jitted steps round alike, and alike to optax.
    return 1 - decay**count


def abs_sq(x: jax.Array) -> jax.Array:
    """`|x|^2` element-wise, real for complex `x` (optax's `abs_sq`)."""
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        return jnp.square(x.real) + jnp.square(x.imag)
    return jnp.square(x)


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves of `tree` taken together.

    Formula: `sqrt(sum over leaves of sum(|x|^2))`, summed leaf by leaf in tree order
    (as `optax.tree.norm`).

    Args:
        tree: a pytree of arrays.

    Returns:
        A scalar array.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> optim.global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])})
        Array(5., dtype=float32)
    """
    sums = jax.tree.map(lambda x: jnp.sum(abs_sq(x)), tree)
    return jnp.sqrt(jax.tree.reduce(operator.add, sums, initializer=0))


def apply_updates(params: Params, updates: Updates) -> Params:
    """Add `updates` to `params` leaf by leaf, keeping each parameter's dtype.

    Formula: `p_new = (p + u).astype(p.dtype)`.

    Args:
        params: a pytree of floating-point arrays.
        updates: a pytree with the same structure and leaf shapes as `params`.

    Returns:
        The updated parameters, same structure, shapes and dtypes as `params`.

    Raises:
        ValueError: if the two trees differ (the message names the path).
        TypeError: if a parameter is not floating point.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> p = {"w": jnp.ones(2, jnp.bfloat16)}
        >>> optim.apply_updates(p, {"w": jnp.full(2, 0.5)})["w"].dtype
        dtype(bfloat16)
    """
    check_float_leaves(params)
    check_tree_match(updates, params, "updates", "params")
    return jax.tree.map(lambda p, u: jnp.asarray(p + u).astype(jnp.result_type(p)), params, updates)
