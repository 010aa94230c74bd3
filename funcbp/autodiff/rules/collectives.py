"""Rules for collectives (``psum``, ``all_gather``, ``ppermute``, ...) and ``shard_map``.

Collectives meet the walk in three ways, all with jax's semantics:

- ``funcbp.grad(f)`` of a function containing ``jax.vmap(g, axis_name="i")``: vmap has already
  turned the collective into its positional form (``psum[axes=(0,)]`` is a sum over axis 0
  whose result is broadcast back), and the other collectives into ordinary array ops.
- ``jax.vmap(funcbp.grad(f), axis_name="i")`` or ``funcbp.grad`` inside a ``shard_map`` body:
  the walked jaxpr holds named collectives and the rules bind named collectives, which the
  surrounding vmap or shard_map then carries out.
- a ``shard_map`` inside the differentiated function: its rule (below) runs funcbp's walk in
  the body, once forward and once backward, each inside a ``shard_map`` over the same mesh.

Each collective is linear (except ``pmax``/``pmin``) and its cotangent map is its transpose:
``all_gather`` <-> ``psum_scatter``, ``all_to_all`` with the split and concat axes swapped,
``ppermute`` with the inverse permutation. With ``shard_map(check_vma=True)`` jax types every
value as varying or invariant across each mesh axis ("vma"); ``psum`` of a varying value is
then ``psum_invariant`` (invariant result) and the implicit copy of an invariant value to every
device is an explicit ``pvary``; they transpose into each other. Without vma tracking (vmap,
``check_vma=False``) jax treats ``psum`` as a sum followed by a copy to every device, so its
transpose is again a ``psum``; these rules follow both conventions exactly.

``axis_index`` has no inputs, so nothing is differentiated through it and it needs no rule.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax import lax
from jax._src import config as jax_config
from jax._src import core as jax_core
from jax._src.lax import parallel
from jax._src.shard_map import shard_map_p
from jax.tree_util import tree_flatten, tree_unflatten

from funcbp.autodiff import compat
from funcbp.autodiff.rules import UnsupportedPrimitiveError, register_vjp_rule, vjp_rule

__all__: list[str] = []


def _interp():
    from funcbp.autodiff import interpreter  # the rules package is imported by the interpreter

    return interpreter


def _tracks_vma() -> bool:
    """True inside ``shard_map(check_vma=True)``, where avals say what varies across devices."""
    return bool(jax_config._check_vma.value)


def _as_tuple(axis_name: Any) -> tuple:
    return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def _vary(x: Any, axes: tuple) -> Any:
    """``x`` typed as varying over ``axes`` (a no-op without vma tracking).

    A collective's operand must vary over the axes it acts on; a cotangent that is invariant
    there (the same on every device, e.g. an instantiated zero) is first copied to every device,
    as jax does for the primal operand.
    """
    if not _tracks_vma():
        return x
    missing = tuple(a for a in axes if a not in compat.varying_axes(x))
    return jax_core.pvary(x, missing) if missing else x


def _split_axes(axes: tuple, ndim: int) -> tuple[tuple, tuple[int, ...]]:
    """(named mesh/vmap axes, positional array axes) of a reduction's ``axes``."""
    named = tuple(a for a in axes if not isinstance(a, int))
    positional = tuple(sorted(a % ndim for a in axes if isinstance(a, int)))
    return named, positional


def _unreduce(ct: Any, shape: tuple, positional: tuple[int, ...]) -> Any:
    """Broadcasts a reduction's cotangent back over the reduced positional axes."""
    if not positional:
        return ct
    kept = tuple(d for d in range(len(shape)) if d not in positional)
    return lax.broadcast_in_dim(ct, shape, kept)


# --- all-reduce: psum, psum_invariant, pvary, pmax, pmin ----------------------------------------

@vjp_rule(parallel.psum_p, handles_complex=True)
def psum_vjp(ct, x, *, axes, axis_index_groups, **params):
    """d psum: broadcast back over positional axes, then psum over the named ones.

    Without vma tracking jax's ``psum`` is an all-reduce followed by a copy to every device, so
    its transpose sums the devices' cotangents again (within the same ``axis_index_groups``).
    """
    named, positional = _split_axes(axes, x.ndim)
    ct = _unreduce(ct, x.shape, positional)
    if named:
        ct = parallel.psum_p.bind(ct, axes=named, axis_index_groups=axis_index_groups)
    return (ct,)


