"""Everything in funcbp's autodiff that depends on the jax version, in one place.

funcbp reads jaxprs, which are jax's internal representation; the few places that reach past
``jax.extend`` into ``jax._src`` are gathered here, each with the versions it was written for,
so that supporting another jax release means reading this file, not the whole package.

- :func:`trace_concrete`: tracing with concrete values, so that a function with Python control
  flow on its inputs (``3 * x if x < 2 else sin(x)``) can be differentiated when called with
  concrete arrays, as ``jax.grad`` allows. jax's own tracer for jaxprs is subclassed so that its
  tracers also carry the value each equation computes.
- :func:`bind_equation`, :func:`custom_vjp_subfuns`: ``get_bind_params`` returns
  ``(subfuns, params)`` before jax 0.10, the params alone (sub-functions inside) from 0.10.
- :func:`hi_primitive`: the hi-level primitive of a ``call_hi_primitive`` equation (``prim``
  in 0.9, ``_prim`` from 0.10).
- :func:`discharge_state`: jax 0.9 discharges ``(jaxpr, consts)``, jax 0.10 a ``ClosedJaxpr``.
- :func:`varying_axes`: the mesh axes a value varies across in ``shard_map(check_vma=True)``
  (``aval.vma`` in jax 0.9, ``aval.mat.varying`` from 0.10).
- :func:`shard_map_manual_axes`, :func:`bind_shard_map`: the axes a ``shard_map`` equation
  makes manual (``manual_axes`` in 0.9, ``newly_manual_axes`` from 0.10) and binding one whose
  output specs are known only after tracing its body (an ``out_specs_thunk`` in 0.9, a
  ``FlatTree`` carrying the specs from 0.10).
- :func:`all_gather_invariant`: ``lax.all_gather(..., to="invarying")`` from jax 0.10; jax 0.9
  has the same primitive only as ``jax._src.lax.parallel.all_gather_invariant`` (the rule table
  of ``funcbp check`` and the tests build it through this function).
- :data:`NOT_IN_EVERY_VERSION`: primitives that exist in only part of the supported range, so
  ``funcbp.autodiff.coverage`` does not call an exclusion of one stale on a jax without it.

Parameters that jax 0.10 added to a primitive are absent from a jax 0.9 jaxpr; their rules read
them with their old meaning (``eig``'s ``enable_eigvec_derivs``: False, so eigenvectors are
refused as jax 0.9 refuses them; ``tridiagonal_solve``'s ``perturb_singular``: passed on only
when present) and bind the primitive with exactly the parameters the equation has. Primitives
that jax 0.9 lacks (``stack``, ``unstack``) get a rule only where they exist.

Supported range: jax 0.9.0 (the floor in ``pyproject.toml``, tested in CI) to 0.10.2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax._src import api_util, core
from jax._src import linear_util as lu
from jax._src.interpreters import partial_eval as pe
from jax._src.state import discharge as _state_discharge

__all__ = ["NOT_IN_EVERY_VERSION", "all_gather_invariant", "bind_equation", "bind_shard_map",
           "custom_vjp_subfuns", "discharge_state", "hi_primitive", "is_concrete",
           "shard_map_manual_axes", "trace_concrete", "varying_axes"]

_JAX_0_10 = tuple(int(p) for p in jax.__version__.split(".")[:2]) >= (0, 10)

#: primitive name -> the jax versions whose public modules can emit it, for primitives in only
#: part of the supported range (read by ``funcbp.autodiff.coverage``: an exclusion of one the
#: installed jax cannot emit is not stale).
NOT_IN_EVERY_VERSION: dict[str, str] = {
    **dict.fromkeys(["empty_ref", "free_ref", "eval_jaxpr", "log_extend", "log_read", "new_log",
                     "mulhi", "stage", "check"], "jax >= 0.10"),
    **dict.fromkeys(["xla_pmap", "custom_transpose_call"], "jax < 0.10"),
}


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


def hi_primitive(params: dict) -> Any:
    """The ``VJPHiPrimitive`` a ``call_hi_primitive`` equation applies: its ``_prim`` param
    from jax 0.10, ``prim`` in 0.9 (the only param either way)."""
    return params["_prim"] if "_prim" in params else params["prim"]


def discharge_state(closed: core.ClosedJaxpr) -> core.ClosedJaxpr:
    """jax's state discharge of ``closed``: references in, values out (same ``ClosedJaxpr``
    contract on every version; jax 0.9 takes and returns ``(jaxpr, consts)``)."""
    if not _JAX_0_10:
        jaxpr, consts = _state_discharge.discharge_state(closed.jaxpr, closed.consts)
        return core.ClosedJaxpr(jaxpr, consts)
    return _state_discharge.discharge_state(closed)


def varying_axes(x: Any) -> frozenset:
    """The mesh axes ``x`` (a value or an aval) varies across under ``shard_map(check_vma=True)``;
    empty outside one. jax 0.9 keeps them in ``aval.vma``, jax 0.10 in ``aval.mat.varying``."""
    aval = x if isinstance(x, core.AbstractValue) else core.typeof(x)
    mat = getattr(aval, "mat", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", None) or ())


def shard_map_manual_axes(params: dict) -> frozenset:
    """The mesh axes a ``shard_map`` equation makes manual: its ``newly_manual_axes`` from jax
    0.10 (axes an enclosing shard_map made manual excluded), ``manual_axes`` in 0.9."""
    if "newly_manual_axes" in params:
        return params["newly_manual_axes"]
    return params["manual_axes"]


def bind_shard_map(body: Callable, args: list, *, mesh: Any, in_specs: Any, check_vma: bool,
                   manual_axes: frozenset, debug_info: Any) -> list:
    """Binds ``shard_map`` on ``args`` with ``body(*local_args) -> (outputs, out_specs)``, whose
    output specs are known only once it is traced, as jax binds its own (transposition).

    jax 0.10 takes the body as a ``FlatTree``-returning sub-function with the specs as its aux
    and the manual axes as ``newly_manual_axes``; jax 0.9 takes a ``WrappedFun``, an
    ``out_specs_thunk`` read after tracing, and ``manual_axes``.
    """
    from jax._src.shard_map import shard_map_p

    debug_info = debug_info.with_unknown_names()
    if _JAX_0_10:
        from jax._src.tree_util import FlatTree

        def fun(*local_args):
            outs, specs = body(*local_args)
            return FlatTree.flatten(list(outs)).with_aux(tuple(specs))

        out = shard_map_p.bind(*args, subfuns=(fun,), mesh=mesh, in_specs=tuple(in_specs),
                               check_vma=check_vma, newly_manual_axes=manual_axes,
                               debug_info=debug_info)
        return list(out.unflatten())
    specs: list = []

    def flat(*local_args):
        outs, out_specs = body(*local_args)
        specs[:] = out_specs
        return list(outs)

    out = shard_map_p.bind(lu.wrap_init(flat, debug_info=debug_info), *args, mesh=mesh,
                           in_specs=tuple(in_specs), out_specs_thunk=lambda: tuple(specs),
                           check_vma=check_vma, manual_axes=manual_axes)
    return list(out)


def all_gather_invariant(x: Any, axis_name: Any, **kwargs: Any) -> Any:
    """``lax.all_gather(x, axis_name, to="invarying", **kwargs)`` (jax >= 0.10, the spelling
    users write); on jax 0.9 the same ``all_gather_invariant`` primitive by its own function."""
    if _JAX_0_10:
        return jax.lax.all_gather(x, axis_name, to="invarying", **kwargs)
    from jax._src.lax import parallel

    return parallel.all_gather_invariant(x, axis_name, **kwargs)


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
