"""``vjp``, ``grad`` and ``value_and_grad``: jax's signatures over funcbp's own reverse mode.

Only argument handling lives here; the differentiation itself is :mod:`.interpreter` walking
the jaxpr that :mod:`.trace` produces, with the rules in :mod:`.rules`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.tree_util import tree_flatten, tree_structure, tree_unflatten

from funcbp.autodiff import interpreter
from funcbp.autodiff.trace import trace

__all__ = ["Pullback", "grad", "value_and_grad", "vjp"]


def vjp(fun: Callable, *primals: Any, has_aux: bool = False, reduce_axes: Sequence = ()):
    """Vector-Jacobian product of ``fun`` at ``primals``, with funcbp's rules; as ``jax.vjp``.

    Args:
      fun: function of pytrees of arrays returning a pytree of arrays (and an aux pytree when
        ``has_aux``).
      *primals: the point at which to differentiate.
      has_aux: ``fun`` returns ``(output, aux)``; ``aux`` is returned, not differentiated.
      reduce_axes: accepted for signature compatibility with ``jax.vjp``; must be empty.

    Returns:
      ``(primals_out, vjp_fn)`` or ``(primals_out, vjp_fn, aux)``. ``vjp_fn(ct)`` takes a
      cotangent with the structure, shapes and dtypes of ``primals_out`` and returns a tuple
      with one cotangent per primal (``float0`` zeros for integer and boolean primals).

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> y, pullback = funcbp.vjp(jnp.sin, 0.0)
      >>> pullback(1.0)
      (Array(1., dtype=float32, weak_type=True),)
    """
    if reduce_axes:
        raise NotImplementedError("funcbp.vjp does not support reduce_axes (jax deprecated it)")
    if not callable(fun):
        raise TypeError(f"vjp expects a callable as its first argument, got {fun!r}")
    leaves, in_tree = tree_flatten(primals)
    traced = trace(fun, in_tree, leaves, has_aux, "vjp")
    closed = traced.closed
    in_avals = list(closed.in_avals)
    active = [interpreter.is_differentiable(a) for a in in_avals]
    outs, record = interpreter.forward(closed.jaxpr, list(closed.consts), leaves, active)
    out_leaves, aux_leaves = outs[: traced.num_out], outs[traced.num_out :]
    spec = _PullbackSpec(getattr(fun, "__name__", "fun"), in_tree, traced.out_tree,
                         tuple(in_avals), tuple(closed.out_avals[: traced.num_out]),
                         len(aux_leaves))
    pullback = Pullback(record, spec)
    primals_out = tree_unflatten(traced.out_tree, out_leaves)
    if has_aux:
        return primals_out, pullback, tree_unflatten(traced.aux_tree, aux_leaves)
    return primals_out, pullback


class _PullbackSpec(NamedTuple):
    """The static part of a pullback: structures and types of the inputs and outputs."""

    name: str
    in_tree: Any
    out_tree: Any
    in_avals: tuple
    out_avals: tuple
    num_aux: int


class Pullback:
    """The function :func:`vjp` returns: ``pullback(ct)`` runs funcbp's backward walk.

    Like jax's, it is a pytree whose leaves are the forward values the backward reads, so it
    can be returned from ``jax.jit``, passed through ``jax.tree.map``, or kept as a
    ``custom_vjp`` residual; calling it afterwards walks the same record.
    """

    def __init__(self, record: interpreter.Record, spec: _PullbackSpec):
        self.record = record
        self.spec = spec
        self.__name__ = f"vjp_{spec.name}"

    def __repr__(self) -> str:
        return f"<funcbp pullback of {self.spec.name}>"

    def __call__(self, ct: Any) -> tuple:
        spec = self.spec
        ct_leaves, ct_tree = tree_flatten(ct)
        if ct_tree != spec.out_tree:
            raise ValueError(
                "unexpected tree structure: the cotangent passed to the function returned by "
                f"funcbp.vjp must match the structure of the output of {spec.name}:\n"
                f"  expected {spec.out_tree}\n  got      {ct_tree}")
        cts_out = [_cotangent(i, c, aval)
                   for i, (c, aval) in enumerate(zip(ct_leaves, spec.out_avals, strict=True))]
        cts_out += [None] * spec.num_aux
        cts_in = interpreter.backward(self.record, cts_out)
        result = []
        for aval, ct in zip(spec.in_avals, cts_in, strict=True):
            if not interpreter.is_differentiable(aval):
                result.append(np.zeros(aval.shape, dtype=jax.dtypes.float0))
            elif ct is None:
                result.append(interpreter.zeros_like_aval(aval))
            else:
                result.append(ct)
        return tuple(tree_unflatten(spec.in_tree, result))


def _flatten_pullback(p: Pullback):
    arrays, static = interpreter.split_static(p.record)
    return arrays, (static, p.spec)


def _unflatten_pullback(aux, arrays) -> Pullback:
    static, spec = aux
    return Pullback(interpreter.join_static(list(arrays), static), spec)


jax.tree_util.register_pytree_node(Pullback, _flatten_pullback, _unflatten_pullback)


def _cotangent(i: int, c: Any, aval: Any) -> Any:
    """Output ``i``'s cotangent checked against the output's type (None where none flows)."""
    if not interpreter.is_differentiable(aval):
        return None  # integer outputs take float0 cotangents; nothing flows
    if isinstance(c, (int, float, complex)) and not isinstance(c, bool):
        c = jnp.asarray(c, aval.dtype)  # a Python number, as jax accepts for a scalar output
    c_shape, c_dtype = np.shape(c), jnp.result_type(c)
    if c_shape != aval.shape or c_dtype != aval.dtype:
        raise ValueError(
            f"unexpected cotangent for output {i}: got {jnp.dtype(c_dtype).name}{list(c_shape)}, "
            f"but the output is {aval.dtype.name}{list(aval.shape)}")
    return c


def _check_argnums(argnums: int | Sequence[int], nargs: int) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums and not isinstance(argnums, int):
        raise TypeError("argnums must be an int or a non-empty sequence of ints, got ()")
    for n in nums:
        if not isinstance(n, (int, np.integer)):
            raise TypeError(f"argnums must be ints, got {argnums!r}")
    norm = tuple(n + nargs if n < 0 else n for n in nums)
    if any(n < 0 or n >= nargs for n in norm):
        raise TypeError(
            f"differentiating with respect to argnums={argnums} requires at least "
            f"{max(nums) + 1 if max(nums) >= 0 else -min(nums)} positional arguments to be "
            f"passed by the caller, but got only {nargs} positional arguments.")
    return norm


def _check_input_dtypes(args: Any, allow_int: bool, holomorphic: bool = False) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(args):
        dtype = jnp.result_type(leaf)
        if holomorphic and not jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError("grad with holomorphic=True requires inputs with complex dtype, "
                            f"but got {jnp.dtype(dtype).name}.")
        if jnp.issubdtype(dtype, jnp.inexact):
            continue
        if allow_int and (jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):
            continue
        where = jax.tree_util.keystr(path) or "the argument"
        raise TypeError(
            "grad requires real- or complex-valued inputs (input dtype that is a sub-dtype of "
            f"np.inexact), but got {jnp.dtype(dtype).name} at {where}. If you want to use "
            "Boolean- or integer-valued inputs, use vjp or set allow_int to True.")


def _check_scalar_output(out: Any, holomorphic: bool = False) -> None:
    if not isinstance(out, (jax.Array, np.ndarray, np.generic, float, int)):
        raise TypeError(
            "Gradient only defined for scalar-output functions. Output was "
            f"{type(out).__name__}: {tree_structure(out)}.")
    shape, dtype = np.shape(out), jnp.result_type(out)
    if shape != ():
        raise TypeError(
            f"Gradient only defined for scalar-output functions. Output had shape: {shape}.")
    if holomorphic:
        if not jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError("grad with holomorphic=True requires outputs with complex dtype, "
                            f"but got {jnp.dtype(dtype).name}.")
    elif jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            "grad requires real-valued outputs (output dtype that is a sub-dtype of "
            f"np.floating), but got {jnp.dtype(dtype).name}. For holomorphic differentiation, "
            "pass holomorphic=True. For differentiation of non-holomorphic functions involving "
            "complex outputs, use funcbp.vjp directly.")
    elif not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            "grad requires real-valued outputs (output dtype that is a sub-dtype of "
            f"np.floating), but got {jnp.dtype(dtype).name}. For differentiation of functions "
            "with integer outputs, use funcbp.vjp directly.")


def value_and_grad(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
                   holomorphic: bool = False, allow_int: bool = False,
                   reduce_axes: Sequence = (), *, debug_nans: bool = False
                   ) -> Callable[..., tuple[Any, Any]]:
    """Returns a function computing ``fun``'s value and gradient; as ``jax.value_and_grad``.

    Args:
      fun: scalar-valued function; positional arguments named by ``argnums`` are
        differentiated, keyword arguments are passed through.
      argnums: int or sequence of ints.
      has_aux: ``fun`` returns ``(value, aux)``; the result is then ``((value, aux), grads)``.
      holomorphic: ``fun`` is holomorphic in complex inputs with a complex output; the result
        is then the complex derivative ``f'(z)`` (the cotangent ``1 + 0j`` pulled back). Without
        it, complex inputs are allowed but the output must be real, and the gradient follows
        jax's convention ``df/dx - i df/dy`` (see docs/autodiff.md, "Complex numbers").
      allow_int: allow integer/bool arguments, whose gradients are ``float0`` zeros.
      reduce_axes: accepted for signature compatibility; must be empty.
      debug_nans: when the value or a gradient is NaN/inf, re-run ``fun`` eagerly through
        :func:`funcbp.find_nonfinite` and raise :class:`funcbp.debug.NonFiniteError` saying
        where it started (under ``jax.jit`` from a host callback, as a ``JaxRuntimeError``
        whose message holds the report). A finite result costs one ``isfinite`` check.

    Returns:
      ``f(*args, **kwargs) -> (value, grads)`` where ``grads`` has the structure of
      ``args[argnums]`` (a tuple when ``argnums`` is a sequence).

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> funcbp.value_and_grad(lambda w: jnp.sum(w ** 2))(jnp.arange(3.0))
      (Array(5., dtype=float32), Array([0., 2., 4.], dtype=float32))
    """
    if reduce_axes:
        raise NotImplementedError("funcbp does not support reduce_axes (jax deprecated it)")

    @functools.wraps(fun)
    def value_and_grad_f(*args, **kwargs):
        nums = _check_argnums(argnums, len(args))
        dyn = tuple(args[n] for n in nums)
        _check_input_dtypes(dyn, allow_int, holomorphic)

        def partial_fun(*dyn_args):
            full = list(args)
            for n, a in zip(nums, dyn_args, strict=True):
                full[n] = a
            return fun(*full, **kwargs)

        if has_aux:
            value, pullback, aux = vjp(partial_fun, *dyn, has_aux=True)
        else:
            value, pullback = vjp(partial_fun, *dyn)
        _check_scalar_output(value, holomorphic)
        grads = pullback(lax.full((), 1, jnp.result_type(value)))
        grads = grads[0] if isinstance(argnums, int) else grads
        if debug_nans:
            from funcbp.debug import raise_if_nonfinite

            value, grads = raise_if_nonfinite(fun, args, kwargs, nums, has_aux, value, grads)
        return ((value, aux) if has_aux else value), grads

    return value_and_grad_f


def grad(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
         holomorphic: bool = False, allow_int: bool = False,
         reduce_axes: Sequence = (), *, debug_nans: bool = False) -> Callable:
    """Returns a function computing the gradient of scalar ``fun``; as ``jax.grad``.

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> funcbp.grad(lambda x: jnp.tanh(x).sum())(jnp.zeros(2))
      Array([1., 1.], dtype=float32)
    """
    vg = value_and_grad(fun, argnums, has_aux, holomorphic, allow_int, reduce_axes,
                        debug_nans=debug_nans)

    @functools.wraps(fun)
    def grad_f(*args, **kwargs):
        out, g = vg(*args, **kwargs)
        return (g, out[1]) if has_aux else g

    return grad_f