@vjp_rule(parallel.psum_invariant_p, handles_complex=True)
def psum_invariant_vjp(ct, x, *, axes, **params):
    """d psum (varying -> invariant): the invariant cotangent reaches every device (pvary)."""
    return (_vary(ct, axes),)


@vjp_rule(jax_core.pvary_p, handles_complex=True)
def pvary_vjp(ct, x, *, axes, **params):
    """d pvary (invariant -> varying): the devices' cotangents are summed (psum_invariant)."""
    return (parallel.psum_invariant_p.bind(_vary(ct, axes), axes=axes),)


def _chooser_vjp(ct, x, out, axes, axis_index_groups):
    """Cotangent of an all-reduce max/min: shared equally by every element equal to the result
    (as ``reduce_max``'s rule shares ties), across positional axes and devices alike."""
    named, positional = _split_axes(axes, x.ndim)
    if named and axis_index_groups is not None and _tracks_vma():
        raise UnsupportedPrimitiveError(
            "the VJP of pmax/pmin with axis_index_groups inside shard_map(check_vma=True) is "
            "not supported (jax's psum refuses axis_index_groups there too); pass "
            "check_vma=False to shard_map or drop axis_index_groups")
    hit = lax.convert_element_type(lax.eq(x, _unreduce(out, x.shape, positional)), x.dtype)
    count = lax.reduce_sum(hit, positional) if positional else hit
    if named:
        if _tracks_vma():  # the result is invariant: one value, one cotangent
            count = lax.psum(count, named)
            share = _vary(ct / count, named)
        else:  # psum convention: every device's copy of the result sends its cotangent back
            count = parallel.psum_p.bind(count, axes=named, axis_index_groups=axis_index_groups)
            share = parallel.psum_p.bind(ct / count, axes=named,
                                         axis_index_groups=axis_index_groups)
    else:
        share = ct / count
    return (_unreduce(share, x.shape, positional) * hit,)


@vjp_rule(parallel.pmax_p)
def pmax_vjp(ct, x, *, out, axes, axis_index_groups, **params):
    """d pmax: the cotangent goes to the maximal elements, ties share it equally."""
    return _chooser_vjp(ct, x, out, axes, axis_index_groups)


@vjp_rule(parallel.pmin_p)
def pmin_vjp(ct, x, *, out, axes, axis_index_groups, **params):
    """d pmin: the cotangent goes to the minimal elements, ties share it equally."""
    return _chooser_vjp(ct, x, out, axes, axis_index_groups)


# --- gather, scatter, permute -----------------------------------------------------------------

@vjp_rule(parallel.all_gather_p, handles_complex=True)
def all_gather_vjp(ct, x, *, all_gather_dimension, axis_name, axis_index_groups, axis_size,
                   tiled, **params):
    """d all_gather = psum_scatter: device i gets the sum of every device's cotangent block i."""
    names = _as_tuple(axis_name)
    return (parallel.reduce_scatter_p.bind(
        _vary(ct, names), axis_name=axis_name, scatter_dimension=all_gather_dimension,
        axis_index_groups=axis_index_groups, axis_size=axis_size, tiled=tiled),)


@vjp_rule(parallel.reduce_scatter_p, handles_complex=True)
def reduce_scatter_vjp(ct, x, *, scatter_dimension, axis_name, axis_index_groups, axis_size,
                       tiled, **params):
    """d psum_scatter = all_gather of the cotangent blocks along ``scatter_dimension``."""
    names = _as_tuple(axis_name)
    return (parallel.all_gather_p.bind(
        _vary(ct, names), all_gather_dimension=scatter_dimension, axis_name=axis_name,
        axis_index_groups=axis_index_groups, axis_size=axis_size, tiled=tiled),)


