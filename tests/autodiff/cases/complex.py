"""Cases for complex numbers: every rule registered with ``handles_complex=True`` on complex values.

Complex inputs are built from the float dtype the runner samples (``x + 1j y``: complex64 from
float32, complex128 from float64), and complex outputs get complex random cotangents, so each
case checks jax's convention (the transpose of the real-linear JVP under ``Re(u v)``) against
``jax.vjp``. API-level checks (``grad``, ``holomorphic=True``, finite differences assembled as
``df/dx - i df/dy``) are in ``tests/autodiff/test_complex.py``.
"""

import jax
import jax.numpy as jnp
from jax import lax

from tests.autodiff.cases import Case, args, normal, uniform


def cnormal(*shape, scale=1.0):
    """Complex standard normal values: ``x + 1j y`` in the complex dtype of the float dtype."""
    def draw(key, dtype):
        kx, ky = jax.random.split(key)
        return scale * (jax.random.normal(kx, shape, dtype)
                        + 1j * jax.random.normal(ky, shape, dtype))
    return draw


def cwith_zeros(*shape):
    """Complex normal values with about a third of them exactly 0 (|z|'s kink)."""
    def draw(key, dtype):
        z = cnormal(*shape)(key, dtype)
        return jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3, shape), 0, z)
    return draw


def cannulus(*shape):
    """Complex values with modulus in [0.5, 1.5] and any phase (away from 0 for log, pow)."""
    def draw(key, dtype):
        kr, kt = jax.random.split(key)
        r = jax.random.uniform(kr, shape, dtype, 0.5, 1.5)
        t = jax.random.uniform(kt, shape, dtype, -3.0, 3.0)
        return r * jnp.exp(1j * t)
    return draw


@jax.custom_jvp
def _csquare(z):
    return z * z


_csquare.defjvp(lambda p, t: (p[0] * p[0], 2 * p[0] * t[0]))


@jax.custom_vjp
def _ccube(z):
    return z * z * z


_ccube.defvjp(lambda z: (z * z * z, z), lambda z, ct: (3 * z * z * ct,))


def _scan(c, xs):
    return lax.scan(lambda c, x: (c * x + jnp.sin(c), jnp.exp(c) * x), c, xs)


