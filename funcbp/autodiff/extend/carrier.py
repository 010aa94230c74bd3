"""The passengers of the backward walk: columns of cotangents, per example where needed.

What travels along :func:`funcbp.autodiff.interpreter.backward` for ``funcbp.quantities`` is a
:class:`Pack` per variable instead of one cotangent: named *groups* of columns, each an array
``(K, *shape)``. The gradient is the group ``"grad"`` (K = 1); a symmetric factor of the loss
Hessian travels as group ``"ggn"`` (K = its columns) or ``"mc"`` (K = Monte-Carlo samples); the
Hessian's residual factors appear as groups ``"res<n>+"``/``"res<n>-"`` at nonlinear
elementwise equations. Every rule is linear in its cotangent, so each column travels through the
ordinary VJP rule, ``jax.vmap``-ed over the column axis.

Values that carry the example axis (found by :mod:`.batch_axes`) keep it inside their shape: a
column of such a value holds every example's column at once, and the examples never meet
because no equation mixes them. Values that do not (parameters and what is computed from them)
would receive the *sum* over examples from an ordinary rule; where per-example quantities are
asked for, the equations where such a value meets batched ones ("sites") apply their rule
per example instead (``vmap`` over the example axis, the axis kept with size one so the rule
sees the shapes it was written for), and the value's columns get an axis of examples:
``(K, B, *shape)`` (mode ``"examples"``). Dense and convolution weights that are parameters used
once skip even that: :mod:`.sites` reads the needed sums of squares off the layer's input and
output columns without forming per-example gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src.core import eval_jaxpr as _eval_jaxpr
from jax.extend import core

from funcbp.autodiff import interpreter
from funcbp.autodiff.extend import curvature, sites
from funcbp.autodiff.extend.batch_axes import MIXED, Analysis
from funcbp.autodiff.rules import FORWARD_RULES

__all__ = ["Pack", "PassengerCarrier", "Spec"]


@dataclass
class Pack:
    """The columns travelling for one variable.

    Attributes:
      groups: group name -> array ``(K, *shape)`` (``mode="batched"`` or ``"summed"``) or
        ``(K, B, *shape)`` (``mode="examples"``).
      mode: ``"batched"`` (the value has the example axis inside its shape), ``"examples"``
        (an unbatched value, one column set per example) or ``"summed"`` (an unbatched value,
        columns summed over examples, as the ordinary gradient is).
    """

    groups: dict
    mode: str


@dataclass(frozen=True)
class Spec:
    """What the walk must deliver."""

    per_example: bool      # unbatched values keep an examples axis
    reduce_sites: bool     # dense/conv weights may take the reduced path
    hessian: bool          # create residual columns at nonlinear elementwise equations
    want: frozenset        # the quantities asked for
    batch_size: int


class _KfacOnly:
    """A spec asking a site for its Kronecker factors alone (the walk handles the rest)."""

    def __init__(self, spec: Spec):
        self.want = frozenset({"kfac"})
        self.batch_size = spec.batch_size


_RECURSE = {"pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint"}


@dataclass
class PassengerCarrier(interpreter.Carrier):
    """Moves :class:`Pack` values through the walk; see the module docstring."""

    top: Analysis
    spec: Spec
    pending: list = field(default_factory=list)
    site_results: dict = field(default_factory=dict)   # param leaf -> {quantity: value}
    kfac_results: dict = field(default_factory=dict)   # param leaf -> (A, G) (batch_grad runs)
    paths: dict = field(default_factory=dict)          # param leaf -> path taken
    n_residuals: int = 0
    started: bool = False

    def begin(self, record: interpreter.Record) -> _Walk:
        if not self.started:
            self.started = True
            return _Walk(self, self.top)
        if not self.pending or self.pending[-1].jaxpr is not record.jaxpr:
            raise RuntimeError("funcbp.quantities: a nested walk started without its analysis; "
                               "this is a bug in funcbp/autodiff/extend")
        return _Walk(self, self.pending.pop())


class _Walk:
    def __init__(self, carrier: PassengerCarrier, an: Analysis):
        self.c = carrier
        self.an = an

    # -- accumulation ---------------------------------------------------------------------------

    def accumulate(self, cotangents: dict, active: set, v: Any, ct: Any, source: str) -> None:
        if ct is None or isinstance(v, core.Literal) or v not in active:
            return
        if not isinstance(ct, Pack):
            raise TypeError(f"{source} produced a plain cotangent where columns travel; this is "
                            "a bug in funcbp/autodiff/extend")
        aval = v.aval
        lead = 2 if ct.mode == "examples" else 1
        for name, arr in ct.groups.items():
            if tuple(arr.shape[lead:]) != tuple(aval.shape):
                raise ValueError(f"{source} produced columns '{name}' of shape {arr.shape} for a "
                                 f"value of shape {aval.shape} (mode {ct.mode}); this is a bug "
                                 "in funcbp/autodiff/extend")
        prev = cotangents.get(v)
        if prev is None:
            cotangents[v] = ct
            return
        if prev.mode != ct.mode:
            raise RuntimeError(f"columns of modes {prev.mode} and {ct.mode} meet at one value "
                               f"({source}); this is a bug in funcbp/autodiff/extend")
        groups = dict(prev.groups)
        for name, arr in ct.groups.items():
            groups[name] = arr if name not in groups else groups[name] + arr
        cotangents[v] = Pack(groups, prev.mode)

    # -- one equation -----------------------------------------------------------------------------

    def apply(self, i: int, eqn: Any, cts: list, invals: list, outs: list, needs: tuple,
              residuals: Any) -> tuple:
        an, spec = self.an, self.c.spec
        name = eqn.primitive.name
        ax_in = [an.axis(v) for v in eqn.invars]
        ax_out = [an.axis(v) for v in eqn.outvars]
        if name in _RECURSE and (i, "call") in an.subs:
            # A nested call: walk its body with the same passengers (its sites, its residuals).
            self.c.pending.append(an.subs[(i, "call")])
            return interpreter.apply_rule(eqn, cts, invals, outs, needs, residuals)
        needs = list(needs)
        result: list = [None] * len(eqn.invars)
        batched_eqn = any(a is not None for a in ax_out)
        kfac_only = not spec.reduce_sites and "kfac" in spec.want
        if batched_eqn and (spec.reduce_sites or kfac_only) and name in sites.SITE_RULES:
            for j, need in enumerate(needs):
                v = eqn.invars[j]
                if (need and ax_in[j] is None and v in an.params and an.uses.get(v) == 1):
                    site_spec = _KfacOnly(spec) if kfac_only else spec
                    done = sites.SITE_RULES[name](eqn, j, invals, ax_in, ax_out[0], cts[0],
                                                  site_spec)
                    if done is None:
                        continue
                    values, path = done
                    if kfac_only:  # per-example gradients are materialised anyway (batch_grad)
                        self.c.kfac_results[an.params[v]] = values.get("kfac")
                        continue
                    self.c.site_results[an.params[v]] = values
                    self.c.paths[an.params[v]] = path
                    needs[j] = False
        if any(needs):
            moved = self._move(eqn, cts, invals, outs, tuple(needs), residuals, ax_in, ax_out)
            for j, pack in enumerate(moved):
                if pack is not None:
                    result[j] = pack
        if spec.hessian and i in curvature.residual_sites(an):
            j = curvature.residual_sites(an)[i]
            self.c.n_residuals += 1
            extra = curvature.residual_columns(eqn, j, invals, ax_in[j], cts[0],
                                               f"res{self.c.n_residuals}")
            if extra:
                base = result[j]
                groups = dict(base.groups) if base is not None else {}
                groups.update(extra)
                result[j] = Pack(groups, "batched")
        return tuple(result)

    def _move(self, eqn, cts, invals, outs, needs, residuals, ax_in, ax_out) -> list:
        """Pushes every column of the outputs' packs back through the VJP rule."""
        spec = self.c.spec
        layout = _layout(cts)
        modes = [p.mode if p is not None else None for p in cts]
        stacked = [None if p is None else _concat(p, layout) for p in cts]
        batched_eqn = any(a is not None for a in ax_out)
        unbatched_need = [j for j, n in enumerate(needs) if n and ax_in[j] is None]
        if not batched_eqn:
            mode = "examples" if spec.per_example else "summed"
            flat = _flatten_lead(stacked, 2 if mode == "examples" else 1)
            got = _columns(eqn, flat[0], invals, outs, needs, residuals, ax_out)
            got = [None if g is None else g.reshape(flat[1] + g.shape[1:]) for g in got]
            in_modes = [mode] * len(needs)
        elif spec.per_example and (unbatched_need or "examples" in modes):
            if eqn.primitive.name.startswith("custom_vjp"):
                raise NotImplementedError(
                    f"funcbp.quantities: the jax.custom_vjp function at "
                    f"{interpreter.location(eqn)} takes a parameter, and its bwd rule is "
                    "written for the whole batch, so it cannot give per-example gradients. "
                    "Pass the parameter's use outside the custom_vjp function (apply it to "
                    "the function's output), or ask only for 'grad'")
            got = _per_example(_one_example(self.an, eqn), stacked, invals, outs, needs,
                               residuals, _carried_axes(self.an, eqn, ax_in), ax_out)
            in_modes = ["batched" if a is not None else "examples" for a in ax_in]
        else:
            got = _columns(eqn, stacked, invals, outs, needs, residuals, ax_out)
            in_modes = ["batched" if a is not None else "summed" for a in ax_in]
        return [None if g is None else Pack(_split(g, layout), m)
                for g, m in zip(got, in_modes, strict=True)]


