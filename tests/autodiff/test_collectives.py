"""Collectives with several devices' worth of values: named axes of size 4 under
``jax.vmap(..., axis_name=)`` (funcbp differentiating inside the vmap), and ``shard_map`` on 4
forced CPU devices (in a subprocess, see ``collectives_worker.py``). References: ``jax.vjp``,
and, where jax cannot differentiate (``pmax``), the same values computed without the
collective."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp

AXIS = "i"
PERM = [(0, 1), (1, 2), (2, 3), (3, 0)]


def _batchnorm(v):
    """equinox's stateful BatchNorm normalises with pmean over the vmapped batch axis."""
    mean = lax.pmean(v, AXIS)
    var = lax.pmean((v - mean) ** 2, AXIS)
    return jnp.tanh((v - mean) * lax.rsqrt(var + 1e-5))


# name, per-example function of a (3,) vector, reference over the whole (4, 3) batch or None
TABLE = [
    ("psum", lambda v: jnp.sin(lax.psum(v * v, AXIS)) * v, None),
    ("batchnorm_pmean", _batchnorm, None),
    ("all_gather", lambda v: jnp.sum(lax.all_gather(v, AXIS) ** 2, 0) * v, None),
    ("all_gather_tiled_axis1", lambda v: lax.all_gather(v[None], AXIS, axis=1, tiled=True)
     [0, :3] * v, None),
    ("psum_scatter", lambda v: lax.psum_scatter(jnp.outer(jnp.arange(1.0, 5.0), v), AXIS) * v,
     None),
    ("psum_scatter_tiled_dim1", lambda v: lax.psum_scatter(
        jnp.outer(v, jnp.arange(1.0, 9.0)), AXIS, scatter_dimension=1, tiled=True).sum(1) * v,
     None),
    ("all_to_all", lambda v: lax.all_to_all(jnp.outer(jnp.arange(1.0, 5.0), v), AXIS, 0, 0)
     .sum(0) * v, None),
    ("ppermute", lambda v: lax.ppermute(v * v, AXIS, PERM) * v, None),
    ("axis_index", lambda v: v * v * lax.axis_index(AXIS), None),
    # pmax over the named axis: psum convention, every example's copy sends its cotangent back
    ("pmax_ties", lambda v: lax.pmax(v, AXIS) * v,
     lambda x: jax.vmap(lambda v: jnp.max(x, 0) * v)(x)),
    ("pmin_ties", lambda v: jnp.exp(lax.pmin(v, AXIS)) + v,
     lambda x: jax.vmap(lambda v: jnp.exp(jnp.min(x, 0)) + v)(x)),
]


@pytest.mark.parametrize("name,fun,reference", TABLE, ids=[t[0] for t in TABLE])
def test_named_axis_inside_vmap_matches_jax(name, fun, reference):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, 3))
        if "ties" in name:
            x = np.round(x)  # repeated maxima and minima across the axis
        ct = rng.standard_normal((4, 3))

        @jax.jit
        def both(x, ct):
            ours = jax.vmap(lambda v, c: funcbp.vjp(fun, v)[1](c)[0], axis_name=AXIS)(x, ct)
            if reference is None:
                ref = jax.vmap(lambda v, c: jax.vjp(fun, v)[1](c)[0], axis_name=AXIS)(x, ct)
            else:
                ref = jax.vjp(reference, x)[1](ct)[0]
            return ours, ref

        ours, ref = both(x, ct)
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_complex_psum_inside_vmap_matches_jax():
    fun = lambda v: jnp.abs(lax.psum(v * (1 + 2j), AXIS)) ** 2  # noqa: E731
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.complex64)
    ours = jax.jit(jax.vmap(funcbp.grad(lambda v: jnp.sum(fun(v))), axis_name=AXIS))(x)
    ref = jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(fun(v))), axis_name=AXIS))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_shard_map_on_four_devices_matches_jax():
    """A data-parallel loss, every collective, both check_vma settings, a 2-D mesh."""
    root = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(root),
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
               + " --xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).with_name(
        "collectives_worker.py"))], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and proc.stdout.count("ok ") >= 20, proc.stdout
