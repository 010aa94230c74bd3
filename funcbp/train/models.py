"""The trainer's models: the named defaults (``funcbp train --model NAME``) and yours.

Each named entry builds a :class:`funcbp.nn.Layer` from the number of classes; the input shape
is given later, to ``init``. All of them take NHWC images and return logits. :func:`as_layer`
turns any model ``fit`` accepts (a Layer, an ``(init, apply)`` pair, parameters and an apply
function) into a Layer; :func:`resolve_model` imports a factory ``pkg.module:function``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcbp import nn

__all__ = ["MODELS", "as_layer", "get_model", "model_names", "resolve_model", "standard_apply"]


def mlp(num_classes: int = 10) -> nn.Layer:
    """ReLU MLP ``flatten -> 256 -> 128 -> classes`` with He-uniform weights."""
    he = nn.init.he_uniform()
    return nn.serial(
        nn.Flatten(),
        nn.Dense(256, w_init=he), nn.relu,
        nn.Dense(128, w_init=he), nn.relu,
        nn.Dense(num_classes, w_init=nn.init.glorot_uniform()),
    )


def wide_mlp(num_classes: int = 10) -> nn.Layer:
    """ReLU MLP ``flatten -> 512 -> 256 -> classes`` with dropout 0.2 (for 28x28 images)."""
    he = nn.init.he_uniform()
    return nn.serial(
        nn.Flatten(),
        nn.Dense(512, w_init=he), nn.relu, nn.Dropout(0.2),
        nn.Dense(256, w_init=he), nn.relu, nn.Dropout(0.2),
        nn.Dense(num_classes, w_init=nn.init.glorot_uniform()),
    )


def cnn(num_classes: int = 10) -> nn.Layer:
    """Two 3x3 conv blocks (32, 64 channels), each with 2x2 max-pooling, then 128 -> classes.

    Sized for 28x28 images (MNIST, Fashion-MNIST); dropout 0.3 before the classifier.
    """
    he = nn.init.he_uniform()
    return nn.serial(
        nn.Conv2D(32, 3, w_init=he), nn.relu, nn.MaxPool2D(2),
        nn.Conv2D(64, 3, w_init=he), nn.relu, nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dense(128, w_init=he), nn.relu, nn.Dropout(0.3),
        nn.Dense(num_classes, w_init=nn.init.glorot_uniform()),
    )


def digits_cnn(num_classes: int = 10) -> nn.Layer:
    """Small CNN for the 8x8 digits: conv 32, conv 64 (3x3, SAME), 2x2 max-pool, 128, classes.

    The default model of ``funcbp train``.
    """
    he = nn.init.he_uniform()
    return nn.serial(
        nn.Conv2D(32, 3, w_init=he), nn.relu,
        nn.Conv2D(64, 3, w_init=he), nn.relu, nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dense(128, w_init=he), nn.relu, nn.Dropout(0.25),
        nn.Dense(num_classes, w_init=nn.init.glorot_uniform()),
    )


MODELS: dict[str, Callable[[int], nn.Layer]] = {
    "mlp": mlp,
    "wide_mlp": wide_mlp,
    "cnn": cnn,
    "digits_cnn": digits_cnn,
}


def model_names() -> list[str]:
    """The names :func:`get_model` accepts."""
    return sorted(MODELS)


def get_model(name: str, num_classes: int = 10) -> nn.Layer:
    """The named default model, e.g. ``get_model("digits_cnn")``.

    Args:
      name: one of :func:`model_names` (``"mlp"``, ``"wide_mlp"``, ``"cnn"``, ``"digits_cnn"``).
      num_classes: size of the output (logits).

    Returns:
      A :class:`funcbp.nn.Layer`; call ``init(key, (1, H, W, C))`` for its parameters.

    Examples:
      >>> import jax
      >>> from funcbp.train import get_model
      >>> shape, params = get_model("mlp").init(jax.random.key(0), (1, 8, 8, 1))
      >>> shape
      (1, 10)
    """
    try:
        return MODELS[name](num_classes)
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(model_names())}"
        ) from None


# ------------------------------------------------------------------- models of the user's

def _takes(fn: Callable, names: tuple[str, ...]) -> dict[str, bool]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {n: True for n in names}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {n: var_kw or n in params for n in names}


def _positional_count(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                          inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params)


def _is_shape(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(d, int) for d in value)


def _holds_arrays(tree: Any) -> bool:
    """Whether ``tree`` is a pytree of arrays (parameters), not an init function; an equinox
    module is both callable and a tree of arrays."""
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(hasattr(leaf, "shape") and hasattr(leaf, "dtype")
                                for leaf in leaves)


def standard_apply(apply_fn: Callable) -> Callable:
    """``apply_fn`` with the signature ``apply(params, x, *, key=None, train=False)``.

    A plain ``apply(params, x)`` is called without the keywords it does not take.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp.train.models import standard_apply
      >>> f = standard_apply(lambda p, x: x @ p["w"])
      >>> f({"w": jnp.eye(2)}, jnp.ones((1, 2)), key=None, train=True).tolist()
      [[1.0, 1.0]]
    """
    takes = _takes(apply_fn, ("key", "train"))
    if all(takes.values()):
        return apply_fn

    def apply(params, x, *, key=None, train=False):
        extra = {}
        if takes["key"]:
            extra["key"] = key
        if takes["train"]:
            extra["train"] = train
        return apply_fn(params, x, **extra)

    return apply


def as_layer(model: Any, apply_fn: Callable | None = None) -> nn.Layer:
    """Any model ``fit`` accepts, as a :class:`funcbp.nn.Layer`.

    Args:
      model: a :class:`funcbp.nn.Layer`; an ``(init, apply)`` pair; an ``init`` function
        (``init(key, in_shape) -> (out_shape, params)`` as funcbp.nn's, or ``init(key) ->
        params``); or the parameters themselves (any pytree of arrays).
      apply_fn: ``apply(params, x)`` (or with ``key=``, ``train=`` keywords, for dropout);
        None when ``model`` is a Layer or a pair.

    Returns:
      A stateless Layer whose ``init(key, in_shape)`` returns ``(out_shape, params)``.

    Raises:
      TypeError: a model of another kind, or an apply function missing (said plainly).
      ValueError: a stateful funcbp.nn model (BatchNorm).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp.train.models import as_layer
      >>> layer = as_layer({"w": jnp.zeros((4, 3))}, lambda p, x: x @ p["w"])
      >>> layer.init(jax.random.key(0), (1, 4))[0]
      (1, 3)
    """
    if isinstance(model, nn.Layer):
        if apply_fn is not None:
            raise TypeError("a funcbp.nn Layer brings its own apply: pass apply_fn=None")
        if nn.is_stateful(model):
            raise ValueError("the model carries state (BatchNorm); fit needs a stateless model")
        return model
    if (isinstance(model, tuple) and len(model) == 2 and all(callable(f) for f in model)
            and apply_fn is None):
        model, apply_fn = model
    if apply_fn is None:
        raise TypeError(f"fit needs apply_fn(params, x) with a model given as "
                        f"{type(model).__name__}; pass a funcbp.nn Layer, an (init, apply) "
                        "pair, or init/params and apply_fn")
    apply = standard_apply(apply_fn)

    def out_shape(params, in_shape):
        x = jax.ShapeDtypeStruct(in_shape, jnp.float32)
        return tuple(jax.eval_shape(lambda p, x: apply(p, x), params, x).shape)

    if not callable(model) or _holds_arrays(model):  # the parameters (an equinox module too)
        params = model
        return nn.Layer(lambda key, in_shape: (out_shape(params, in_shape), params), apply,
                        "model")
    init_fn = model
    with_shape = _positional_count(init_fn) >= 2

    def init(key, in_shape):
        result = init_fn(key, in_shape) if with_shape else init_fn(key)
        if isinstance(result, tuple) and len(result) == 2 and _is_shape(result[0]):
            return result  # funcbp.nn's (out_shape, params)
        return out_shape(result, in_shape), result

    return nn.Layer(init, apply, "model")


def resolve_model(spec: str, num_classes: int | None) -> nn.Layer:
    """The model a config names: a built-in name, or a factory ``"pkg.module:function"``.

    A factory is called without arguments and returns a funcbp.nn Layer or an ``(init,
    apply)`` pair with the same signatures.

    Raises:
      ValueError: an unknown name, a factory that cannot be imported or returns something
        else (said plainly).
    """
    if ":" not in spec:
        return get_model(spec, num_classes=num_classes or 10)
    from funcbp.train.userdata import import_spec

    factory = import_spec(spec, "model factory")
    if not callable(factory):
        raise ValueError(f"model factory {spec!r} is a {type(factory).__name__}, not a function")
    made = factory()
    try:
        return as_layer(made)
    except TypeError:
        raise ValueError(f"model factory {spec!r} returned {type(made).__name__}; it must "
                         "return a funcbp.nn Layer or an (init, apply) pair") from None
