"""Cases for special functions: the gamma family, incomplete gamma and beta, Bessel, random gamma.

Refusals that follow jax (``polygamma`` in its order, ``betainc`` in ``a`` and ``b``) are
checked against jax's errors in ``tests/autodiff/test_special.py``. jax cannot differentiate
``igamma_grad_a``; its case names a reference with the closed-form x-derivative, and float64
finite differences check that formula.
"""

import jax
import jax.numpy as jnp
import jax.scipy.special as sp
from jax import lax

from tests.autodiff.cases import Case, args, normal, positive, uniform

S = (3, 4)


def with_zeros(*shape):
    def draw(key, dtype):
        x = jax.random.normal(key, shape, dtype)
        return jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3, shape), 0, x)
    return draw


@jax.custom_jvp
def _igamma_grad_a_reference(a, x):
    return lax.igamma_grad_a(a, x)


@_igamma_grad_a_reference.defjvp
def _igamma_grad_a_reference_jvp(primals, tangents):
    # jax has no rule for igamma_grad_a; d/dx dP/da = dP/dx (log x - digamma(a)), in x only.
    # The formula itself is checked by this case's float64 finite differences.
    a, x = primals
    dp_dx = jnp.exp(-x + (a - 1) * jnp.log(x) - lax.lgamma(a))
    return lax.igamma_grad_a(a, x), dp_dx * (jnp.log(x) - lax.digamma(a)) * tangents[1]


def _a_like(x):
    return jnp.broadcast_to(jnp.linspace(0.5, 3.0, x.shape[-1], dtype=x.dtype), x.shape)


def _gamma(alpha):
    return jax.random.gamma(jax.random.key(0), alpha)


CASES = [
    Case("digamma", sp.digamma, args(positive(*S))),
    # lgamma -> digamma -> polygamma(1, .) -> polygamma(2, .): second and third derivatives
    # rtol: in float32 the sum polygamma(1, x) x + 2 digamma(x) cancels near x = 1.5
    Case("lgamma_second_order", jax.grad(lambda x: jnp.sum(lax.lgamma(x) * x)), args(positive(*S)),
         rtol=1e-4),
    Case("polygamma", lambda x: sp.polygamma(2, x) + sp.polygamma(0, x), args(positive(*S))),
    # both branches of igamma (series for x < max(1, a), continued fraction above), and igammac
    Case("gammainc", lambda a, x: sp.gammainc(a, x) + 2.0 * sp.gammaincc(a, x),
         args(uniform(0.5, 3.0, *S), uniform(0.2, 6.0, *S)), rtol=1e-4),
    Case("betainc", lambda x: sp.betainc(jnp.array([0.5, 1.5, 2.0, 4.0], x.dtype), 2.5, x),
         args(uniform(0.05, 0.95, *S))),
    Case("bessel", lambda x: sp.i0e(x) * 2.0 + sp.i1e(x) + sp.i0(x) - sp.i1(x),
         args(normal(*S, scale=3.0))),
    Case("bessel_at_zero", lambda x: sp.i0e(x) + sp.i1e(x) * 3.0, args(with_zeros(*S)), fd=False),
    # jax.random.gamma in alpha (loggamma, through beta, and dirichlet: test_special.py).
    # fd=False: the implicit reparameterisation gradient is not the derivative of a fixed-key
    # rejection sampler's path.
    Case("random_gamma", _gamma, args(uniform(0.3, 4.0, 4)), rtol=1e-4, fd=False),
    # d gammainc / da in x (mixed second derivatives of gammainc); its a-derivative is refused
    Case("igamma_grad_a_in_x", lambda x: lax.igamma_grad_a(_a_like(x), x),
         args(uniform(0.2, 4.0, *S)), rtol=1e-4,
         reference=lambda x: _igamma_grad_a_reference(_a_like(x), x)),
]
