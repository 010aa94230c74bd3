"""The walk: evaluate a jaxpr forward keeping what the rules need, then run it backward.

``forward`` evaluates every equation with ordinary ``bind`` calls (so it works eagerly, under
``jax.jit``, under ``jax.vmap`` and under another differentiation), records which variables
depend on a differentiable input ("active" variables) and keeps the residuals that forward
rules return. ``backward`` walks the equations in reverse, pops each output cotangent once it is
used, applies the primitive's VJP rule and accumulates the input cotangents. Zero cotangents are
``None`` throughout: nothing is materialised for unused outputs, integer values or inputs that
do not depend on what is being differentiated.

Both walks report to :class:`Hooks` installed with :func:`hooks` (``funcbp.explain``, the
non-finite search of ``funcbp.debug`` and the quantities of ``funcbp.quantities`` ride the same
two loops this way), and keep a stack of the call-like equations they are inside
(:func:`path`), so a report can say "in the scan at model.py:12, inside the jit at ...".
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core

from funcbp.autodiff import compat
from funcbp.autodiff.rules import (
    EAGER_RULES,
    FORWARD_RULES,
    VJP_RULES,
    ZERO_GRADIENT,
    UnsupportedPrimitiveError,
    check_complex,
    rule_for,
)

__all__ = [
    "Frame",
    "Hooks",
    "Record",
    "UnsupportedPrimitiveError",
    "Carrier",
    "apply_rule",
    "backward",
    "carrier",
    "detail",
    "forward",
    "frame",
    "hooks",
    "inlining",
    "is_differentiable",
    "join_static",
    "location",
    "needed_vars",
    "path",
    "propagates",
    "split_static",
    "where",
]


@dataclass
class Record:
    """What the forward pass of one jaxpr leaves for its backward pass."""

    jaxpr: core.Jaxpr
    env: dict[Any, Any]
    active: set[Any]
    residuals: dict[int, Any] = field(default_factory=dict)


def is_differentiable(aval: Any) -> bool:
    """True for float and complex avals: the only values a cotangent can flow into."""
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def propagates(eqn: core.JaxprEqn) -> bool:
    """Whether an equation with an active input makes its float outputs active.

    Primitives registered as zero-gradient (``stop_gradient``, ``floor``, ``sign``...) do not:
    whatever is computed only from their outputs is inactive, so a loop or a branch fed only by
    them is evaluated, never differentiated.
    """
    return eqn.primitive not in ZERO_GRADIENT


def where(eqn: core.JaxprEqn) -> str:
    """A short 'file:line (function)' for an equation, for error messages."""
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - best effort only
        return "unknown location"


def _writes_reference(eqn: core.JaxprEqn) -> bool:
    """A write into a reference the function did not create (its own are discharged into values
    when it is traced): no output carries the written value, which must not be lost silently."""
    from jax._src.state.types import RefEffect

    return any(isinstance(e, RefEffect) for e in eqn.effects)


def _is_var(v: Any) -> bool:
    return not isinstance(v, core.Literal)


def _read(env: dict, v: Any) -> Any:
    return v.val if isinstance(v, core.Literal) else env[v]


def eval_eqn(eqn: core.JaxprEqn, invals: list[Any]) -> list[Any]:
    """Evaluates one equation with ``bind``, as ``jax.core.eval_jaxpr`` does."""
    out = compat.bind_equation(eqn.primitive, eqn.params, invals)
    return list(out) if eqn.primitive.multiple_results else [out]


# --- hooks and the path of nested calls -----------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """One call-like equation the walk is inside: its primitive, its location, and a detail
    that the rule adds (``"iteration 3"`` of a scan, ``"branch 1"`` of a cond)."""

    primitive: str
    where: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.primitive}{f' [{self.detail}]' if self.detail else ''} at {self.where}"


class Hooks:
    """What a walk reports to the code that started it; override the methods you need.

    Attributes:
      inline: evaluate every call-like and control-flow equation through the interpreter
        (its forward rule) even where nothing in it is differentiated, so that the hooks see
        the equations inside ``jit``, ``custom_jvp`` and loop bodies too (debugging).
    """

    inline: bool = False

    def forward_eqn(self, eqn: core.JaxprEqn, invals: list, outs: list) -> None:
        """Called after each equation of every forward walk, with its input and output values."""

    def backward_eqn(self, eqn: core.JaxprEqn, invals: list, outs: list, cts_out: list,
                     cts_in: list) -> None:
        """Called after each rule is applied, with the cotangents of the equation's outputs
        (None: zero) and those sent to its inputs (None where none flows)."""


_HOOKS: contextvars.ContextVar[tuple[Hooks, ...]] = contextvars.ContextVar(
    "funcbp_walk_hooks", default=())
_PATH: contextvars.ContextVar[tuple[Frame, ...]] = contextvars.ContextVar(
    "funcbp_walk_path", default=())


@contextlib.contextmanager
def hooks(*installed: Hooks) -> Iterator[None]:
    """Installs ``installed`` for every walk started inside the ``with`` block (nested ones too).

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> from funcbp.autodiff import interpreter
      >>> class Names(interpreter.Hooks):
      ...     def __init__(self): self.seen = []
      ...     def forward_eqn(self, eqn, invals, outs): self.seen.append(eqn.primitive.name)
      >>> names = Names()
      >>> with interpreter.hooks(names):
      ...     _ = funcbp.grad(lambda x: jnp.sin(x) * 2.0)(1.0)
      >>> names.seen
      ['sin', 'mul']
    """
    token = _HOOKS.set(_HOOKS.get() + installed)
    try:
        yield
    finally:
        _HOOKS.reset(token)


def path() -> tuple[Frame, ...]:
    """The call-like equations the current walk is inside, outermost first."""
    return _PATH.get()


def inlining() -> bool:
    """Whether an installed :class:`Hooks` asks the walks to descend into every call
    (``Hooks.inline``); rules then evaluate loops and branches eagerly when values are concrete."""
    return any(h.inline for h in _HOOKS.get())


@contextlib.contextmanager
def detail(text: str) -> Iterator[None]:
    """Sets the innermost frame's detail (``"iteration 3"``) for the block (loop rules)."""
    frames = _PATH.get()
    if not frames:
        yield
        return
    token = _PATH.set(frames[:-1] + (Frame(frames[-1].primitive, frames[-1].where, text),))
    try:
        yield
    finally:
        _PATH.reset(token)


