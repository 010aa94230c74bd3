"""VJP rules for special functions: the gamma family, incomplete gamma and beta, Bessel, erf_inv.

They carry ``jax.scipy.special`` (``gammaln``, ``digamma``, ``polygamma``, ``gammainc``,
``gammaincc``, ``betainc``, ``i0e``/``i1e`` and ``i0``/``i1`` through them, ``erfinv``, ``ndtri``)
and ``jax.random.gamma``/``loggamma``/``beta``/``dirichlet`` differentiated in ``alpha``. Every
derivative is the textbook one, written with primitives that have rules where one exists, so
``lgamma`` -> ``digamma`` -> ``polygamma`` differentiates to any order.

Where jax refuses an argument, funcbp refuses it the same way, with jax's exception type and
message, as soon as that argument is found to be differentiated (in the forward pass, as jax's
JVP does): ``polygamma`` in its order ``m``, ``betainc`` in ``a`` and ``b``. ``zeta`` has no rule:
jax has none for the primitive either (``jax.scipy.special.zeta`` is a ``custom_jvp``, which
funcbp differentiates through the user-rule path). ``igamma_grad_a`` (the ``a``-derivative of
``igamma``, which jax cannot differentiate) gets its ``x``-derivative, so mixed second
derivatives of ``gammainc`` work; its ``a``-derivative is refused.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from funcbp.autodiff.rules import UnsupportedPrimitiveError, register_vjp_rule, vjp_rule
from funcbp.autodiff.rules.elementwise import unbroadcast

__all__: list[str] = []


def _broadcast(*xs):
    """The operands at their common shape (jaxprs may pass a scalar literal beside an array)."""
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in xs))
    return [x if jnp.shape(x) == shape else jnp.broadcast_to(x, shape) for x in xs]


def _refusing(primitive, refused, error):
    """A forward rule that raises ``error()`` when an argument in ``refused`` is differentiated.

    jax raises in its JVP, i.e. while ``jax.vjp`` runs the forward pass; so does this.
    """
    def forward(*args, needs, **params):
        if any(needs[i] for i in refused):
            raise error()
        return primitive.bind(*args, **params), None
    return forward


# --- the gamma function and its derivatives ------------------------------------------------------

@vjp_rule(lax.lgamma_p)
def lgamma_vjp(ct, x, **params):
    """d lgamma(x) = digamma(x) dx."""
    return (ct * lax.digamma(x),)


@vjp_rule(lax.digamma_p)
def digamma_vjp(ct, x, **params):
    """d digamma(x) = polygamma(1, x) dx."""
    return (ct * lax.polygamma(lax.full_like(x, 1), x),)


def _polygamma_m_error():
    return ValueError("polygamma gradient with respect to m is not supported")


@vjp_rule(lax.polygamma_p, forward=_refusing(lax.polygamma_p, (0,), _polygamma_m_error))
def polygamma_vjp(ct, m, x, *, res=None, **params):
    """d polygamma(m, x) = polygamma(m + 1, x) dx; none for the order m (refused, as in jax)."""
    m_b, x_b = _broadcast(m, x)
    return (None, lambda: unbroadcast(ct * lax.polygamma(m_b + 1, x_b), x))


# --- incomplete gamma ---------------------------------------------------------------------------

def _igamma_dx(a, x):
    """d/dx P(a, x) = x^(a-1) e^(-x) / Gamma(a)."""
    return lax.exp(-x + (a - 1) * lax.log(x) - lax.lgamma(a))


@vjp_rule(lax.igamma_p)
def igamma_vjp(ct, a, x, **params):
    """P(a, x) = gammainc: d/da = igamma_grad_a(a, x), d/dx = x^(a-1) e^(-x) / Gamma(a)."""
    a_b, x_b = _broadcast(a, x)
    return (lambda: unbroadcast(ct * lax.igamma_grad_a(a_b, x_b), a),
            lambda: unbroadcast(ct * _igamma_dx(a_b, x_b), x))


@vjp_rule(lax.igammac_p)
def igammac_vjp(ct, a, x, **params):
    """Q(a, x) = 1 - P(a, x) = gammaincc: the negated derivatives of igamma."""
    a_b, x_b = _broadcast(a, x)
    return (lambda: unbroadcast(-ct * lax.igamma_grad_a(a_b, x_b), a),
            lambda: unbroadcast(-ct * _igamma_dx(a_b, x_b), x))


def _igamma_grad_a_a_error():
    return UnsupportedPrimitiveError(
        "funcbp: no derivative of igamma_grad_a (d gammainc / da) with respect to a: the "
        "second a-derivative of the incomplete gamma function has no closed form, and jax has "
        "no rule for it either. Its x-derivative is supported; differentiate d/da gammainc in x "
        "only, or use finite differences in a.")


@vjp_rule(lax.igamma_grad_a_p,
          forward=_refusing(lax.igamma_grad_a_p, (0,), _igamma_grad_a_a_error))
def igamma_grad_a_vjp(ct, a, x, *, out, res=None, **params):
    """d/dx (dP/da) = d/da (dP/dx) = dP/dx (log(x) - digamma(a)); refused in a."""
    a_b, x_b = _broadcast(a, x)
    return (None, lambda: unbroadcast(
        ct * (_igamma_dx(a_b, x_b) * (lax.log(x_b) - lax.digamma(a_b))), x))


# --- incomplete beta ----------------------------------------------------------------------------

def _betainc_ab_error():
    return ValueError("Betainc gradient with respect to a and b not supported.")


@vjp_rule(lax.regularized_incomplete_beta_p,
          forward=_refusing(lax.regularized_incomplete_beta_p, (0, 1), _betainc_ab_error))
def regularized_incomplete_beta_vjp(ct, a, b, x, *, res=None, **params):
    """d/dx I_x(a, b) = x^(a-1) (1-x)^(b-1) / B(a, b); refused in a and b, as in jax."""
    a_b, b_b, x_b = _broadcast(a, b, x)
    log_beta = lax.lgamma(a_b) + lax.lgamma(b_b) - lax.lgamma(a_b + b_b)
    dx = lax.exp((b_b - 1) * lax.log1p(-x_b) + (a_b - 1) * lax.log(x_b) - log_beta)
    return (None, None, lambda: unbroadcast(ct * dx, x))


# --- Bessel functions, exponentially scaled ------------------------------------------------------

@vjp_rule(lax.bessel_i0e_p)
def bessel_i0e_vjp(ct, x, *, out, **params):
    """i0e(x) = e^(-|x|) I0(x): d = (i1e(x) - sign(x) i0e(x)) dx."""
    return (ct * (lax.bessel_i1e(x) - lax.sign(x) * out),)


@vjp_rule(lax.bessel_i1e_p)
def bessel_i1e_vjp(ct, x, *, out, **params):
    """i1e(x) = e^(-|x|) I1(x): d = (i0e(x) - i1e(x) (sign(x) + 1/x)) dx; 1/2 at |x| <= eps.

    Near 0 the formula is 0/0-like in floating point, so below the dtype's epsilon the exact
    limit 1/2 is used, as jax does.
    """
    eps = jnp.finfo(jnp.result_type(x)).eps
    not_tiny = lax.abs(x) > eps
    safe_x = jnp.where(not_tiny, x, lax.full_like(x, eps))
    d = lax.bessel_i0e(safe_x) - out * (lax.sign(safe_x) + 1 / safe_x)
    return (ct * jnp.where(not_tiny, d, lax.full_like(x, 0.5)),)


# --- inverse error function -----------------------------------------------------------------------

@vjp_rule(lax.erf_inv_p)
def erf_inv_vjp(ct, x, *, out, **params):
    """d erfinv(x) = sqrt(pi) / 2 exp(erfinv(x)^2) dx."""
    return (ct * ((math.sqrt(math.pi) / 2) * lax.exp(out * out)),)


# --- jax.random.gamma and friends, differentiated in alpha ---------------------------------------

def _random_gamma_vjp(ct, key, a, *, out, log_space, **params):
    """d sample / d alpha = random_gamma_grad(alpha, sample) (implicit reparameterisation).

    ``log_space=True`` (``jax.random.loggamma``) returns ``log(sample)``, whose derivative is
    that of the sample divided by the sample; a sample that underflowed to 0 is taken as the
    dtype's smallest normal number, as jax does.
    """
    if log_space:
        sample = lax.exp(out)
        sample = jnp.where(sample == 0, lax.full_like(sample, jnp.finfo(sample.dtype).tiny),
                           sample)
        d = lax.random_gamma_grad(a, sample) / sample
    else:
        d = lax.random_gamma_grad(a, out)
    return (None, ct * d)


try:  # private in jax; the primitive behind jax.random.gamma/loggamma/beta/dirichlet
    from jax._src.random import random_gamma_p as _random_gamma_p
except ImportError:  # pragma: no cover - older layouts
    _random_gamma_p = None
if _random_gamma_p is not None:
    _random_gamma_vjp.__name__ = _random_gamma_vjp.__qualname__ = "random_gamma_vjp"
    register_vjp_rule(_random_gamma_p, _random_gamma_vjp)