@vjp_rule(parallel.all_gather_invariant_p, handles_complex=True)
def all_gather_invariant_vjp(ct, x, *, all_gather_dimension, axis_name, axis_size, tiled,
                             **params):
    """d all_gather(to='invarying'): the result is one (invariant) value, so device i's
    cotangent is block i of it, unsummed."""
    block = ct.shape[all_gather_dimension] // axis_size
    start = lax.axis_index(axis_name) * block
    out = lax.dynamic_slice_in_dim(ct, start, block, axis=all_gather_dimension)
    return (out if tiled else lax.squeeze(out, (all_gather_dimension,)),)


@vjp_rule(parallel.all_to_all_p, handles_complex=True)
def all_to_all_vjp(ct, x, *, axis_name, split_axis, concat_axis, axis_index_groups, tiled,
                   **params):
    """d all_to_all = all_to_all back: split along ``concat_axis``, concat along ``split_axis``."""
    return (parallel.all_to_all_p.bind(
        _vary(ct, _as_tuple(axis_name)), axis_name=axis_name, split_axis=concat_axis,
        concat_axis=split_axis, axis_index_groups=axis_index_groups, tiled=tiled),)


@vjp_rule(parallel.ppermute_p, handles_complex=True)
def ppermute_vjp(ct, x, *, axis_name, perm, **params):
    """d ppermute = ppermute with the inverse permutation (devices that sent nothing get 0)."""
    inverse = tuple((dst, src) for src, dst in perm)
    return (parallel.ppermute_p.bind(_vary(ct, _as_tuple(axis_name)), axis_name=axis_name,
                                     perm=inverse),)


@vjp_rule(parallel.pbroadcast_p, handles_complex=True)
def pbroadcast_vjp(ct, x, *, axis_name, source, **params):
    """d pbroadcast: every device's cotangent, summed, goes to device ``source``; others get 0."""
    total = lax.psum(ct, axis_name)
    is_source = lax.axis_index(axis_name) == source
    return (lax.select(lax.broadcast(is_source, ct.shape), _vary(total, _as_tuple(axis_name)),
                       lax.full_like(ct, 0)),)


# --- shard_map --------------------------------------------------------------------------------

def _bind_shard_map(body, args, **params):
    """Binds a ``shard_map`` whose body's output specs are known only after tracing it
    (``compat.bind_shard_map``), compiled as a whole: evaluated eagerly, a shard_map body would
    dispatch (and compile) one program per operation on every device."""
    return jax.jit(lambda *args: compat.bind_shard_map(body, list(args), **params))(*args)


def _spec_names(spec: Any) -> set:
    names: set = set()
    for part in spec:
        names.update(p for p in _as_tuple(part) if p is not None)
    return names


def _unmentioned(mesh: Any, spec: Any, newly_manual_axes: frozenset) -> tuple:
    """Manual axes over which a value with ``spec`` is replicated."""
    mentioned = _spec_names(spec) | set(getattr(spec, "unreduced", ()))
    return tuple(n for n in mesh.axis_names if n in newly_manual_axes and n not in mentioned)


def _ct_spec(spec: Any) -> Any:
    return spec.to_ct_spec() if hasattr(spec, "to_ct_spec") else spec


def _residual_spec(x: Any, mesh: Any, check_vma: bool, newly_manual_axes: frozenset) -> Any:
    """The out spec of a residual: its leading axis split over the axes it varies across (all
    of this shard_map's axes without vma types: every device's value is kept)."""
    names = tuple(n for n in mesh.axis_names if n in newly_manual_axes)
    if check_vma:  # axes of an enclosing shard_map stay in the value's type outside this one
        varying = compat.varying_axes(x)
        names = tuple(n for n in names if n in varying)
    return jax.sharding.PartitionSpec(names) if names else jax.sharding.PartitionSpec()


def _is_residual(x: Any) -> bool:
    """Array leaves of a record leave the body as outputs; the rest (functions, float0 zero
    tangents, Python numbers) stays on the Python side."""
    if isinstance(x, jax_core.Tracer) or isinstance(x, (jax.Array, np.ndarray, np.generic)):
        return jax.dtypes.result_type(x) != jax.dtypes.float0
    return False


class _ShardInfo:
    """Static facts of one shard_map's forward, read by its backward."""

    treedef: Any = None  # structure of the body's record
    static: dict         # its non-array leaves, by position
    scalar: list         # which residuals were scalars (sent out with a leading axis of 1)
    specs: list          # the residuals' specs


