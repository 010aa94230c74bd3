"""Layers as ``(init, apply)`` pairs of pure functions, their combinators and their errors.

A :class:`Layer` is a ``NamedTuple``::

    init(key, in_shape) -> (out_shape, params)          # params: a nested dict of arrays
    apply(params, x, *, key=None, train=False) -> y     # stateless layers
    init_state(in_shape) -> state                       # {} for stateless layers

Stateful layers (``BatchNorm``, and any ``serial`` holding one) have ``stateful=True``; their
``apply`` also takes ``state=``: with ``state=None`` it returns ``y``; with a state tree it
returns ``(y, new_state)``. A trainer tells the two kinds apart with :func:`is_stateful`.

Naming inside :func:`serial` and :func:`parallel`: each child is keyed ``<name>_<k>``, where
``name`` is the layer's kind (``dense``, ``conv2d``, ``batchnorm``...) and ``k`` counts the
layers of that kind met so far in the same combinator (so adding a ``relu`` does not renumber
the ``dense`` layers). Only layers with ``has_params=True`` get an entry in ``params`` (even an
empty one); only stateful layers get one in ``state``. ``("conv1", layer)`` gives a child an
explicit key instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, Any]
State = dict[str, Any]
Shape = tuple[int, ...]

__all__ = [
    "DTypeError",
    "FanInConcat",
    "FanInSum",
    "FanOut",
    "Identity",
    "KeyRequiredError",
    "Layer",
    "LayerError",
    "Params",
    "ParamsError",
    "ShapeError",
    "State",
    "is_stateful",
    "output_shape",
    "parallel",
    "serial",
]


# --------------------------------------------------------------------------------------------
# Errors. Each carries the path of the layer that raised it; serial/parallel prefix their
# child's key as the error travels up, so the message names the full path ("block_0/dense_1").


class LayerError(ValueError):
    """Base of funcbp.nn's errors: ``<layer path>: <what is wrong>``.

    ``param`` names the parameter involved (``"w"``); the message shows its full path
    (``'dense_1/w'``) wherever ``detail`` says ``{param}``.
    """

    def __init__(self, path: str, detail: str, param: str | None = None):
        self.path, self.detail, self.param = path, detail, param
        full = "/".join(p for p in (path, param) if p)
        msg = detail.replace("{param}", repr(full)) if param else detail
        super().__init__(f"{path}: {msg}" if path else msg)

    def with_prefix(self, prefix: str) -> LayerError:
        """The same error, one level further up the model (``prefix/path``)."""
        path = f"{prefix}/{self.path}" if self.path else prefix
        return type(self)(path, self.detail, self.param).with_traceback(self.__traceback__)


class ShapeError(LayerError):
    """An input or a parameter has a shape the layer cannot use (names both shapes)."""


class DTypeError(LayerError, TypeError):
    """An input has a dtype the layer cannot use (e.g. integers into ``Dense``)."""


class ParamsError(LayerError):
    """The params (or state) tree has a missing or an extra key."""


class KeyRequiredError(LayerError):
    """A random layer (``Dropout``) ran with ``train=True`` but no ``key``."""


# --------------------------------------------------------------------------------------------


def _no_state(in_shape: Any) -> State:
    return {}


class Layer(NamedTuple):
    """A layer: two pure functions and how to name it.

    Attributes:
      init: ``init(key, in_shape) -> (out_shape, params)``. ``in_shape`` includes the batch
        dimension (any placeholder int, e.g. ``(1, 784)``); ``params`` is a nested dict.
      apply: ``apply(params, x, *, key=None, train=False) -> y``; stateful layers also take
        ``state=None`` and return ``(y, new_state)`` when a state is passed.
      name: the kind, used for the default key in ``serial`` (``"dense"`` -> ``"dense_0"``).
      init_state: ``init_state(in_shape) -> state`` (``{}`` for stateless layers). State is
        what a layer updates rather than learns, e.g. BatchNorm's running statistics.
      has_params: whether ``serial`` gives the layer an entry in ``params``.
      stateful: whether ``apply`` takes ``state=`` (see :func:`is_stateful`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> model = nn.serial(nn.Dense(4), nn.relu, nn.Dense(2))
      >>> out_shape, params = model.init(jax.random.key(0), (1, 3))
      >>> out_shape, sorted(params)
      ((1, 2), ['dense_0', 'dense_1'])
      >>> model.apply(params, jnp.ones((5, 3))).shape
      (5, 2)
    """

    init: Callable[..., tuple[Any, Params]]
    apply: Callable[..., Any]
    name: str = "layer"
    init_state: Callable[[Any], State] = _no_state
    has_params: bool = True
    stateful: bool = False


def is_stateful(model: Any) -> bool:
    """Whether ``model.apply`` takes ``state=`` and returns ``(y, new_state)`` with one.

    Anything that is not a :class:`Layer` (e.g. a hand-written ``apply`` function) is
    stateless.

    Examples:
      >>> from funcbp import nn
      >>> nn.is_stateful(nn.serial(nn.Dense(3), nn.BatchNorm())), nn.is_stateful(nn.Dense(3))
      (True, False)
    """
    return bool(getattr(model, "stateful", False))


def output_shape(layer: Layer, in_shape: Any) -> Any:
    """The output shape of ``layer`` for ``in_shape``, found by tracing ``init`` (no FLOPs)."""
    box = {}

    def run(key):
        box["shape"], params = layer.init(key, in_shape)
        return params

    jax.eval_shape(run, jax.random.key(0))
    return box["shape"]


def check_floating(x: jax.Array, what: str = "input x") -> None:
    """Raise :class:`DTypeError` unless ``x`` is floating point (checked at trace time)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise DTypeError("", f"{what} has dtype {x.dtype}, but this layer needs floating-point "
                             f"input; cast it first, e.g. x.astype(jnp.float32)")


def check_keys(params: Any, expected: Sequence[str], path: str, what: str = "params") -> None:
    """Raise :class:`ParamsError` naming each missing and extra key of a params dict."""
    if not isinstance(params, dict):
        raise ParamsError(path, f"expected a dict of {what} with keys {sorted(expected)}, "
                                f"got {type(params).__name__}")
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing key(s) {missing}")
        if extra:
            parts.append(f"unexpected key(s) {extra}")
        raise ParamsError(path, f"{what} has {' and '.join(parts)}; expected exactly "
                                f"{sorted(expected)}. Build {what} with the model's init.")


def _as_named(layers: Sequence[Any]) -> list[tuple[str, Layer]]:
    """Give every child its key: explicit ``(name, layer)``, else ``<kind>_<k>``."""
    counts: dict[str, int] = {}
    named = []
    for item in layers:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            named.append((item[0], _as_layer(item[1])))
            continue
        layer = _as_layer(item)
        k = counts.get(layer.name, 0)
        counts[layer.name] = k + 1
        named.append((f"{layer.name}_{k}", layer))
    names = [n for n, _ in named]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two layers share the key(s) {dupes}; give each an explicit, "
                         "unique name with ('name', layer)")
    return named


