"""``funcbp check`` records for collectives and ``shard_map``.

The check runs in one process, usually with one device: collectives appear as the positional
reductions ``jax.vmap(..., axis_name=)`` leaves, and inside ``shard_map`` bodies on a one-device
mesh (set with ``context=``), which exercises the rules' plumbing and jax's varying/invariant
types. jax cannot differentiate ``pmax``/``pmin``: their records use finite differences (away
from ties; the rule tests check ties against ``jnp.max``).
jax 0.10 lowers ``pbroadcast`` on GPU only, so its record runs inside :func:`cpu_pbroadcast`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as Spec

from funcbp.autodiff.compat import all_gather_invariant
from funcbp.check.rules import N, Sample

F64 = ("float64",)


def register_cpu_pbroadcast() -> Callable[[], None]:
    """Gives ``pbroadcast`` a CPU lowering (jax's documented equivalent: a psum of the value
    masked to the source device) if it has none; returns what undoes it."""
    from jax._src.interpreters import mlir
    from jax._src.lax import parallel

    table = mlir._platform_specific_lowerings["cpu"]
    if parallel.pbroadcast_p in table:
        return lambda: None

    def equivalent(x, *, axis_name, source):
        names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
        masked = jnp.where(lax.axis_index(axis_name) == source, x, jnp.zeros_like(x))
        return parallel.psum_p.bind(masked, axes=names, axis_index_groups=None)

    mlir.register_lowering(parallel.pbroadcast_p,
                           mlir.lower_fun(equivalent, multiple_results=False), platform="cpu")
    return lambda: table.pop(parallel.pbroadcast_p, None)


@contextlib.contextmanager
def cpu_pbroadcast() -> Iterator[None]:
    """A one-device mesh, with ``pbroadcast`` lowerable on CPU for the duration."""
    undo = register_cpu_pbroadcast()
    try:
        with _one_device_mesh():
            yield
    finally:
        undo()


def _one_device_mesh():
    return jax.set_mesh(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("i",)))


def _shard_map(f, in_specs, out_specs, check_vma=True):
    """``f`` over the context mesh (see ``_one_device_mesh``), compiled: run eagerly, jax's own
    reference would dispatch every operation of the body separately on the mesh."""
    return jax.jit(jax.shard_map(f, in_specs=in_specs, out_specs=out_specs,
                                 check_vma=check_vma))


def _vmapped(f):
    return lambda x: jax.vmap(f, axis_name="i")(x)


def _data_parallel(check_vma):
    def local(w, x):
        return lax.psum(jnp.sum(jnp.tanh(x @ w) ** 2), "i"), jnp.sin(x @ w)

    def run(w, x):
        return _shard_map(local, (Spec(), Spec("i")), (Spec(), Spec("i")), check_vma)(w, x)
    return run


def _gathers(w, x):
    def local(w, x):
        h = x @ w
        a = lax.all_gather(h, "i", axis=1)
        b = lax.all_gather(h, "i", tiled=True)
        c = all_gather_invariant(jnp.cos(h), "i", tiled=True)
        d = lax.psum_scatter(h, "i", tiled=True)
        e = lax.all_to_all(h, "i", 0, 1, tiled=True)
        f = lax.ppermute(h, "i", [(0, 0)])
        return lax.psum(jnp.sum(a * a) + jnp.sum(b ** 3) + jnp.sum(d * e + f), "i"), c
    return _shard_map(local, (Spec(), Spec("i")), (Spec(), Spec()))(w, x)


def _pmax_pmin(x):
    return _shard_map(lambda v: lax.pmax(v, "i") * v + lax.pmin(jnp.sin(v), "i"),
                      Spec("i"), Spec("i"))(x)


def _pbroadcast(x):
    return _shard_map(lambda v: lax.pbroadcast(jnp.sum(v * v), "i", 0) * v,
                      Spec("i"), Spec("i"))(x)


def samples() -> list[Sample]:
    """Collective records: positional (vmap) and named (one-device shard_map)."""
    mesh = _one_device_mesh
    dp = (N(3, 2), N(4, 3))
    return [
        Sample("psum", "vmap axis", _vmapped(lambda v: jnp.sin(lax.psum(v * v, "i")) * v
                                             + lax.pmean(v, "i")), (N(4, 3),)),
        Sample("psum", "shard_map, check_vma=False", _data_parallel(False), dp, context=mesh),
        Sample("pmax", "vmap axis, vs finite differences",
               _vmapped(lambda v: lax.pmax(v, "i") * v), (N(4, 3),), F64, reference="fd"),
        Sample("pmin", "vmap axis, vs finite differences",
               _vmapped(lambda v: jnp.exp(lax.pmin(v, "i"))), (N(4, 3),), F64, reference="fd"),
        Sample("pmax", "shard_map, vs finite differences", _pmax_pmin, (N(4, 3),), F64,
               reference="fd", context=mesh),
        Sample("pmin", "shard_map, vs finite differences", _pmax_pmin, (N(4, 3),), F64,
               reference="fd", context=mesh),
        Sample("shard_map", "data parallel", _data_parallel(True), dp, context=mesh),
        Sample("shard_map", "check_vma=False", _data_parallel(False), dp, context=mesh),
        Sample("psum_invariant", "shard_map", _data_parallel(True), dp, context=mesh),
        Sample("pvary", "replicated weights", _data_parallel(True), dp, context=mesh),
        *[Sample(prim, "shard_map", _gathers, dp, context=mesh)
          for prim in ("all_gather", "all_gather_invariant", "reduce_scatter", "all_to_all",
                       "ppermute")],
        Sample("pbroadcast", "shard_map, CPU lowering", _pbroadcast, (N(4, 3),),
               context=cpu_pbroadcast),
    ]