def shard_map_forward(*args, needs, jaxpr, mesh, in_specs, out_specs, check_vma, **params):
    """Runs funcbp's forward walk in the body of one shard_map; what the backward walk reads
    comes out as extra outputs (residuals), each split over the mesh axes it varies across.

    ``params`` holds the manual axes alone (``compat.shard_map_manual_axes``)."""
    newly_manual_axes = compat.shard_map_manual_axes(params)
    interp = _interp()  # a Record is a pytree of exactly the values its backward reads
    info = _ShardInfo()
    n_out = len(out_specs)

    def body(*local_args):
        outs, record = interp.forward(jaxpr, [], list(local_args), list(needs))
        leaves, info.treedef = tree_flatten(record)
        info.static = {i: x for i, x in enumerate(leaves) if not _is_residual(x)}
        residuals = [x for x in leaves if _is_residual(x)]
        info.scalar = [x.ndim == 0 for x in residuals]
        info.specs = [_residual_spec(x, mesh, check_vma, newly_manual_axes) for x in residuals]
        residuals = [lax.expand_dims(x, (0,)) if x.ndim == 0 else x for x in residuals]
        return [*outs, *residuals], [*out_specs, *info.specs]

    outs = _bind_shard_map(body, args, mesh=mesh, in_specs=in_specs, check_vma=check_vma,
                           manual_axes=newly_manual_axes, debug_info=jaxpr.debug_info)
    return outs[:n_out], (outs[n_out:], info)


def shard_map_vjp(cts, *args, res, needs, jaxpr, mesh, in_specs, out_specs, check_vma,
                  **params):
    """Walks the body backward inside a shard_map; input cotangents get the inputs' specs.

    With ``check_vma=False`` jax cannot know that an output claimed replicated (an axis missing
    from its out spec) really is; it treats the output as the mean of the devices' copies, so
    each copy receives the cotangent divided by their number, and the cotangent of an input
    replicated over an axis is the sum of the devices' cotangents. This rule does the same.
    """
    interp = _interp()
    newly_manual_axes = compat.shard_map_manual_axes(params)
    residuals, info = res
    live = [i for i, ct in enumerate(cts) if ct is not None]
    live_cts = []
    for i in live:
        ct = cts[i]
        if not check_vma:
            copies = math.prod(mesh.shape[n]
                               for n in _unmentioned(mesh, out_specs[i], newly_manual_axes))
            ct = ct / copies if copies != 1 else ct
        live_cts.append(ct)
    n_res = len(residuals)
    wanted: list[int] = []

    def body(*local):
        res_local, cts_local = local[:n_res], local[n_res:]
        it = iter(lax.squeeze(r, (0,)) if s else r
                  for r, s in zip(res_local, info.scalar, strict=True))
        leaves = [info.static[i] if i in info.static else next(it)
                  for i in range(info.treedef.num_leaves)]
        record = tree_unflatten(info.treedef, leaves)
        cts_full: list[Any] = [None] * len(out_specs)
        for i, ct in zip(live, cts_local, strict=True):
            cts_full[i] = ct
        cts_in = interp.backward(record, cts_full)
        wanted[:] = [i for i, ct in enumerate(cts_in) if ct is not None and needs[i]]
        outs = []
        for i in wanted:
            ct = cts_in[i]
            if not check_vma:
                axes = _unmentioned(mesh, in_specs[i], newly_manual_axes)
                if axes:
                    ct = parallel.psum_p.bind(ct, axes=axes, axis_index_groups=None)
            outs.append(ct)
        return outs, [_ct_spec(in_specs[i]) for i in wanted]

    ct_specs = [_ct_spec(out_specs[i]) for i in live]
    outs = _bind_shard_map(body, [*residuals, *live_cts], mesh=mesh,
                           in_specs=[*info.specs, *ct_specs], check_vma=check_vma,
                           manual_axes=newly_manual_axes, debug_info=jaxpr.debug_info)
    result: list[Any] = [None] * len(args)
    for i, ct in zip(wanted, outs, strict=True):
        result[i] = ct
    return tuple(result)


register_vjp_rule(shard_map_p, shard_map_vjp, forward=shard_map_forward, handles_complex=True)