# --- helpers: group layout ---------------------------------------------------------------------

def _layout(packs: list) -> list:
    """(name, K) of every group present in any output's pack, in order of appearance."""
    seen: dict = {}
    for p in packs:
        if p is None:
            continue
        for name, arr in p.groups.items():
            seen.setdefault(name, arr.shape[0])
    return list(seen.items())


def _concat(p: Pack, layout: list) -> jax.Array:
    some = next(iter(p.groups.values()))
    parts = [p.groups[name] if name in p.groups
             else jnp.zeros((k, *some.shape[1:]), some.dtype) for name, k in layout]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)


def _split(arr: jax.Array, layout: list) -> dict:
    out, start = {}, 0
    for name, k in layout:
        out[name] = arr if len(layout) == 1 else lax.slice_in_dim(arr, start, start + k, axis=0)
        start += k
    return out


def _flatten_lead(stacked: list, n: int) -> tuple:
    """Merges the first ``n`` axes of every array (columns and examples of unbatched values)."""
    lead = None
    flat = []
    for s in stacked:
        if s is None:
            flat.append(None)
            continue
        lead = tuple(s.shape[:n])
        flat.append(s.reshape((-1,) + s.shape[n:]))
    return flat, lead


# --- helpers: applying a rule to columns -------------------------------------------------------

