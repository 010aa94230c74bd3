"""`inject_hyperparams`: hyperparameters kept in the optimiser state (optax's wrapper).

`inject_hyperparams(optim.adamw)(learning_rate=schedule, weight_decay=1e-4)` builds an
optimiser whose numeric hyperparameters live in `state.hyperparams`, a dict of arrays.
A schedule is evaluated from the step count kept in the state; a number can be changed
between steps by writing a new array into the dict, inside or outside `jax.jit`, without
recompiling. The trainer reads the live values there for logging.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Schedule,
    safe_increment,
    with_extra_args_support,
)


class InjectStatefulHyperparamsState(NamedTuple):
    """State of `inject_hyperparams` (optax's class name and fields).

    Attributes:
        count: the number of updates so far (int32).
        hyperparams: `{name: value}` for every numeric hyperparameter, scheduled or not: the
            values of the last update (the initial ones after `init`).
        hyperparams_states: `{name: schedule state}` for the scheduled ones
            (`WrappedScheduleState(count)` for a plain `step -> value` function).
        inner_state: the wrapped optimiser's state.
    """

    count: jax.Array
    hyperparams: dict[str, Any]
    hyperparams_states: dict[str, Any]
    inner_state: OptState


class WrappedScheduleState(NamedTuple):
    """State of a plain schedule inside `inject_hyperparams`: its own step count."""

    count: jax.Array


class WrappedSchedule:
    """A plain schedule `step -> value` seen through the stateful-schedule interface.

    A stateful schedule has `init() -> state`, `update(state, **extra_args) -> state` and
    `__call__(state, **extra_args) -> value` (optax's `StatefulSchedule`); this one's state
    is the step count.
    """

    def __init__(self, schedule_fn: Schedule):
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        return WrappedScheduleState(count=jnp.zeros([], jnp.int32))

    def update(self, state: WrappedScheduleState, **extra_args) -> WrappedScheduleState:
        del extra_args
        return WrappedScheduleState(count=safe_increment(state.count))

    def __call__(self, state: WrappedScheduleState, **extra_args) -> Any:
        del extra_args
        return self.schedule_fn(state.count)


def _is_stateful_schedule(value: Any) -> bool:
    return callable(value) and all(callable(getattr(value, a, None)) for a in ("init", "update"))


def _convert_floats(x: Any, dtype: Any) -> Any:
    """Floats (Python, numpy, weakly typed arrays) to `dtype`; strong arrays, ints unchanged."""
    if isinstance(x, jax.Array) and not getattr(x, "weak_type", False):
        return x
    if jax.dtypes.issubdtype(getattr(x, "dtype", type(x)), jnp.floating):
        return jnp.asarray(x, dtype=dtype)
    return x


def _highest_dtype(tree: Any) -> Any:
    """The leaf dtype every other leaf's promotes to (optax's `tree.dtype(..., 'highest')`)."""
    dtypes = [jnp.asarray(x).dtype for x in jax.tree.leaves(tree)]
    if not dtypes:
        return jnp.asarray([]).dtype  # jax's default float dtype

    def higher(a, b):
        c = jnp.promote_types(a, b)
        if c not in (a, b):
            raise ValueError(
                f"params mix dtypes {a} and {b}, neither of which holds the other; pass "
                "hyperparam_dtype= to inject_hyperparams to choose the hyperparameters' dtype."
            )
        return c

    return functools.reduce(higher, dtypes)


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., GradientTransformationExtraArgs]:
    """Wrap an optimiser factory so that its numeric hyperparameters live in the state.

    `inject_hyperparams(factory)(**kwargs)` returns a transformation that, at each update,
    rebuilds `factory(**kwargs)` with the current hyperparameter values and applies it to
    the inner state. Arguments are sorted as in optax:

    - a callable (not listed in `static_args`) is a schedule `step -> value`, evaluated at
      the step count (or a stateful schedule with `init`/`update`/`__call__`);
    - a number or array is a hyperparameter stored in `state.hyperparams[name]`, which you
      may overwrite between steps (write an array of the same dtype, e.g.
      `jnp.asarray(1e-4, jnp.float32)`, so a jitted step does not recompile);
    - booleans, `None`, strings and the `static_args` are passed through unchanged.

    Floating values are cast to `hyperparam_dtype`, by default the highest dtype among the
    params (float32 for float32 params). Writing a scheduled value has no effect: the
    schedule overwrites it at the next update.

    Args:
        inner_factory: a function returning a transformation, e.g. `optim.adamw`.
        static_args: names of arguments that must stay Python values (callables that are
            not schedules, or ints that set shapes, such as Adafactor's
            `min_dim_size_to_factor`).
        hyperparam_dtype: the dtype of the stored floating hyperparameters.

    Returns:
        A function with `inner_factory`'s arguments that returns a
        `GradientTransformationExtraArgs` with state
        `InjectStatefulHyperparamsState(count, hyperparams, hyperparams_states, inner_state)`.

    Raises:
        ValueError: if `static_args` names an argument `inner_factory` does not have.
        TypeError: for arguments `inner_factory` does not accept (when called).

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.inject_hyperparams(optim.sgd)(learning_rate=0.1, momentum=0.9)
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> step = jax.jit(tx.update)
        >>> u, state = step({"w": jnp.ones(2)}, state, params)
        >>> state.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)  # by hand
        >>> u, state = step({"w": jnp.ones(2)}, state, params)      # no recompilation
        >>> u["w"]  # -0.01 * (1 + 0.9 * 1)
        Array([-0.019, -0.019], dtype=float32)
        >>> tx = optim.inject_hyperparams(optim.adam)(learning_rate=lambda t: 0.1 / (t + 1))
        >>> state = tx.init(params)
        >>> _, state = tx.update({"w": jnp.ones(2)}, state, params)
        >>> _, state = tx.update({"w": jnp.ones(2)}, state, params)
        >>> state.hyperparams["learning_rate"]  # the rate of the last update, 0.1 / 2
        Array(0.05, dtype=float32)
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    unknown = static - set(signature.parameters)
    if unknown:
        raise ValueError(
            f"static_args names {sorted(unknown)}, which {_name(inner_factory)} does not take; "
            f"its arguments are {list(signature.parameters)}."
        )

    @functools.wraps(inner_factory)
    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformationExtraArgs:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        for name, p in signature.parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
            elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                if arguments.pop(name, ()):
                    raise TypeError(
                        f"inject_hyperparams passes hyperparameters by name; give "
                        f"{_name(inner_factory)}'s arguments as keywords, not through *{name}."
                    )

        schedules, numeric, other = {}, {}, {}
        for name, value in arguments.items():
            if name in static or isinstance(value, bool):
                other[name] = value
            elif _is_stateful_schedule(value):
                schedules[name] = value
            elif callable(value):
                schedules[name] = WrappedSchedule(value)
            elif isinstance(value, int | float | jax.Array | np.ndarray):
                numeric[name] = value
            else:
                other[name] = value

        # Build once with the starting values, so bad hyperparameters fail here and not at
        # the first update (a stateful schedule may need extra args to give a value: skip).
        if all(isinstance(f, WrappedSchedule) for f in schedules.values()):
            inner_factory(**other, **numeric, **{k: f(f.init()) for k, f in schedules.items()})

        def init(params):
            dtype = hyperparam_dtype or _highest_dtype(params)
            hyperparams = {k: jnp.asarray(_convert_floats(v, dtype)) for k, v in numeric.items()}
            hp_states = {k: f.init() for k, f in schedules.items()}
            hyperparams.update(
                {k: _convert_floats(f(hp_states[k]), dtype) for k, f in schedules.items()}
            )
            return InjectStatefulHyperparamsState(
                count=jnp.zeros([], jnp.int32),
                hyperparams=hyperparams,
                hyperparams_states=hp_states,
                inner_state=inner_factory(**other, **hyperparams).init(params),
            )

        def update(updates, state, params=None, **extra_args):
            dtype = hyperparam_dtype or _highest_dtype(params)
            hyperparams = {k: _convert_floats(v, dtype) for k, v in state.hyperparams.items()}
            hyperparams.update(
                {
                    k: _convert_floats(f(state.hyperparams_states[k], **extra_args), dtype)
                    for k, f in schedules.items()
                }
            )
            hp_states = {
                k: f.update(state.hyperparams_states[k], **extra_args) for k, f in schedules.items()
            }
            inner = with_extra_args_support(inner_factory(**other, **hyperparams))
            updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
            return updates, InjectStatefulHyperparamsState(
                count=safe_increment(state.count),
                hyperparams=hyperparams,
                hyperparams_states=hp_states,
                inner_state=inner_state,
            )

        return GradientTransformationExtraArgs(init, update)

    return wrapped


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", repr(fn))


__all__ = [
    "InjectStatefulHyperparamsState",
    "WrappedSchedule",
    "WrappedScheduleState",
    "inject_hyperparams",
]
