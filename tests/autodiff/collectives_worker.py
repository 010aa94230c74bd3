"""shard_map gradients on 4 forced CPU devices: funcbp against jax (run by test_collectives.py).

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=4 python collectives_worker.py``;
prints one line per comparison and exits non-zero if any differs from its reference.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import funcbp
from funcbp.autodiff.compat import all_gather_invariant
from funcbp.check.tables.collectives import register_cpu_pbroadcast

jax.config.update("jax_enable_x64", True)
register_cpu_pbroadcast()  # jax 0.10 lowers pbroadcast on GPU only
RNG = np.random.default_rng(0)
MESH = Mesh(np.array(jax.devices()), ("i",))
MESH2 = Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))
FAILED: list[str] = []


def normal(*shape):
    return jnp.asarray(RNG.standard_normal(shape))


def check(name, ours, ref):
    ours, ref = jax.tree.leaves(ours), jax.tree.leaves(ref)
    ok = len(ours) == len(ref) and all(
        a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-12)
        for a, b in zip(ours, ref, strict=True))
    print(("ok    " if ok else "FAIL  ") + name, flush=True)
    if not ok:
        FAILED.append(name)


def pullbacks(name, f, *xs, reference=None, eager=False):
    """funcbp.vjp of ``f`` against jax.vjp of ``reference`` (default ``f``), jitted, with a
    random output cotangent; also eagerly if asked."""
    ct = jax.tree.map(lambda o: normal(*o.shape), jax.eval_shape(f, *xs))
    ref = jax.jit(lambda *a: jax.vjp(reference or f, *a)[1](ct))(*xs)
    check(name, jax.jit(lambda *a: funcbp.vjp(f, *a)[1](ct))(*xs), ref)
    if eager:
        check(name + " (eager)", funcbp.vjp(f, *xs)[1](ct), ref)


def shmap(f, in_specs, out_specs, check_vma, mesh=MESH, **kw):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=check_vma, **kw)


def per_setting(vma: bool, w, x, y) -> None:
    """The comparisons that hold for both check_vma settings."""
    tag = f"check_vma={vma}"

    # data parallelism: the loss of each shard, summed over devices
    def local_loss(w, x, y):
        return lax.psum(jnp.sum((jnp.tanh(x @ w) - y) ** 2), "i") / 8.0

    loss = shmap(local_loss, (P(), P("i"), P("i")), P(), vma)
    check(f"data-parallel grad, {tag}", jax.jit(funcbp.grad(loss, argnums=(0, 1)))(w, x, y),
          jax.jit(jax.grad(loss, argnums=(0, 1)))(w, x, y))
    if vma:  # the rest holds for both settings; once is enough
        check(f"data-parallel grad eager, {tag}", funcbp.grad(loss)(w, x, y),
              jax.grad(loss)(w, x, y))
        ww = jnp.stack([w, 2 * w])
        check(f"vmap of grad, {tag}",
              jax.jit(jax.vmap(funcbp.grad(loss), (0, None, None)))(ww, x, y),
              jax.jit(jax.vmap(jax.grad(loss), (0, None, None)))(ww, x, y))
        check(f"second order, {tag}",
              jax.jit(funcbp.grad(lambda w: jnp.sum(funcbp.grad(loss)(w, x, y) ** 2)))(w),
              jax.jit(jax.grad(lambda w: jnp.sum(jax.grad(loss)(w, x, y) ** 2)))(w))

    # per-shard gradients by funcbp inside the body, summed over devices
    def step(grad):
        def body(w, x, y):
            return lax.psum(grad(lambda w: jnp.sum((jnp.tanh(x @ w) - y) ** 2))(w), "i")
        return shmap(body, (P(), P("i"), P("i")), P(), vma)
    check(f"funcbp.grad inside shard_map, {tag}", jax.jit(step(funcbp.grad))(w, x, y),
          jax.jit(step(jax.grad))(w, x, y))

    # every collective, sharded and replicated outputs, a scan in the body
    def collectives(w, x):
        h = x @ w  # [2, 2] per device
        a = lax.all_gather(h, "i", axis=1, tiled=True)
        b = lax.ppermute(h, "i", [(0, 1), (1, 2), (2, 3)])
        c = lax.all_to_all(jnp.concatenate([h, h * 2], 0), "i", 0, 1, tiled=True)
        d = lax.psum_scatter(jnp.concatenate([h, -h], 0), "i", tiled=True)
        e = lax.all_to_all(jnp.stack([h] * 4), "i", 0, 0)
        g = lax.pbroadcast(jnp.sum(h * h), "i", 2)
        s, _ = lax.scan(lambda c, _: (jnp.tanh(c * w[0, 0]), None), h, None, length=2)
        total = (jnp.sum(a * a) + jnp.sum(b * h) + jnp.sum(jnp.sin(c)) + jnp.sum(d ** 3)
                 + jnp.sum(e) * g + jnp.sum(s))
        return lax.pmean(total, "i"), jnp.cos(h) + lax.axis_index("i")
    f = shmap(collectives, (P(), P("i")), (P(), P("i")), vma)
    pullbacks(f"collectives, {tag}", f, w, x, eager=not vma)

    # all_to_all with a new axis (jax's own transpose fails here: it expands the
    # cotangent's dims twice), against all_gather and slicing
    def by_gather(v):
        g = lax.all_gather(v, "i")[:, lax.axis_index("i")]
        return jnp.moveaxis(g, 0, 2)
    pullbacks(f"all_to_all untiled, split 0 concat 2, {tag}",
              shmap(lambda v: jnp.sin(lax.all_to_all(v, "i", 0, 2)), P("i"), P("i"), vma),
              normal(16, 2, 3),
              reference=shmap(lambda v: jnp.sin(by_gather(v)), P("i"), P("i"), vma))

    # pmax / pmin with ties: the reference takes max/min of the gathered values
    gather = all_gather_invariant if vma else lax.all_gather
    ties = jnp.asarray(RNG.integers(-1, 2, (8, 3)).astype(float))
    pullbacks(f"pmax pmin with ties, {tag}",
              shmap(lambda v: lax.pmax(v, "i") * v - lax.pmin(v * v, "i"), P("i"), P("i"),
                    vma), ties,
              reference=shmap(lambda v: jnp.max(gather(v, "i"), 0) * v
                              - jnp.min(gather(v * v, "i"), 0),
                              P("i"), P("i"), vma))

    # a 2-D mesh, collectives over one axis and over both
    def body2(w, x):
        h = jnp.tanh(x @ w)
        return lax.psum(jnp.sum(h ** 2), ("a", "b")), lax.psum(h, "b")
    pullbacks(f"2-D mesh, {tag}",
              shmap(body2, (P(), P("a", "b")), (P(), P("a")), vma, mesh=MESH2),
              normal(3, 3), normal(4, 6))



def main() -> None:
    w, x, y = normal(3, 2), normal(8, 3), normal(8, 2)
    for vma in (True, False):
        per_setting(vma, w, x, y)

    # axis_index_groups (jax allows them without vma checks only)
    def grouped(x):
        a = lax.psum(x * x, "i", axis_index_groups=[[0, 1], [2, 3]])
        b = lax.all_gather(x, "i", axis_index_groups=[[0, 2], [1, 3]], tiled=True)
        c = lax.psum_scatter(jnp.concatenate([x, x * 3]), "i",
                             axis_index_groups=[[0, 1], [2, 3]], tiled=True)
        return (jnp.sum(a * x) + jnp.sum(jnp.sin(b)) + jnp.sum(c ** 2))[None]
    pullbacks("axis_index_groups, check_vma=False",
              shmap(grouped, P("i"), P("i"), False), x)
    pullbacks("pmax with axis_index_groups, check_vma=False",
              shmap(lambda v: lax.pmax(v, "i", axis_index_groups=[[0, 3], [1, 2]]) * v,
                    P("i"), P("i"), False), x,
              reference=shmap(lambda v: jnp.max(lax.all_gather(
                  v, "i", axis_index_groups=[[0, 3], [1, 2]]), 0) * v, P("i"), P("i"), False))

    # partial manual: only axis "a" is manual, "b" stays automatic
    pullbacks("partial manual axes",
              shmap(lambda w, x: lax.psum(jnp.sin(x @ w), "a"), (P(), P("a")), P(), True,
                    mesh=MESH2, axis_names={"a"}), normal(3, 3), normal(4, 3))
    # all_gather to an invariant value
    pullbacks("all_gather(to='invarying')",
              shmap(lambda v: jnp.sin(all_gather_invariant(v, "i", tiled=True)),
                    P("i"), P(), True), x)
    if FAILED:
        sys.exit(f"{len(FAILED)} comparisons failed: {FAILED}")


if __name__ == "__main__":
    main()
