"""Cases for special functions: the gamma family, incomplete gamma and beta, Bessel, random gamma.

Refusals that follow jax (``polygamma`` in its order, ``betainc`` in ``a`` and ``b``) and the
``x``-derivative of ``igamma_grad_a``, which jax cannot compute, are checked against jax's errors
and float64 finite differences in ``tests/autodiff/test_special.py``.
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


def _gamma(alpha):
    return jax.random.gamma(jax.random.key(0), alpha)


CASES = [
    Case("digamma", sp.digamma, args(positive(*S))),
    # lgamma -> digamma -> polygamma(1, .) -> polygamma(2, .): second and third derivatives
    Case("lgamma_second_order", jax.grad(lambda x: jnp.sum(lax.lgamma(x) * x)), args(positive(*S))),
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
    # Reaches igamma_grad_a without differentiating it (jax has no rule to compare with, and
    # finite differences see through stop_gradient); the rule's x-derivative is checked against
    # finite differences in tests/autodiff/test_special.py.
    Case("igamma_grad_a_not_differentiated",
         lambda a, x: sp.gammainc(a, x) * lax.igamma_grad_a(lax.stop_gradient(a),
                                                            lax.stop_gradient(x)),
         args(uniform(0.5, 3.0, *S), uniform(0.2, 4.0, *S)), rtol=1e-4, fd=False),
]