def _as_layer(item: Any) -> Layer:
    """A Layer as is; a plain function becomes an elementwise layer."""
    if isinstance(item, Layer):
        return item
    if not callable(item):
        raise TypeError(f"expected a Layer, a ('name', Layer) pair or an elementwise function, "
                        f"got {item!r}")
    from funcbp.nn.activations import elementwise  # activations imports this module

    return elementwise(item)


def _call(name: str, layer: Layer, params: Any, x: Any, key: Any, train: bool, state: Any):
    """Apply one child, prefixing its key to any error it raises. Returns ``(y, new_state)``."""
    try:
        if layer.stateful and state is not None:
            return layer.apply(params, x, key=key, train=train, state=state)
        return layer.apply(params, x, key=key, train=train), None
    except LayerError as err:
        raise err.with_prefix(name) from None


def _child_keys(key: Any, n: int) -> list[Any]:
    return [None] * n if key is None else list(jax.random.split(key, n))


def _combinator(named, init_fn, run_fn, name: str) -> Layer:
    """Shared wiring of ``serial``/``parallel``: key checks, state plumbing, stateful flag."""
    param_names = [n for n, layer in named if layer.has_params]
    state_names = [n for n, layer in named if layer.stateful]
    stateful = bool(state_names)

    def apply(params, x, *, key=None, train=False, state=None):
        check_keys(params, param_names, "", "params")
        if state is not None:
            check_keys(state, state_names, "", "state")
        keys = _child_keys(key, len(named))
        new_state = {}

        def step(i, child_x):
            n, layer = named[i]
            p = params[n] if layer.has_params else {}
            s = state[n] if (state is not None and layer.stateful) else None
            y, ns = _call(n, layer, p, child_x, keys[i], train, s)
            if ns is not None:
                new_state[n] = ns
            return y

        y = run_fn(step, x)
        return (y, new_state) if state is not None else y

    def init(key, in_shape):
        return init_fn(key, in_shape)

    if not stateful:
        def stateless_apply(params, x, *, key=None, train=False):
            return apply(params, x, key=key, train=train)
        return Layer(init, stateless_apply, name)
    return Layer(init, apply, name, _state_fn(named, init_fn, state_names), True, True)