def _rule(eqn, cts, invals, outs, needs, residuals) -> list:
    """The plain VJP rule, its nested walks plain too; thunks forced; zeros where None."""
    with interpreter.carrier(None):
        cts_in = interpreter.apply_rule(eqn, cts, invals, outs, needs, residuals)
        cts_in = [ct() if callable(ct) else ct for ct in cts_in]
    out = []
    for ct, n, x in zip(cts_in, needs, invals, strict=True):
        if not n:
            out.append(None)
        elif ct is None:
            out.append(jnp.zeros(np.shape(x), jnp.result_type(x)))
        else:
            out.append(ct)
    return out


def _columns(eqn, stacked, invals, outs, needs, residuals, ax_out) -> list:
    """The rule applied to each column (``vmap`` over the leading axis)."""
    live = [k for k, s in enumerate(stacked) if s is not None]
    ks = {stacked[k].shape[0] for k in live}
    if ks == {1}:
        cts = [None if s is None else s[0] for s in stacked]
        got = _rule(eqn, cts, invals, outs, needs, residuals)
        return [None if g is None else g[None] for g in got]

    def one(cols):
        cts: list = [None] * len(stacked)
        for k, c in zip(live, cols, strict=True):
            cts[k] = c
        return _rule(eqn, cts, invals, outs, needs, residuals)

    return jax.vmap(one)([stacked[k] for k in live])


