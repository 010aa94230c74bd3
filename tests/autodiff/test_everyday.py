"""Everyday functions that funcbp refused or got wrong (issue 18), each against jax.grad at
float64 and against central finite differences.

Every row is a scalar function of real inputs, as a user would write it. Rows marked
``fd=False`` sit on a kink or use a random draw that finite differences cannot follow; they
are still compared with jax.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import funcbp


@dataclass(frozen=True)
class Row:
    name: str
    fun: object
    args: object  # key -> tuple of float64 arrays
    fd: bool = True
    rtol: float = 1e-8


def normal(*shape):
    return lambda k: jax.random.normal(k, shape, jnp.float64)


def spd(n, batch=()):
    """A well-conditioned symmetric positive definite matrix."""
    def draw(k):
        a = jax.random.normal(k, (*batch, n, n), jnp.float64)
        return a @ jnp.swapaxes(a, -1, -2) / n + jnp.eye(n)
    return draw


def well_conditioned(n):
    return lambda k: jax.random.normal(k, (n, n), jnp.float64) / n + 2 * jnp.eye(n)


def positive(*shape, lo=0.5, hi=3.0):
    return lambda k: jax.random.uniform(k, shape, jnp.float64, lo, hi)


def args(*draws):
    def sample(key):
        keys = jax.random.split(key, len(draws))
        return tuple(d(k) for d, k in zip(draws, keys, strict=True))
    return sample


def _maxpool_model(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = lax.reduce_window(jnp.tanh(y), -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return jnp.sum(y ** 2)


def _psum_under_vmap(x):
    normalised = jax.vmap(lambda v: v / lax.psum(v, "i"), axis_name="i")(x)
    return jnp.sum(jnp.sin(normalised))


def _custom_reducer(x):
    # an associative reducer jax has no dedicated primitive for (the result does not depend on
    # the order XLA combines in): log-sum-exp
    return jnp.sum(jnp.sin(lax.reduce(x, -jnp.inf, jnp.logaddexp, (1,))))


def _gamma_sample(alpha):
    return jnp.sum(jax.random.gamma(jax.random.key(3), alpha))


def _lstsq(a, b):
    return jnp.sum(jnp.linalg.lstsq(a, b)[0] ** 2)


def _stop_gradient_loop(x):
    c = lax.stop_gradient(x)
    c = lax.while_loop(lambda s: s[1] < 3, lambda s: (s[0] * 1.5, s[1] + 1), (c, 0))[0]
    return jnp.sum(c * x)


ROWS = [
    Row("stack", lambda x, y: jnp.sum(jnp.sin(jnp.stack([x, y, x])) * jnp.arange(3.0)[:, None]),
        args(normal(4), normal(4))),
    Row("tile", lambda x: jnp.sum(jnp.tile(x, (2, 3)) ** 3), args(normal(2, 3))),
    Row("ravel_order_F", lambda x: jnp.sum(jnp.arange(6.0) * jnp.ravel(x, order="F")),
        args(normal(2, 3))),
    Row("reshape_order_F", lambda x: jnp.sum(jnp.arange(6.0) * jnp.sin(
        jnp.reshape(x, (3, 2), order="F")).ravel()), args(normal(2, 3))),
    Row("lax_reshape_dimensions", lambda x: jnp.sum(jnp.arange(6.0) * lax.reshape(
        x, (6,), dimensions=(1, 0)) ** 2), args(normal(2, 3))),
    Row("linalg_solve", lambda a, b: jnp.sum(jnp.linalg.solve(a, b) ** 2),
        args(well_conditioned(3), normal(3, 2))),
    Row("linalg_inv", lambda a: jnp.sum(jnp.linalg.inv(a) ** 2), args(well_conditioned(3))),
    Row("linalg_det", lambda a: jnp.linalg.det(a), args(well_conditioned(3))),
    Row("linalg_slogdet", lambda a: jnp.linalg.slogdet(a)[1], args(well_conditioned(3))),
    Row("solve_triangular", lambda a, b: jnp.sum(jsp.linalg.solve_triangular(
        jnp.tril(a), b, lower=True) ** 2), args(well_conditioned(3), normal(3))),
    Row("cho_solve", lambda a, b: jnp.sum(jsp.linalg.cho_solve(
        (jnp.linalg.cholesky(a), True), b) ** 2), args(spd(3), normal(3))),
    Row("lu_solve", lambda a, b: jnp.sum(jsp.linalg.lu_solve(jsp.linalg.lu_factor(a), b) ** 2),
        args(well_conditioned(3), normal(3))),
    Row("custom_linear_solve", lambda a, b: jnp.sum(lax.custom_linear_solve(
        lambda v: a @ v, b, lambda mv, r: jnp.linalg.solve(a, r), symmetric=True) ** 2),
        args(spd(3), normal(3))),
    Row("cholesky", lambda a: jnp.sum(jnp.sin(jnp.linalg.cholesky(a))), args(spd(3))),
    Row("cholesky_batched", lambda a: jnp.sum(jnp.linalg.cholesky(a) ** 2), args(spd(3, (2,)))),
    Row("qr", lambda a: jnp.sum(jnp.abs(jnp.linalg.qr(a)[1]) * jnp.arange(12.0).reshape(3, 4)
                                [:3, :3]), args(normal(4, 3))),
    Row("svd_values", lambda a: jnp.sum(jnp.linalg.svd(a, compute_uv=False) ** 3),
        args(normal(4, 3))),
    Row("svd_reconstruct", lambda a: jnp.sum(jnp.sin(
        (lambda u, s, vh: (u * s) @ vh)(*jnp.linalg.svd(a, full_matrices=False)))),
        args(normal(4, 3))),
    Row("matrix_2_norm", lambda a: jnp.linalg.norm(a, 2), args(normal(3, 3))),
    Row("pinv", lambda a: jnp.sum(jnp.linalg.pinv(a) ** 2), args(normal(4, 3))),
    Row("eigh_values", lambda a: jnp.sum(jnp.linalg.eigvalsh(a) ** 3), args(spd(3))),
    Row("eigh_projector", lambda a: jnp.sum((lambda w, v: v @ jnp.diag(jnp.sin(w)) @ v.T)(
        *jnp.linalg.eigh(a))), args(spd(3))),
    Row("eig_values", lambda a: jnp.sum(jnp.real(jnp.linalg.eigvals(a @ a.T)) ** 2),
        args(normal(3, 3))),
    Row("lstsq", _lstsq, args(normal(4, 3), normal(4))),
    Row("expm", lambda a: jnp.sum(jsp.linalg.expm(a) ** 2), args(normal(3, 3))),
    Row("fft", lambda x: jnp.sum(jnp.abs(jnp.fft.fft(x)) ** 2 * jnp.arange(6.0)),
        args(normal(6))),
    Row("rfft", lambda x: jnp.sum(jnp.abs(jnp.fft.rfft(x)) * jnp.arange(4.0)), args(normal(7))),
    Row("irfft", lambda x: jnp.sum(jnp.fft.irfft(x.astype(jnp.complex128)) ** 3),
        args(normal(5))),
    Row("fft2", lambda x: jnp.sum(jnp.real(jnp.fft.fft2(x)) ** 2), args(normal(3, 4))),
    Row("digamma", lambda x: jnp.sum(jsp.special.digamma(x)), args(positive(4))),
    Row("lgamma_second_order", lambda x: jnp.sum(funcbp.grad(
        lambda y: jnp.sum(jsp.special.gammaln(y)))(x) ** 2), args(positive(4))),
    Row("polygamma", lambda x: jnp.sum(jsp.special.polygamma(1, x)), args(positive(4))),
    Row("gammainc_x", lambda x: jnp.sum(jsp.special.gammainc(2.5, x)), args(positive(4))),
    Row("gammainc_a", lambda a: jnp.sum(jsp.special.gammainc(a, 1.5)), args(positive(4)),
        rtol=1e-6),
    Row("gammaincc", lambda x: jnp.sum(jsp.special.gammaincc(1.5, x)), args(positive(4))),
    Row("betainc_x", lambda x: jnp.sum(jsp.special.betainc(2.0, 3.0, x)),
        args(positive(4, lo=0.1, hi=0.9))),
    Row("i0e", lambda x: jnp.sum(jsp.special.i0e(x)), args(normal(4))),
    Row("i1e", lambda x: jnp.sum(jsp.special.i1e(x)), args(normal(4))),
    Row("random_gamma_traced_alpha", _gamma_sample, args(positive(4)), fd=False),
    Row("approx_max_k", lambda x: jnp.sum(lax.approx_max_k(x, 3)[0] ** 2), args(normal(8)),
        fd=False),
    Row("at_min", lambda x, u: jnp.sum(x.at[jnp.array([0, 2, 0])].min(u) ** 2),
        args(normal(4), normal(3)), fd=False),
    Row("at_max", lambda x, u: jnp.sum(x.at[jnp.array([1, 1, 3])].max(u) ** 2),
        args(normal(4), normal(3)), fd=False),
    Row("reduce_custom", _custom_reducer, args(normal(2, 3))),
    Row("psum_under_vmap", _psum_under_vmap, args(positive(4))),
    Row("grad_of_jax_grad_maxpool", lambda x, w: jnp.sum(jax.grad(_maxpool_model, 1)(x, w) ** 2),
        args(normal(1, 4, 4, 2), normal(3, 3, 2, 2)), fd=False),
    # finite differences see through stop_gradient; jax's and funcbp's gradients do not
    Row("while_on_stop_gradient", _stop_gradient_loop, args(normal(3)), fd=False),
    Row("complex_abs", lambda x: jnp.sum(jnp.abs(x * (1 + 2j)) ** 2), args(normal(3))),
    Row("complex_parts", lambda x, y: jnp.sum(jnp.real(lax.complex(x, y) ** 2)
                                              + jnp.imag(jnp.conj(lax.complex(y, x)) * 3j)),
        args(normal(3), normal(3))),
    Row("complex_mul_dot", lambda a, b: jnp.real(jnp.vdot(a * (1 - 1j), (b + 0.5j) @ a)),
        args(normal(3, 3), normal(3, 3))),
    Row("complex_exp_log", lambda x: jnp.sum(jnp.abs(jnp.log(jnp.exp(x * 1j) + 2.0))),
        args(normal(4))),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_everyday_function_matches_jax_and_finite_differences(row):
    with jax.enable_x64(True):
        values = row.args(jax.random.key(abs(hash(row.name)) % 2**31))
        argnums = tuple(range(len(values)))
        ours = funcbp.grad(row.fun, argnums)(*values)
        ref = jax.grad(row.fun, argnums)(*values)
        for a, b in zip(ours, ref, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=row.rtol, atol=1e-10)
        if row.fd:
            jax.test_util.check_vjp(row.fun, partial(funcbp.vjp, row.fun), values,
                                    atol=1e-5, rtol=1e-5, eps=1e-6)


def test_holomorphic_grad():
    with jax.enable_x64(True):
        f = lambda z: jnp.sin(z) * z ** 2  # noqa: E731
        z = jnp.complex128(0.3 + 0.7j)
        ours = funcbp.grad(f, holomorphic=True)(z)
        np.testing.assert_allclose(ours, jax.grad(f, holomorphic=True)(z), rtol=1e-12)
        np.testing.assert_allclose(ours, jnp.cos(z) * z ** 2 + 2 * z * jnp.sin(z), rtol=1e-12)