@contextlib.contextmanager
def frame(f: Frame) -> Iterator[None]:
    """Pushes ``f`` on :func:`path` for the duration of the block (rules add loop iterations)."""
    token = _PATH.set(_PATH.get() + (f,))
    try:
        yield
    finally:
        _PATH.reset(token)


def _frame_of(eqn: core.JaxprEqn) -> Frame:
    name = eqn.params.get("name")
    label = f"{eqn.primitive.name}({name})" if isinstance(name, str) else eqn.primitive.name
    return Frame(label, where(eqn))


def _nests(eqn: core.JaxprEqn) -> bool:
    for p in eqn.params.values():
        for sub in p if isinstance(p, (tuple, list)) else (p,):
            if isinstance(sub, (core.ClosedJaxpr, core.Jaxpr)):
                return True
    return eqn.primitive in FORWARD_RULES


def location(eqn: core.JaxprEqn) -> str:
    """Where an equation is, with the user's call site when it sits inside nested calls (e.g.
    inside ``jnp.linalg.solve``'s own jit: the user's line that called it comes last)."""
    here = where(eqn)
    frames = path()
    if not frames:
        return here
    inside = " in ".join(f"{f.primitive}" + (f" [{f.detail}]" if f.detail else "")
                         for f in reversed(frames))
    return f"{here + ', ' if here else ''}inside {inside} called at {frames[0].where}"


# --- forward ---------------------------------------------------------------------------------

def forward(jaxpr: core.Jaxpr, consts: list[Any], args: list[Any],
            active_in: list[bool], *, saved: dict[int, list] | None = None
            ) -> tuple[list[Any], Record]:
    """Evaluates ``jaxpr`` on ``consts`` and ``args``; ``active_in[i]`` marks differentiable args.

    ``saved`` maps equation indices to output values computed earlier (``jax.checkpoint``
    policies keep some); those equations are not evaluated again.

    Returns the outputs and the :class:`Record` that :func:`backward` consumes.
    """
    env: dict[Any, Any] = {}
    active: set[Any] = set()
    record = Record(jaxpr, env, active)
    installed = _HOOKS.get()
    inline = any(h.inline for h in installed)
    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, x, a in zip(jaxpr.invars, args, active_in, strict=True):
        env[v] = x
        if a and is_differentiable(v.aval):
            active.add(v)
    for i, eqn in enumerate(jaxpr.eqns):
        invals = [_read(env, v) for v in eqn.invars]
        needs = tuple(_is_var(v) and v in active for v in eqn.invars)
        if any(needs) and propagates(eqn):
            float_outs = [v for v in eqn.outvars if is_differentiable(v.aval)]
            if float_outs or _writes_reference(eqn):
                if eqn.primitive not in VJP_RULES:
                    rule_for(eqn.primitive, location(eqn))  # raises UnsupportedPrimitiveError
                check_complex(eqn.primitive, [v.aval for v in (*eqn.invars, *eqn.outvars)],
                              location(eqn))
            active.update(float_outs)
        if saved is not None and i in saved:
            outs = list(saved[i])
        else:
            outs = _forward_eqn(eqn, i, invals, needs, record, inline)
        for v, x in zip(eqn.outvars, outs, strict=True):
            env[v] = x
        for h in installed:
            h.forward_eqn(eqn, invals, outs)
    return [_read(env, v) for v in jaxpr.outvars], record