def _state_fn(named, init_fn, state_names):
    # serial and parallel differ only in which in_shape each child sees; init_fn knows that,
    # so record the child input shapes by tracing init once (no FLOPs).
    def init_state(in_shape):
        seen = {}

        def run(key):
            return init_fn(key, in_shape, seen)[1]

        jax.eval_shape(run, jax.random.key(0))
        return {n: layer.init_state(seen[n]) for n, layer in named if n in state_names}

    return init_state


def serial(*layers: Any, name: str = "serial") -> Layer:
    """Compose layers one after another: ``y = f_n(...f_2(f_1(x)))``.

    Each item is a :class:`Layer`, a ``("key", Layer)`` pair, or an elementwise function
    (``nn.relu``). Children are keyed ``<kind>_<k>`` (``k`` counts that kind); only layers
    with parameters appear in ``params``. A ``key`` given to ``apply`` is split into one key per
    child with ``jax.random.split(key, len(layers))``.

    Args:
      *layers: the children, first applied first.
      name: the kind of the composite (its default key when nested in another ``serial``).

    Returns:
      A :class:`Layer`; stateful if any child is.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> mlp = nn.serial(("hidden", nn.Dense(8)), nn.relu, nn.Dense(3))
      >>> _, params = mlp.init(jax.random.key(0), (1, 4))
      >>> sorted(params), params["hidden"]["w"].shape
      (['dense_0', 'hidden'], (4, 8))
    """
    named = _as_named(layers)

    def init_fn(key, in_shape, seen=None):
        params = {}
        for (n, layer), k in zip(named, jax.random.split(key, len(named)), strict=True):
            if seen is not None:
                seen[n] = in_shape
            in_shape, p = layer.init(k, in_shape)
            if layer.has_params:
                params[n] = p
        return in_shape, params

    def run(step, x):
        for i in range(len(named)):
            x = step(i, x)
        return x

    return _combinator(named, init_fn, run, name)


def parallel(*layers: Any, name: str = "parallel") -> Layer:
    """Apply layers side by side to a tuple of inputs: ``(f_1(x_1), ..., f_n(x_n))``.

    ``in_shape`` is a tuple of shapes, one per child; the output is a tuple. With
    :func:`FanOut` and :func:`FanInSum` this builds residual blocks.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> res = nn.serial(nn.FanOut(2), nn.parallel(nn.Dense(3), nn.Identity()), nn.FanInSum())
      >>> _, params = res.init(jax.random.key(0), (1, 3))
      >>> res.apply(params, jnp.ones((2, 3))).shape
      (2, 3)
    """
    named = _as_named(layers)

    def init_fn(key, in_shape, seen=None):
        if not isinstance(in_shape, (tuple, list)) or len(in_shape) != len(named):
            raise ShapeError(name, f"expects a tuple of {len(named)} input shapes, "
                                   f"got {in_shape!r}")
        params, shapes = {}, []
        for (n, layer), k, s in zip(named, jax.random.split(key, len(named)), in_shape,
                                    strict=True):
            if seen is not None:
                seen[n] = s
            out, p = layer.init(k, s)
            shapes.append(out)
            if layer.has_params:
                params[n] = p
        return tuple(shapes), params

    def run(step, xs):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(named):
            raise ShapeError("", f"parallel expects a tuple of {len(named)} inputs, "
                                 f"got {type(xs).__name__}")
        return tuple(step(i, x) for i, x in enumerate(xs))

    return _combinator(named, init_fn, run, name)


def _no_params(name: str, apply: Callable, shape_fn: Callable) -> Layer:
    """A layer without parameters: ``apply(x)``, output shape from ``shape_fn(in_shape)``."""

    def init(key, in_shape):
        return shape_fn(in_shape), {}

    def apply_(params, x, *, key=None, train=False):
        return apply(x)

    return Layer(init, apply_, name, has_params=False)


def Identity() -> Layer:
    """The identity layer, ``y = x`` (the skip branch of a residual block)."""
    return _no_params("identity", lambda x: x, lambda s: s)


def FanOut(num: int) -> Layer:
    """Copy the input ``num`` times into a tuple, to feed :func:`parallel`."""
    return _no_params("fanout", lambda x: (x,) * num, lambda s: (s,) * num)


def FanInSum() -> Layer:
    """Sum a tuple of same-shaped inputs: ``y = x_1 + ... + x_n``."""

    def shape(shapes):
        if len({tuple(s) for s in shapes}) != 1:
            raise ShapeError("fanin_sum", f"inputs must share one shape, got {list(shapes)}")
        return shapes[0]

    return _no_params("fanin_sum", lambda xs: sum(xs[1:], xs[0]), shape)


def FanInConcat(axis: int = -1) -> Layer:
    """Concatenate a tuple of inputs along ``axis`` (default: features)."""

    def shape(shapes):
        ax = axis % len(shapes[0])
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out)

    return _no_params("fanin_concat", lambda xs: jnp.concatenate(xs, axis=axis), shape)