S = (3, 4)
CASES = [
    # The case: a real function of a real input through complex intermediates (10.0 at
    # x = 1, where funcbp used to return 4.47).
    Case("complex_abs_of_product", lambda x: jnp.sum(jnp.abs(x * (1 + 2j)) ** 2),
         args(normal(*S))),
    Case("complex_abs", jnp.abs, args(cnormal(*S))),
    Case("complex_abs_at_zero", jnp.abs, args(cwith_zeros(*S)), fd=False),
    Case("complex_sign_has_no_gradient", lambda z: jnp.sign(z) * z, args(cwith_zeros(*S)),
         fd=False),
    Case("complex_real_imag", lambda z: jnp.real(z) * 2.0 - jnp.imag(z) ** 2,
         args(cnormal(*S))),
    Case("complex_conj", lambda z: jnp.conj(z) * z[0], args(cnormal(*S))),
    Case("complex_conj_of_real", lambda x: lax.conj(x) * (1 - 2j), args(normal(*S))),
    Case("complex_from_parts", lambda x, y: lax.complex(x, y) ** 2, args(normal(*S), normal(*S))),
    Case("complex_from_parts_broadcast", lambda x, y: lax.complex(x, y) * (2 + 1j),
         args(normal(*S), normal())),
    Case("complex_convert_from_real", lambda x, z: x.astype(z.dtype) * z,
         args(normal(*S), cnormal(*S))),
    Case("complex_real_function_of_complex_intermediates",
         lambda x: jnp.real(jnp.exp(1j * x) * jnp.conj(x + 2j)) + jnp.angle(x + 1j * x * x),
         args(normal(*S))),
    Case("complex_add_sub_neg", lambda z, w: -(z + w) - (z - 2 * w) + w[0],
         args(cnormal(*S), cnormal(*S))),
    Case("complex_mul", lambda z, w: z * w, args(cnormal(*S), cnormal(*S))),
    Case("complex_mul_real_by_complex", lambda x, z: x * z, args(normal(*S), cnormal(*S))),
    Case("complex_div", lambda z, w: z / w + z / w[:1], args(cnormal(*S), cannulus(*S))),
    Case("complex_pow", lambda z, w: lax.pow(z, w), args(cannulus(*S), cnormal(*S, scale=0.5))),
    Case("complex_integer_powers", lambda z: z ** 3 + lax.integer_pow(z, -2) + lax.square(z)
         + lax.pow(z, jnp.int32(2)), args(cannulus(*S))),
    Case("complex_exp_log", lambda z: jnp.exp(z) + jnp.exp2(z) + jnp.log(z) + jnp.log1p(z)
         + jnp.expm1(z), args(cannulus(*S))),
    Case("complex_roots", lambda z: jnp.sqrt(z) + lax.rsqrt(z), args(cannulus(*S))),
    Case("complex_trig", lambda z: jnp.sin(z) + jnp.cos(z) + jnp.tan(z),
         args(cnormal(*S, scale=0.5))),
    Case("complex_inverse_trig", lambda z: jnp.arcsin(z) + jnp.arccos(z) + jnp.arctan(z),
         args(cnormal(*S, scale=0.5))),
    Case("complex_hyperbolic", lambda z: jnp.sinh(z) + jnp.cosh(z) + jnp.tanh(z)
         + jax.nn.sigmoid(z), args(cnormal(*S, scale=0.5))),
    Case("complex_inverse_hyperbolic",
         lambda z: jnp.arcsinh(z) + jnp.arccosh(z + 2.0) + jnp.arctanh(z),
         args(cnormal(*S, scale=0.5))),
    Case("complex_dot_general", lambda a, b: a @ b, args(cnormal(3, 4), cnormal(4, 5))),
    Case("complex_dot_general_real_by_complex",
         lambda x, z: lax.dot_general(x, z, (((1,), (0,)), ((), ()))),
         args(normal(3, 4), cnormal(4, 5))),
    Case("complex_dot_general_batched", lambda a, b: jnp.einsum("bij,bkj->bki", a, b),
         args(cnormal(2, 3, 4), cnormal(2, 5, 4))),
    Case("complex_reductions", lambda z: jnp.sum(z, 0) + jnp.prod(z, 0) + jnp.cumsum(z, 0)[-1]
         + jnp.cumprod(z, 0)[1], args(cannulus(*S))),
    Case("complex_structural",
         lambda z: jnp.concatenate([z.T.reshape(2, 6)[:, ::2], jnp.pad(z, 1)[:2, :3]], 1)[::-1]
         + jnp.broadcast_to(z[:1, :1], (2, 6)) + lax.dynamic_slice(z, (1, 0), (2, 4)).sum(),
         args(cnormal(*S))),
    Case("complex_split_and_update", lambda z, u: jnp.split(
        lax.dynamic_update_slice(z, u, (1, 1)), 2, axis=1)[1] * 2.0,
         args(cnormal(*S), cnormal(2, 2))),
    Case("complex_gather_scatter", lambda z, u: z[jnp.array([0, 2, 2])].sum(0)
         + z.at[jnp.array([0, 2])].add(u)[2] + z.at[jnp.array([1, 1])].set(u)[1]
         + z.at[jnp.array([0, 2])].multiply(u, unique_indices=True)[0],
         args(cnormal(*S), cnormal(2, 4))),
    Case("complex_select", lambda z, w: jnp.where(jnp.abs(z) > 1, z, w),
         args(cnormal(*S), cnormal(*S))),
    Case("complex_conv", lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME")
         + lax.reduce_window(x, 0j, lax.add, (1, 1, 3, 3), (1, 1, 1, 1), "SAME")[:, :1],
         args(cnormal(1, 2, 4, 4), cnormal(1, 2, 3, 3))),
    Case("complex_scan", _scan, args(cnormal(3, scale=0.5), cnormal(4, 3, scale=0.5))),
    Case("complex_cond", lambda p, z: lax.cond(p > 0, jnp.sin, jnp.cos, z),
         args(uniform(-1.0, 1.0), cnormal(*S))),
    Case("complex_calls", lambda z: jax.jit(lambda a: jnp.exp(a) * a)(z)
         + jax.checkpoint(lambda a: jnp.sin(a) * a)(z) + _csquare(z) + _ccube(z),
         args(cnormal(*S))),
    # selections order complex values lexicographically (real part, then imaginary); the
    # cotangent goes to the selected value, ties shared, as for reals
    Case("complex_selections", lambda z, w: lax.max(z, w) * 2 + lax.min(z, w)
         + jnp.max(z, axis=1, keepdims=True) + jnp.min(w, axis=0) + lax.cummin(w, axis=1)
         + lax.cummax(w, axis=0) + jnp.sort(z, axis=1) + z.at[jnp.array([0, 0, 2])].max(w)
         + w.at[jnp.array([1, 1, 2])].min(z),
         args(cnormal(*S), cnormal(*S)), fd=False),
    Case("complex_cumlogsumexp_atan2", lambda z, w: lax.cumlogsumexp(z, axis=1)
         + lax.atan2(z, w), args(cnormal(*S, scale=0.5), cannulus(*S))),
]