def _forward_eqn(eqn: core.JaxprEqn, i: int, invals: list, needs: tuple, record: Record,
                 inline: bool) -> list:
    fwd = FORWARD_RULES.get(eqn.primitive)
    if fwd is None and inline and eqn.primitive in EAGER_RULES:
        with frame(_frame_of(eqn)):  # debugging: a cond's branch, a while's iterations
            return EAGER_RULES[eqn.primitive](eqn, invals)
    if fwd is None or not (any(needs) or (inline and _nests(eqn))):
        return eval_eqn(eqn, invals)
    with frame(_frame_of(eqn)):
        outs, record.residuals[i] = fwd(*invals, needs=needs, **eqn.params)
    return list(outs) if eqn.primitive.multiple_results else [outs]


# --- backward ----------------------------------------------------------------------------------

def backward(record: Record, cts_out: list[Any]) -> list[Any]:
    """Pulls the output cotangents ``cts_out`` back to the jaxpr's inputs (None = zero).

    The installed :class:`Hooks` see every rule application of this walk and of nested ones
    (``funcbp.explain``, ``funcbp.debug``).

    What travels is the installed :class:`Carrier`'s business (:func:`carrier`): by default the
    plain cotangent and the VJP rule; ``funcbp.quantities`` installs one whose values carry
    extra columns and per-example axes (``funcbp/autodiff/extend``).
    """
    jaxpr, env, active = record.jaxpr, record.env, record.active
    installed = _HOOKS.get()
    walk = (_CARRIER.get() or _PLAIN).begin(record)
    cotangents: dict[Any, Any] = {}
    for v, ct in zip(jaxpr.outvars, cts_out, strict=True):
        walk.accumulate(cotangents, active, v, ct, "the function's output")
    for i in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[i]
        cts = [cotangents.pop(v, None) for v in eqn.outvars]
        if all(ct is None for ct in cts):
            continue  # nothing flows back through this equation
        invals = [_read(env, v) for v in eqn.invars]
        outs = [env[v] for v in eqn.outvars]
        needs = tuple(_is_var(v) and v in active for v in eqn.invars)
        cts_in = walk.apply(i, eqn, cts, invals, outs, needs, record.residuals.get(i))
        computed = []
        for v, ct, need in zip(eqn.invars, cts_in, needs, strict=True):
            if need and ct is not None:
                if callable(ct):
                    ct = ct()  # rules may defer work that only some inputs need
                walk.accumulate(cotangents, active, v, ct, f"the '{eqn.primitive.name}' rule")
            computed.append(ct if need and not callable(ct) else None)
        for h in installed:
            h.backward_eqn(eqn, invals, outs, cts, computed)
    return [cotangents.pop(v, None) if v in active else None for v in jaxpr.invars]


def apply_rule(eqn: core.JaxprEqn, cts: list, invals: list, outs: list, needs: tuple,
               residuals: Any = None) -> tuple:
    """Applies ``eqn``'s VJP rule to its output cotangents; one cotangent (or None, or a thunk)
    per input."""
    rule = rule_for(eqn.primitive, location(eqn))
    kwargs = dict(eqn.params, needs=needs)
    if residuals is not None:
        kwargs["res"] = residuals
    nested = contextlib.nullcontext()
    if _nests(eqn):
        nested = frame(_frame_of(eqn))
    with nested:
        if eqn.primitive.multiple_results:
            cts_in = rule(cts, *invals, out=outs, **kwargs)
        else:
            cts_in = rule(cts[0], *invals, out=outs[0], **kwargs)
    if len(cts_in) != len(eqn.invars):
        raise RuntimeError(
            f"the VJP rule for '{eqn.primitive.name}' returned {len(cts_in)} cotangents "
            f"for {len(eqn.invars)} inputs; a rule returns one per input (None for none)")
    return cts_in


# --- what travels: the carrier ----------------------------------------------------------------

