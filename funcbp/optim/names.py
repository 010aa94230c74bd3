"""Optimisers by name, for configuration files and the command line.

`from_name("adamw", 1e-3, weight_decay=0.05)` is `adamw(1e-3, weight_decay=0.05)`, with an
error naming the option when a name or option is unknown or a value is out of range.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from funcbp.optim.aliases import adam, adamw, lion, momentum, nesterov, sgd
from funcbp.optim.aliases_rms import adafactor, adagrad, rmsprop
from funcbp.optim.base import GradientTransformationExtraArgs, ScalarOrSchedule
from funcbp.optim.inject import inject_hyperparams

OPTIMIZERS: dict[str, Callable[..., GradientTransformationExtraArgs]] = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adam": adam,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "adagrad": adagrad,
    "lion": lion,
    "adafactor": adafactor,
}
"""The optimisers `from_name` knows, by name."""

# Options that are not numbers to schedule: kept out of `inject_hyperparams`' state.
_STATIC = ("mask", "weight_decay_mask", "mu_dtype", "accumulator_dtype", "dtype_momentum")
_STATIC_BY_NAME = {"adafactor": ("min_dim_size_to_factor",)}


def _factory(name: Any) -> Callable[..., GradientTransformationExtraArgs]:
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a str, got {name!r}")
    key = name.strip().lower()
    if key not in OPTIMIZERS:
        close = difflib.get_close_matches(key, OPTIMIZERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.{hint}"
        )
    return OPTIMIZERS[key]


def optimizer_options(name: str) -> dict[str, Any]:
    """The options `from_name(name, lr, **options)` takes, with their defaults.

    Args:
        name: one of `OPTIMIZERS`.

    Returns:
        `{option: default}` in signature order, without `learning_rate`.

    Raises:
        ValueError: for an unknown name.

    Examples:
        >>> from funcbp import optim
        >>> optim.optimizer_options("adagrad")
        {'initial_accumulator_value': 0.1, 'eps': 1e-07}
    """
    params = inspect.signature(_factory(name)).parameters
    return {k: p.default for k, p in params.items() if k != "learning_rate"}


def from_name(
    name: str, learning_rate: ScalarOrSchedule, *, inject: bool = False, **options: Any
) -> GradientTransformationExtraArgs:
    """Build an optimiser from its name, a learning rate and that optimiser's options.

    Names: `sgd`, `momentum`, `nesterov`, `adam`, `adamw`, `rmsprop`, `adagrad`, `lion`,
    `adafactor`. `from_name(name, lr, **options)` is `OPTIMIZERS[name](lr, **options)`: the
    options are that alias's keyword arguments (see `optimizer_options(name)`), checked
    before anything is built. Hyperparameters are checked by the alias: momentum, `b1`,
    `b2`, `decay` in `[0, 1)`, `eps > 0`, `learning_rate >= 0` or a schedule, weight decay
    `>= 0`.

    Args:
        name: the optimiser's name, case-insensitive.
        learning_rate: a non-negative number or a schedule `step -> lr` (`None` only for
            `adafactor`).
        inject: wrap it in `inject_hyperparams`, so the state holds the live learning rate
            and other numeric options (`tree_get(state, "learning_rate")`) and they can be
            changed between steps.
        **options: the alias's other arguments, e.g. `weight_decay=0.05, mask=fn` for
            `adamw`, `momentum=0.9, nesterov=True` for `sgd`, `centered=True` for `rmsprop`.

    Returns:
        A `GradientTransformationExtraArgs`.

    Raises:
        ValueError: for an unknown name or option (the message lists the known ones), or a
            hyperparameter out of range (the message names it).
        TypeError: for a value of the wrong type, e.g. a string where a number belongs.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.from_name("adamw", 1e-3, weight_decay=0.05, b2=0.95)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> optim.from_name("adam", 1e-3, momentum=0.9)
        Traceback (most recent call last):
        ...
        ValueError: adam does not take option 'momentum'; its options are b1, b2, eps, eps_root, mu_dtype, nesterov.
        >>> optim.from_name("sgd", 0.1, momentum=1.5)
        Traceback (most recent call last):
        ...
        ValueError: momentum must be in [0, 1), got 1.5.
    """  # noqa: E501
    factory = _factory(name)
    key = name.strip().lower()
    known = optimizer_options(key)
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ValueError(
            f"{key} does not take option {unknown[0]!r}; its options are "
            f"{', '.join(known) or '(none)'}."
        )
    if not inject:
        return factory(learning_rate, **options)
    static = [k for k in (*_STATIC, *_STATIC_BY_NAME.get(key, ())) if k in known]
    return inject_hyperparams(factory, static_args=static)(learning_rate, **options)


__all__ = ["OPTIMIZERS", "from_name", "optimizer_options"]
