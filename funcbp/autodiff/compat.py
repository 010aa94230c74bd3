"""Everything in funcbp's autodiff that depends on the jax version, in one place.

funcbp reads jaxprs, which are jax's internal representation; the few places that reach past
``jax.extend`` into ``jax._src`` are gathered here, each with the versions it was written for,
so that supporting another jax release means reading this file, not the whole package.

- :func:`trace_concrete`: tracing with concrete values, so that a function with Python control
  flow on its inputs (``3 * x if x < 2 else sin(x)``) can be differentiated when called with
  concrete arrays, as ``jax.grad`` allows. jax's own tracer for jaxprs is subclassed so that its
  tracers also carry the value each equation computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax._src import api_util, core
from jax._src import linear_util as lu
from jax._src.interpreters import partial_eval as pe

__all__ = ["bind_equation", "custom_vjp_subfuns", "is_concrete", "trace_concrete"]


def bind_equation(primitive: Any, params: dict, invals: list) -> Any:
    """Binds ``primitive`` as a jaxpr equation with ``params`` does (``jax.core.eval_jaxpr``).

    jax >= 0.10 returns the bind parameters alone from ``get_bind_params`` (sub-functions
    travel inside them); earlier versions return ``(subfuns, params)``.
    """
    bind_params = primitive.get_bind_params(params)
    if isinstance(bind_params, tuple):
        subfuns, bind_params = bind_params
        return primitive.bind(*subfuns, *invals, **bind_params)
    return primitive.bind(*invals, **bind_params)


def custom_vjp_subfuns(params: dict) -> tuple:
    """``(fun, fwd, bwd)`` of a ``custom_vjp_call`` equation, as jax binds them."""
    from jax._src import custom_derivatives as cd

    bind_params = cd.custom_vjp_call_p.get_bind_params(params)
    if isinstance(bind_params, tuple):
        return tuple(bind_params[0])
    return tuple(bind_params["subfuns"])


def is_concrete(x: Any) -> bool:
    """True for a value whose contents Python can read: an array, or a tracer that knows its
    value (jax's JVP tracers, funcbp's own concrete tracers)."""
    return not isinstance(x, core.Tracer) or core.is_concrete(x)


class _ValuedTracer(pe.DynamicJaxprTracer):
    """A jaxpr tracer that also knows its value: Python ``if``/``int``/``float`` work on it."""

    __slots__ = ()

    def to_concrete_value(self):
        return _value(self)


def _value(t: Any) -> Any:
    if not isinstance(t, pe.DynamicJaxprTracer):
        return t
    atom = t.val
    if isinstance(atom, core.Literal):
        return atom.val
    trace = t._trace
    values = getattr(trace, "values", {})
    if atom in values:
        return values[atom]
    const = trace.frame.constvar_to_val.get(atom)
    return const


class _ValuedTrace(pe.DynamicJaxprTrace):
    """jax's jaxpr tracer, evaluating every equation it records on the concrete inputs."""

    def __init__(self, debug_info: Any, parent_trace: Any, args: list[Any]):
        super().__init__(debug_info, parent_trace=parent_trace)
        self.values: dict[Any, Any] = {}
        self._args = [core.to_concrete_value(x) for x in args]

    def new_arg(self, aval, source_info):
        tracer = super().new_arg(aval, source_info)
        tracer.__class__ = _ValuedTracer
        self.values[tracer.val] = self._args[len(self.values)]
        return tracer

    def var_to_tracer(self, var, source_info, parent=None):
        tracer = super().var_to_tracer(var, source_info, parent)
        tracer.__class__ = _ValuedTracer
        return tracer

    def make_eqn(self, in_tracers, out_avals, primitive, params, effects, source_info=None,
                 ctx=None):
        eqn, out_tracers = super().make_eqn(in_tracers, out_avals, primitive, params, effects,
                                            source_info, ctx)
        invals = [_value(t) for t in in_tracers]
        with core.set_current_trace(core.eval_trace):  # values only: nothing is recorded
            outs = bind_equation(primitive, params, invals)
        outs = list(outs) if primitive.multiple_results else [outs]
        for var, val in zip(eqn.outvars, outs, strict=True):
            self.values[var] = val
        return eqn, out_tracers


def trace_concrete(flat_fun: Callable, args: list[Any], name: str) -> core.ClosedJaxpr:
    """``jax.make_jaxpr(flat_fun)(*args)`` for concrete ``args``, with concrete tracers.

    Written for jax 0.10 (``DynamicJaxprTrace.make_eqn``/``var_to_tracer``/``new_arg``); on a
    jax whose tracer differs the caller gets the original concretization error instead.
    """
    avals = [core.typeof(x) for x in args]
    dbg = api_util.debug_info(name, flat_fun, tuple(args), {})
    fun = lu.wrap_init(flat_fun, debug_info=dbg)
    parent = core.trace_ctx.trace
    trace = _ValuedTrace(fun.debug_info, parent, args)
    with core.ensure_no_leaks(trace):
        source_info = jax._src.source_info_util.current()
        in_tracers = [trace.new_arg(a, source_info) for a in avals]
        with core.set_current_trace(trace):
            ans = fun.call_wrapped(*in_tracers)
        out_tracers = [trace.to_jaxpr_tracer(x, source_info) for x in ans]
        jaxpr, consts = trace.frame.to_jaxpr(trace, out_tracers, fun.debug_info, source_info)
        del trace, in_tracers, out_tracers, ans
    return core.ClosedJaxpr(jaxpr, consts)