class Carrier:
    """What travels backward along the walk, and how each equation moves it.

    ``begin(record)`` is called once per walk (nested walks of jit, scan, remat... too) and
    returns the object whose ``apply(i, eqn, cts, invals, outs, needs, residuals)`` computes the
    input "cotangents" of equation ``i`` from its output ones, and whose
    ``accumulate(cotangents, active, var, ct, source)`` adds one into a variable's total. The
    plain carrier (the default) moves cotangents with the VJP rules; another carrier can move
    richer values (extra columns, per-example axes) through the same loop, falling back to
    :func:`apply_rule` where it has nothing to add.
    """

    def begin(self, record: Record) -> Any:
        return self

    def apply(self, i: int, eqn: core.JaxprEqn, cts: list, invals: list, outs: list,
              needs: tuple, residuals: Any) -> tuple:
        return apply_rule(eqn, cts, invals, outs, needs, residuals)

    def accumulate(self, cotangents: dict, active: set, v: Any, ct: Any, source: str) -> None:
        accumulate(cotangents, active, v, ct, source)


_PLAIN = Carrier()
_CARRIER: contextvars.ContextVar[Carrier | None] = contextvars.ContextVar(
    "funcbp_walk_carrier", default=None)


@contextlib.contextmanager
def carrier(c: Carrier | None) -> Iterator[None]:
    """Makes ``c`` carry every backward walk started inside the block (None: the plain one).

    A carrier that applies an ordinary VJP rule whose own walks must stay plain (a scan's body,
    a custom_jvp's JVP) wraps that call in ``carrier(None)``.
    """
    token = _CARRIER.set(c)
    try:
        yield
    finally:
        _CARRIER.reset(token)


def accumulate(cotangents: dict, active: set, v: Any, ct: Any, source: str) -> None:
    """Adds ``ct`` into ``v``'s cotangent; skips literals, inactive variables and ``None``."""
    if ct is None or isinstance(v, core.Literal) or v not in active:
        return
    aval = v.aval
    if np.shape(ct) != aval.shape:
        raise ValueError(
            f"{source} produced a cotangent of shape {np.shape(ct)} for a value of shape "
            f"{aval.shape}; this is a bug in that VJP rule")
    if jnp.result_type(ct) != aval.dtype:
        if jnp.iscomplexobj(ct) and not jnp.issubdtype(aval.dtype, jnp.complexfloating):
            ct = lax.real(ct)  # a real value's cotangent is the real part (jax's convention)
        ct = lax.convert_element_type(ct, aval.dtype)
    prev = cotangents.get(v)
    cotangents[v] = ct if prev is None else lax.add(prev, ct)


def zeros_like_aval(aval: Any) -> jax.Array:
    """Materialises a zero of ``aval``'s shape and dtype (only where an API must return one).

    Inside ``shard_map(check_vma=True)`` the zero also varies across the mesh axes ``aval``
    varies across, so it can stand where that value's cotangent goes (e.g. a scan carry).
    """
    zero = lax.full(aval.shape, 0, aval.dtype)
    varying = compat.varying_axes(aval)
    if varying:
        from jax._src import config as jax_config
        from jax._src import core as jax_core

        if jax_config._check_vma.value:
            zero = jax_core.pvary(zero, tuple(varying))
    return zero


# --- a forward record as a pytree ----------------------------------------------------------

def needed_vars(jaxpr: Any, active: set) -> list:
    """Variables the backward walk of ``jaxpr`` reads: in- and outputs of active equations."""
    seen: dict = {}
    for eqn in jaxpr.eqns:
        if any(_is_var(v) and v in active for v in eqn.invars):
            for v in (*eqn.invars, *eqn.outvars):
                if _is_var(v):
                    seen.setdefault(v, None)
    return list(seen)


def _flatten_record(rec: Record):
    keep = tuple(v for v in needed_vars(rec.jaxpr, rec.active) if v in rec.env)
    return ([rec.env[v] for v in keep], rec.residuals), (rec.jaxpr, keep, frozenset(rec.active))


def _unflatten_record(aux, children) -> Record:
    jaxpr, keep, active = aux
    vals, residuals = children
    return Record(jaxpr, dict(zip(keep, vals, strict=True)), set(active), residuals)


# A Record flattens to exactly the values its backward reads: a scan stacks the records of the
# calls in its body this way, and a pullback (funcbp.vjp's second result) is a pytree of them.
jax.tree_util.register_pytree_node(Record, _flatten_record, _unflatten_record)


def split_static(tree: Any) -> tuple[list, Any]:
    """``(arrays, static)``: the array leaves of ``tree``, and what rebuilds it from them (the
    treedef and the non-array leaves, e.g. a custom_vjp's ``bwd`` kept in residuals)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    static = {i: leaf for i, leaf in enumerate(leaves) if not _is_array(leaf)}
    return [leaf for leaf in leaves if _is_array(leaf)], (treedef, static)


def join_static(arrays: list, static: Any) -> Any:
    """The inverse of :func:`split_static`."""
    treedef, fixed = static
    it = iter(arrays)
    return treedef.unflatten([fixed[i] if i in fixed else next(it)
                              for i in range(treedef.num_leaves)])


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic)) or isinstance(
        x, jax.core.Tracer)

