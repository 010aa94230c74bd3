"""Cases for collectives and shard_map.

Under ``jax.vmap(..., axis_name=)`` vmap has already made ``psum``/``pmax``/``pmin`` positional
reductions when funcbp traces; the shard_map cases run on a one-device mesh (the suite's
process has one CPU device), which checks the shard_map plumbing and the varying/invariant
types on every collective. The collectives' semantics across several devices are checked in
``tests/autodiff/test_collectives.py`` (named axes of size 4, and 4 forced CPU devices).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from funcbp.autodiff.compat import all_gather_invariant
from funcbp.check.tables.collectives import register_cpu_pbroadcast
from tests.autodiff.cases import Case, args, normal
from tests.autodiff.cases.elementwise import ties

# jax 0.10 lowers pbroadcast on GPU only; the suite gives it jax's documented equivalent on CPU
register_cpu_pbroadcast()


@functools.cache
def _mesh():
    return Mesh(np.array(jax.devices()[:1]), ("i",))


def _shard_map(f, in_specs, out_specs, check_vma=True):
    return jax.shard_map(f, mesh=_mesh(), in_specs=in_specs, out_specs=out_specs,
                         check_vma=check_vma)


def _vmapped(f):
    return lambda x: jax.vmap(f, axis_name="i")(x)


def _data_parallel(check_vma):
    """A loss summed over shards: psum_invariant with vma checks, psum without; the
    replicated weights meet the sharded batch through pvary."""
    def local(w, x):
        return lax.psum(jnp.sum(jnp.tanh(x @ w) ** 2), "i"), jnp.sin(x @ w)
    return _shard_map(local, (P(), P("i")), (P(), P("i")), check_vma)


def _gathers(w, x):
    h = x @ w  # [4, 2] per device
    a = lax.all_gather(h, "i", axis=1)  # stacked
    b = lax.all_gather(h, "i", axis=0, tiled=True)
    c = all_gather_invariant(jnp.cos(h), "i", tiled=True)
    d = lax.psum_scatter(h, "i", scatter_dimension=0, tiled=True)
    e = lax.all_to_all(h, "i", 0, 1, tiled=True)
    f = lax.ppermute(h, "i", [(0, 0)])
    return lax.psum(jnp.sum(a * a) + jnp.sum(b ** 3) + jnp.sum(d * e + f), "i"), c


def _pmax_pmin(x):
    return lax.pmax(x, "i") * x - lax.pmin(x, "i")


def _pmax_pmin_reference(x):
    gathered = all_gather_invariant(x, "i")
    return jnp.max(gathered, 0) * x - jnp.min(gathered, 0)


def _pbroadcast(x):
    return lax.pbroadcast(jnp.sum(x * x), "i", 0) * x


CASES = [
    Case("psum_vmap_axis", _vmapped(lambda v: jnp.sin(lax.psum(v * v, "i")) * v
                                    + lax.pmean(v, "i")), args(normal(4, 3))),
    Case("pmax_vmap_axis_ties", _vmapped(lambda v: lax.pmax(v, "i") * v), args(ties(4, 3)),
         fd=False, reference=lambda x: jnp.max(x, 0) * x),
    Case("pmin_vmap_axis", _vmapped(lambda v: jnp.exp(lax.pmin(v, "i"))), args(normal(4, 3)),
         reference=lambda x: jnp.broadcast_to(jnp.exp(jnp.min(x, 0)), x.shape)),
    Case("shard_map_data_parallel", _data_parallel(True), args(normal(3, 2), normal(4, 3))),
    Case("shard_map_unchecked", _data_parallel(False), args(normal(3, 2), normal(4, 3))),
    Case("shard_map_gathers", _shard_map(_gathers, (P(), P("i")), (P(), P())),
         args(normal(3, 2), normal(4, 3))),
    Case("shard_map_pmax_pmin_ties", _shard_map(_pmax_pmin, P("i"), P("i")), args(ties(4, 3)),
         fd=False, reference=_shard_map(_pmax_pmin_reference, P("i"), P("i"))),
    Case("shard_map_pbroadcast", _shard_map(_pbroadcast, P("i"), P("i")), args(normal(4, 3))),
]