def _one_example(an: Analysis, eqn: Any) -> Any:
    """``eqn`` with its sub-jaxprs (a scan's body, a cond's branches) retraced for one example:
    the rules walk those bodies, whose types must match the size-one example axis."""
    subs = {id(s.jaxpr): s for s in an.subs.values()}
    changed = {}
    for key, val in eqn.params.items():
        many = isinstance(val, (tuple, list))
        items = list(val) if many else [val]
        if not any(isinstance(v, core.ClosedJaxpr) and id(v.jaxpr) in subs for v in items):
            continue
        new = []
        for v in items:
            if isinstance(v, core.ClosedJaxpr) and id(v.jaxpr) in subs:
                sub = subs[id(v.jaxpr)]
                avals = []
                for var in v.jaxpr.invars:
                    shape = list(var.aval.shape)
                    a = sub.axis(var)
                    if a is not None and a is not MIXED:
                        shape[a] = 1
                    avals.append(jax.ShapeDtypeStruct(tuple(shape), var.aval.dtype))
                try:
                    v = jax.make_jaxpr(partial(_eval_jaxpr, v.jaxpr, v.consts))(*avals)
                except Exception as err:  # a body with the batch size written into it
                    raise NotImplementedError(
                        f"funcbp.quantities: per-example quantities through the "
                        f"'{eqn.primitive.name}' at {interpreter.where(eqn)} need its body for "
                        f"one example, and retracing it failed ({type(err).__name__}: {err}); "
                        "a body that builds arrays of the batch size (jnp.zeros((B, ...))) "
                        "should take them as inputs instead") from err
            new.append(v)
        changed[key] = tuple(new) if many else new[0]
    return eqn.replace(params=dict(eqn.params, **changed)) if changed else eqn


def _carried_axes(an: Analysis, eqn: Any, ax_in: list) -> list:
    """A scan's unbatched initial carry (``jnp.zeros((B, H))``) that becomes batched in the
    loop is the same for every example: each example takes its slice at the carry's axis."""
    if eqn.primitive.name != "scan":
        return ax_in
    sub = next((s for (k, name), s in an.subs.items() if name == "body"
                and s.jaxpr is eqn.params["jaxpr"].jaxpr), None)
    if sub is None:
        return ax_in
    nc, nk = eqn.params["num_consts"], eqn.params["num_carry"]
    out = list(ax_in)
    for k in range(nc, nc + nk):
        inner = sub.axis(sub.jaxpr.invars[k])
        if out[k] is None and inner is not None:
            if isinstance(eqn.invars[k], core.Var) and eqn.invars[k] in an.active:
                raise NotImplementedError(
                    f"funcbp.quantities: the scan at {interpreter.where(eqn)} starts a carry "
                    "that holds every example from a value computed from the parameters alone; "
                    "per-example quantities of that value are not supported")
            out[k] = inner
    return out


def _per_example(eqn, stacked, invals, outs, needs, residuals, ax_in, ax_out) -> list:
    """The rule applied to each column of each example.

    Inside the ``vmap`` over examples, batched values get their example axis back with size
    one, so the rule sees the ranks and layouts of the equation's params. A primitive whose
    rule needs forward residuals recomputes them per example from the inputs.
    """
    live = [k for k, s in enumerate(stacked) if s is not None]
    need = [j for j, n in enumerate(needs) if n]
    fwd = FORWARD_RULES.get(eqn.primitive) if residuals is not None else None

    def per_example(inv, out, cols):
        inv = [x if a is None else jnp.expand_dims(x, a) for x, a in zip(inv, ax_in,
                                                                          strict=True)]
        out = [x if a is None else jnp.expand_dims(x, a) for x, a in zip(out, ax_out,
                                                                         strict=True)]
        cts: list = [None] * len(stacked)
        for k, c in zip(live, cols, strict=True):
            cts[k] = c if ax_out[k] is None else jnp.expand_dims(c, ax_out[k])
        res = residuals
        if fwd is not None:
            with interpreter.carrier(None):
                res = fwd(*inv, needs=needs, **eqn.params)[1]
        got = _rule(eqn, cts, inv, out, needs, res)
        return [got[j] if ax_in[j] is None else jnp.squeeze(got[j], ax_in[j]) for j in need]

    in_axes = (list(ax_in), list(ax_out), [ax_out[k] if ax_out[k] is not None else 0
                                           for k in live])
    out_axes = [ax_in[j] if ax_in[j] is not None else 0 for j in need]
    vals_in = [x if a is None else x for x, a in zip(invals, ax_in, strict=True)]

    def per_column(cols):
        return jax.vmap(per_example, in_axes=in_axes, out_axes=out_axes)(vals_in, outs, cols)

    got = jax.vmap(per_column)([stacked[k] for k in live])
    result: list = [None] * len(needs)
    for j, g in zip(need, got, strict=True):
        result[j] = g
    return result
