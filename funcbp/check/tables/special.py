"""``funcbp check`` records for special functions (``funcbp/autodiff/rules/special.py``).

``digamma``, ``lgamma`` and ``erf_inv`` have their random records in the core table. Records
marked ``reference="raises"`` are arguments jax refuses to differentiate (``polygamma``'s order,
``betainc``'s ``a``): funcbp must refuse them too. ``igamma_grad_a``'s ``x``-derivative, which
jax has no rule for, is checked against float64 central differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special as sp
from jax import lax

from funcbp.check.rules import ZEROS, N, P, Sample, U

S = (3, 4)


def _gamma(alpha):
    return jax.random.gamma(jax.random.key(0), alpha) + jax.random.loggamma(jax.random.key(1),
                                                                            alpha)


def samples() -> list[Sample]:
    """Random and edge-case records for the special-function rules."""
    return [
        Sample("digamma", "second derivative of lgamma",
               jax.grad(lambda x: jnp.sum(lax.lgamma(x))), (P(*S),)),
        Sample("polygamma", "orders 0 and 2", lambda x: sp.polygamma(2, x) + sp.polygamma(0, x),
               (P(*S),)),
        Sample("polygamma", "in its order m (jax refuses)", lambda m, x: lax.polygamma(m, x),
               (U(1.0, 1.0, *S), P(*S)), reference="raises"),
        Sample("igamma", "both branches", sp.gammainc, (U(0.5, 3.0, *S), U(0.2, 6.0, *S))),
        Sample("igamma", "large a", sp.gammainc, (U(10.0, 30.0, *S), U(5.0, 40.0, *S))),
        Sample("igammac", "both branches", sp.gammaincc, (U(0.5, 3.0, *S), U(0.2, 6.0, *S))),
        Sample("igamma_grad_a", "in x vs finite differences",
               lambda x: lax.igamma_grad_a(jnp.full_like(x, 1.7), x), (U(0.3, 4.0, *S),),
               ("float64",), reference="fd"),
        Sample("regularized_incomplete_beta", "in x",
               lambda x: sp.betainc(jnp.full_like(x, 1.5), jnp.full_like(x, 2.5), x),
               (U(0.05, 0.95, *S),)),
        Sample("regularized_incomplete_beta", "in a (jax refuses)",
               lambda a, x: sp.betainc(a, jnp.full_like(x, 2.5), x),
               (P(*S), U(0.05, 0.95, *S)), reference="raises"),
        Sample("bessel_i0e", "random", sp.i0e, (N(*S, scale=3.0),)),
        Sample("bessel_i0e", "zeros", sp.i0e, (ZEROS(*S),)),
        Sample("bessel_i1e", "random", sp.i1e, (N(*S, scale=3.0),)),
        Sample("bessel_i1e", "zeros", sp.i1e, (ZEROS(*S),)),
        Sample("random_gamma", "gamma and loggamma in alpha", _gamma, (U(0.3, 4.0, 4),),
               tol=5.0),
    ]
