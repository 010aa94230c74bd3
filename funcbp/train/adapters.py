"""Models from other libraries as funcbp models: flax.linen modules and equinox modules.

Two lines each; the gradients still come from funcbp's own autodiff::

    model = from_flax(MyLinenModule())             # a funcbp.nn.Layer
    result = fit(model, None, "softmax_cross_entropy", (x, y))

    params, apply = from_equinox(my_eqx_module)    # the module's arrays, and how to call it
    result = fit(params, apply, "softmax_cross_entropy", (x, y))

Neither library is needed by funcbp itself; each is imported when its adapter is called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcbp import nn

__all__ = ["from_equinox", "from_flax"]


def from_flax(module: Any, *, train_kwarg: str | None = None,
              rng_name: str = "dropout") -> nn.Layer:
    """A ``flax.linen.Module`` as a :class:`funcbp.nn.Layer` (its ``params`` collection).

    ``init(key, in_shape)`` calls ``module.init`` on zeros of ``in_shape``; ``apply(params,
    x, *, key=None, train=False)`` calls ``module.apply({"params": params}, x)``, passing
    ``key`` as the ``rng_name`` stream (dropout) and ``train`` as the keyword ``train_kwarg``
    when given (e.g. ``"train"``, or ``"deterministic"``, which gets ``not train``).

    Args:
      module: the linen module (not yet initialised).
      train_kwarg: the keyword of ``module.__call__`` that switches training behaviour.
      rng_name: the rng stream that gets the step's key in training.

    Returns:
      A stateless :class:`funcbp.nn.Layer`.

    Raises:
      ValueError: the module has variables other than ``params`` (BatchNorm's
        ``batch_stats``): the trainer needs a stateless model.

    Examples:
      >>> import jax, flax.linen as fnn  # doctest: +SKIP
      >>> from funcbp.train import from_flax
      >>> layer = from_flax(fnn.Dense(3))  # doctest: +SKIP
      >>> layer.init(jax.random.key(0), (1, 4))[0]  # doctest: +SKIP
      (1, 3)
    """
    def kwargs(train):
        if train_kwarg is None:
            return {}
        return {train_kwarg: (not train) if train_kwarg == "deterministic" else train}

    def init(key, in_shape):
        x = jnp.zeros(in_shape, jnp.float32)
        variables = module.init({"params": key, rng_name: key}, x, **kwargs(False))
        other = sorted(set(variables) - {"params"})
        if other:
            raise ValueError(f"from_flax: the module has variable collections {other} besides "
                             "'params' (BatchNorm's batch_stats?); the trainer needs a "
                             "stateless model")
        params = variables.get("params", {})
        out = jax.eval_shape(lambda p: module.apply({"params": p}, x, **kwargs(False)), params)
        return tuple(out.shape), params

    def apply(params, x, *, key=None, train=False):
        rngs = {rng_name: key} if (train and key is not None) else None
        return module.apply({"params": params}, x, rngs=rngs, **kwargs(train))

    return nn.Layer(init, apply, type(module).__name__.lower())


def from_equinox(model: Any, *, batched: bool = False) -> tuple[Any, Callable]:
    """An equinox module as ``(params, apply)``: its float arrays, and how to call it.

    ``params`` is ``eqx.partition(model, eqx.is_inexact_array)[0]`` (the module's own
    structure, ``None`` where it holds no array); ``apply(params, x, *, key=None,
    train=False)`` recombines it with the static part and calls it on each example
    (``jax.vmap``), as equinox modules take one example; ``batched=True`` calls it on the
    whole batch instead. A module whose ``__call__`` takes ``key`` gets a key per example
    in training (dropout), and ``inference=not train`` when it takes ``inference``.

    Examples:
      >>> import jax, equinox as eqx  # doctest: +SKIP
      >>> from funcbp.train import from_equinox
      >>> params, apply = from_equinox(eqx.nn.Linear(4, 3, key=jax.random.key(0)))  # doctest: +SKIP
      >>> apply(params, jax.numpy.ones((2, 4))).shape  # doctest: +SKIP
      (2, 3)
    """  # noqa: E501
    try:
        import equinox as eqx
    except ImportError:
        raise ImportError("from_equinox needs equinox: pip install equinox") from None
    params, static = eqx.partition(model, eqx.is_inexact_array)
    try:
        accepted = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_key, takes_inference = "key" in accepted, "inference" in accepted

    def apply(params, x, *, key=None, train=False):
        m = eqx.combine(params, static)
        extra = {"inference": not train} if takes_inference else {}
        if batched:
            if takes_key:
                extra["key"] = key if train else None
            return m(x, **extra)
        if takes_key and train and key is not None:
            keys = jax.random.split(key, x.shape[0])
            return jax.vmap(lambda xi, ki: m(xi, key=ki, **extra))(x, keys)
        return jax.vmap(lambda xi: m(xi, **extra))(x)

    return params, apply
