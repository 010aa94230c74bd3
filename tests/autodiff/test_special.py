"""Special functions beyond the rule table: refusals as jax's, igamma_grad_a, random samplers.

The per-rule checks against ``jax.vjp`` are the cases in ``tests/autodiff/cases/special.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special as sp
import numpy as np
import pytest
from jax import lax

import funcbp
from tests.jaxversion import requires


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


A = np.array([0.6, 1.2, 2.3, 3.5])  # numpy float64: jnp arrays made at import would be float32
X = np.array([0.3, 1.5, 2.0, 5.0])


def _error(grad, f, argnums, *args):
    try:
        grad(f, argnums)(*args)
    except Exception as e:  # noqa: BLE001 - compared by the caller
        return e
    return None


@pytest.mark.parametrize("f,argnums,args", [
    (lambda m, x: jnp.sum(lax.polygamma(m, x)), 0, (np.ones(4), X)),
    (lambda a, b, x: jnp.sum(sp.betainc(a, b, x)), 0, (A, A + 1, X / 6)),
    (lambda a, b, x: jnp.sum(sp.betainc(a, b, x)), (1, 2), (A, A + 1, X / 6)),
], ids=["polygamma_order", "betainc_a", "betainc_b"])
def test_arguments_jax_refuses_are_refused_the_same_way(f, argnums, args):
    ours, ref = _error(funcbp.grad, f, argnums, *args), _error(jax.grad, f, argnums, *args)
    assert type(ours) is type(ref) is ValueError
    assert str(ours) == str(ref)


@pytest.mark.parametrize("f,args", [
    (lambda a, x: jnp.sum(lax.igamma_grad_a(a, x)), (A, X)),  # second a-derivative of gammainc
    (lambda s, q: jnp.sum(lax.zeta(s, q)), (A + 1, X)),  # lax.zeta: jax.scipy's zeta is custom_jvp
], ids=["igamma_grad_a_in_a", "lax_zeta"])
def test_primitives_jax_cannot_differentiate_are_refused(f, args):
    assert isinstance(_error(jax.grad, f, 0, *args), NotImplementedError)
    assert isinstance(_error(funcbp.grad, f, 0, *args), funcbp.UnsupportedPrimitiveError)


def test_mixed_second_derivative_of_gammainc_matches_finite_differences():
    """d/dx (d gammainc / da) = igamma_grad_a's x-derivative, which jax has no rule for."""
    dp_da = lambda a, x: jnp.sum(funcbp.grad(lambda a: jnp.sum(sp.gammainc(a, x)))(a))  # noqa: E731
    ours = funcbp.grad(dp_da, 1)(A, X)
    eps = 1e-6
    g = jax.jit(lambda a, x: jnp.sum(lax.igamma_grad_a(a, x) * jnp.arange(1.0, 5.0)))
    weighted = funcbp.grad(lambda x: g(A, x))(X)
    step = eps * np.eye(4)
    fd = np.array([(g(A, X + step[i]) - g(A, X - step[i])) / (2 * eps) for i in range(4)])
    np.testing.assert_allclose(weighted, fd, rtol=1e-7)
    np.testing.assert_allclose(ours, weighted / jnp.arange(1.0, 5.0), rtol=1e-12)


def test_random_samplers_differentiate_in_their_parameters_like_jax():
    """beta (through loggamma, the log-space branch) and dirichlet, both in all parameters."""
    key = jax.random.key(5)

    def f(alpha, beta):
        k1, k2 = jax.random.split(key)
        return (jnp.sum(jax.random.beta(k1, alpha, beta) * jnp.arange(4.0))
                + jnp.sum(jax.random.dirichlet(k2, alpha) ** 2))

    alpha, beta = jnp.array([0.5, 1.0, 2.0, 7.0]), jnp.array([0.3, 1.5, 3.0, 0.8])
    ours, ref = jax.jit(lambda a, b: (funcbp.grad(f, (0, 1))(a, b),
                                      jax.grad(f, (0, 1))(a, b)))(alpha, beta)
    for o, r in zip(ours, ref, strict=True):
        assert o.dtype == jnp.float64
        np.testing.assert_allclose(o, r, rtol=1e-10)


SCIPY = {  # jax.scipy.special functions built from primitives that already have rules
    "gammaln": lambda x, p: sp.gammaln(x + 1.0),
    "xlogy": lambda x, p: sp.xlogy(x, p) + sp.xlog1py(x, p),
    "entr": lambda x, p: sp.entr(p) + sp.rel_entr(p, x * x) + sp.kl_div(p, x * x + 0.5),
    "logit_expit": lambda x, p: sp.logit(p) + sp.expit(x),
    "ndtr": lambda x, p: sp.ndtr(x) + sp.log_ndtr(x * 4.0) + sp.ndtri(p),
    "multigammaln": lambda x, p: sp.multigammaln(p + 2.0, 3),
    "zeta": lambda x, p: sp.zeta(x * x + 2.0, p),
    "gamma_beta": lambda x, p: sp.gamma(p + 0.5) + sp.beta(p, p + 1.0) + sp.betaln(p, 2.0),
}


def test_scipy_special_functions_differentiate_like_jax():
    _compare_with_jax(SCIPY)


@requires("erfcx")
def test_erfcx_differentiates_like_jax():
    _compare_with_jax({"erfcx": lambda x, p: sp.erfcx(x)})


def _compare_with_jax(table):
    x = jnp.array([-1.5, -0.2, 0.4, 2.5])
    p = jnp.array([0.1, 0.35, 0.6, 0.9])

    def both(x, p):
        out = {}
        for name, f in table.items():
            g = lambda x, p, f=f: jnp.sum(f(x, p) * jnp.arange(1.0, 5.0))  # noqa: E731
            out[name] = (funcbp.grad(g, (0, 1))(x, p), jax.grad(g, (0, 1))(x, p))
        return out

    for name, (ours, ref) in jax.jit(both)(x, p).items():
        for o, r in zip(ours, ref, strict=True):
            np.testing.assert_allclose(o, r, rtol=1e-10, atol=1e-14, err_msg=name)
