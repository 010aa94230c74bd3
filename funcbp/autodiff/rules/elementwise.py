"""VJP rules for elementwise primitives: arithmetic, transcendental, comparison and select.

Jaxprs broadcast scalars implicitly (``mul 0.5:f32[] x:f32[3,4]``), so every rule of a binary
op passes its cotangents through :func:`unbroadcast`. Cotangents of both operands are returned
as thunks (``lambda: ...``) so that the walk computes only the ones it needs.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcbp.autodiff.rules import ZERO_GRADIENT, register_vjp_rule, vjp_rule

__all__ = ["no_gradient", "unbroadcast"]


def unbroadcast(ct, x):
    """Sums ``ct`` down to ``x``'s shape (undoes scalar and size-1 broadcasting)."""
    shape = np.shape(x)
    if ct.shape == shape:
        return ct
    lead = ct.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and ct.shape[lead + i] != 1)
    if axes:
        ct = lax.reduce_sum(ct, axes)
    return ct.reshape(shape) if ct.shape != shape else ct


def _full_like(ct, value):
    return lax.full_like(ct, value)


def no_gradient(*primitives, handles_complex=False):
    """Registers primitives whose outputs carry no gradient (comparisons, rounding, argmax)."""
    def none_vjp(ct, *args, **params):
        return (None,) * len(args)
    for p in primitives:
        register_vjp_rule(p, none_vjp, handles_complex=handles_complex)
        ZERO_GRADIENT.add(p)  # outputs stay inactive: nothing derived from them is walked


# --- arithmetic -------------------------------------------------------------------------------

@vjp_rule(lax.add_p, handles_complex=True)
def add_vjp(ct, x, y, **params):
    """d(x + y) = dx + dy."""
    return (lambda: unbroadcast(ct, x), lambda: unbroadcast(ct, y))


@vjp_rule(lax.sub_p, handles_complex=True)
def sub_vjp(ct, x, y, **params):
    """d(x - y) = dx - dy."""
    return (lambda: unbroadcast(ct, x), lambda: unbroadcast(-ct, y))


@vjp_rule(lax.mul_p, handles_complex=True)
def mul_vjp(ct, x, y, **params):
    """d(x y) = y dx + x dy."""
    return (lambda: unbroadcast(ct * y, x), lambda: unbroadcast(ct * x, y))


@vjp_rule(lax.div_p, handles_complex=True)
def div_vjp(ct, x, y, *, out, **params):
    """d(x / y) = dx / y - (x / y) dy / y, reusing the forward output.

    When ``y`` is broadcast (a softmax or mean denominator), ``-sum(ct x) / y / y`` is used
    instead: the product with ``x`` fuses into the reduction, the divisions run on the small
    array, and the full-size quotient need not be kept or materialised for the backward pass.
    """
    def dy():
        if np.shape(y) == out.shape:
            return -ct * out / y
        return -unbroadcast(ct * x, y) / y / y
    return (lambda: unbroadcast(ct / y, x), dy)


@vjp_rule(lax.neg_p, handles_complex=True)
def neg_vjp(ct, x, **params):
    """d(-x) = -dx."""
    return (-ct,)


def _tie_share(x, y, out):
    # At a tie max(x, x) sends half the cotangent to each side, as jax does.
    x_is, y_is = lax.eq(x, out), lax.eq(y, out)
    return jnp.where(x_is, jnp.where(y_is, 0.5, 1.0), 0.0).astype(out.dtype)


@vjp_rule(lax.max_p, handles_complex=True)
def max_vjp(ct, x, y, *, out, **params):
    """d max(x, y) goes to the larger operand; ties split half and half."""
    return (lambda: unbroadcast(ct * _tie_share(x, y, out), x),
            lambda: unbroadcast(ct * _tie_share(y, x, out), y))


@vjp_rule(lax.min_p, handles_complex=True)
def min_vjp(ct, x, y, *, out, **params):
    """d min(x, y) goes to the smaller operand; ties split half and half."""
    return (lambda: unbroadcast(ct * _tie_share(x, y, out), x),
            lambda: unbroadcast(ct * _tie_share(y, x, out), y))


@vjp_rule(lax.pow_p, handles_complex=True)
def pow_vjp(ct, x, y, *, out, **params):
    """d x^y = y x^(y-1) dx + log(x) x^y dy (log taken as 0 at x = 0, as jax does)."""
    def dx():
        if jnp.issubdtype(jnp.result_type(y), jnp.integer):
            yf = jnp.asarray(y)
            jac = jnp.where(yf == 0, 0, yf * lax.pow(x, yf - 1)).astype(out.dtype)
        else:
            jac = y * lax.pow(x, y - jnp.ones((), jnp.result_type(y)))
        return unbroadcast(ct * jac, x)

    def dy():
        safe_x = jnp.where(x == 0, jnp.ones((), jnp.result_type(x)), x)
        return unbroadcast(ct * lax.log(safe_x) * out, y)
    return (dx, dy)


@vjp_rule(lax.integer_pow_p, handles_complex=True)
def integer_pow_vjp(ct, x, *, y, **params):
    """d x^n = n x^(n-1) dx."""
    if y == 0:
        return (jnp.zeros_like(ct),)
    if y == 1:
        return (ct,)
    return (ct * (y * (x if y == 2 else lax.integer_pow(x, y - 1))),)


@vjp_rule(lax.square_p, handles_complex=True)
def square_vjp(ct, x, **params):
    """d x^2 = 2 x dx."""
    return (ct * (2 * x),)


@vjp_rule(lax.rem_p)
def rem_vjp(ct, x, y, **params):
    """rem(x, y) = x - y trunc(x / y): d = dx - trunc(x / y) dy."""
    def dy():
        q = x / y
        return unbroadcast(-ct * (lax.sign(q) * lax.floor(lax.abs(q))), y)
    return (lambda: unbroadcast(ct, x), dy)


# --- exponentials and logarithms ---------------------------------------------------------------

@vjp_rule(lax.exp_p, handles_complex=True)
def exp_vjp(ct, x, *, out, **params):
    """d exp(x) = exp(x) dx, from the saved output."""
    return (ct * out,)


@vjp_rule(lax.exp2_p, handles_complex=True)
def exp2_vjp(ct, x, *, out, **params):
    """d 2^x = log(2) 2^x dx."""
    return (ct * (out * math.log(2.0)),)


@vjp_rule(lax.log_p, handles_complex=True)
def log_vjp(ct, x, **params):
    """d log(x) = dx / x."""
    return (ct / x,)


@vjp_rule(lax.log1p_p, handles_complex=True)
def log1p_vjp(ct, x, **params):
    """d log(1 + x) = dx / (1 + x)."""
    return (ct / (1 + x),)


@vjp_rule(lax.expm1_p, handles_complex=True)
def expm1_vjp(ct, x, *, out, **params):
    """d (exp(x) - 1) = (out + 1) dx."""
    return (ct * (out + 1),)


@vjp_rule(lax.tanh_p, handles_complex=True)
def tanh_vjp(ct, x, *, out, **params):
    """d tanh(x) = 1 - tanh(x)^2 = (1 - y)(1 + y) with y the saved output.

    The factored form keeps relative precision near saturation: ``1 - y`` is exact for ``y``
    near 1, whereas ``1 - y * y`` inherits the rounding error of ``y * y`` (about 6e-8
    absolute, i.e. a relative error of 3e-8 / (1 - |y|)).
    """
    return (ct * ((1 - out) * (1 + out)),)


@vjp_rule(lax.logistic_p, handles_complex=True)
def logistic_vjp(ct, x, *, out, **params):
    """d sigmoid(x) = sigmoid(x) (1 - sigmoid(x))."""
    return (ct * (out * (1 - out)),)


@vjp_rule(lax.sqrt_p, handles_complex=True)
def sqrt_vjp(ct, x, *, out, **params):
    """d sqrt(x) = dx / (2 sqrt(x))."""
    return (ct * (0.5 / out),)


@vjp_rule(lax.rsqrt_p, handles_complex=True)
def rsqrt_vjp(ct, x, *, out, **params):
    """d x^(-1/2) = -x^(-3/2) / 2 dx = -out / (2 x) dx."""
    return (ct * (-0.5 * out / x),)


@vjp_rule(lax.cbrt_p)
def cbrt_vjp(ct, x, *, out, **params):
    """d x^(1/3) = dx / (3 out^2)."""
    return (ct / (3 * out * out),)


# --- absolute value and trigonometry -----------------------------------------------------------

@vjp_rule(lax.abs_p, handles_complex=True)
def abs_vjp(ct, x, *, out, **params):
    """d |x| = sign(x) dx, with +1 at 0 (jax's choice); complex: ct conj(x) / |x|, 0 at 0.

    For complex ``x`` the real-valued ``|x|`` has ``d|x| = Re(conj(x) dx) / |x|``, whose
    transpose under jax's pairing ``Re(u v)`` sends ``ct`` to ``ct conj(x) / |x|``.
    """
    if jnp.iscomplexobj(x):
        safe = jnp.where(out == 0, jnp.ones((), out.dtype), out)
        return (_to_complex(ct / safe, x) * lax.conj(x),)
    return (jnp.where(x >= 0, ct, -ct),)


@vjp_rule(lax.sin_p, handles_complex=True)
def sin_vjp(ct, x, **params):
    """d sin(x) = cos(x) dx."""
    return (ct * lax.cos(x),)


@vjp_rule(lax.cos_p, handles_complex=True)
def cos_vjp(ct, x, **params):
    """d cos(x) = -sin(x) dx."""
    return (-ct * lax.sin(x),)


@vjp_rule(lax.tan_p, handles_complex=True)
def tan_vjp(ct, x, *, out, **params):
    """d tan(x) = (1 + tan(x)^2) dx."""
    return (ct * (1 + out * out),)


@vjp_rule(lax.asin_p, handles_complex=True)
def asin_vjp(ct, x, **params):
    """d asin(x) = dx / sqrt(1 - x^2)."""
    return (ct * lax.rsqrt(1 - x * x),)


@vjp_rule(lax.acos_p, handles_complex=True)
def acos_vjp(ct, x, **params):
    """d acos(x) = -dx / sqrt(1 - x^2)."""
    return (-ct * lax.rsqrt(1 - x * x),)


@vjp_rule(lax.atan_p, handles_complex=True)
def atan_vjp(ct, x, **params):
    """d atan(x) = dx / (1 + x^2)."""
    return (ct / (1 + x * x),)


@vjp_rule(lax.atan2_p, handles_complex=True)
def atan2_vjp(ct, x, y, **params):
    """atan2(x, y): d = (y dx - x dy) / (x^2 + y^2)."""
    return (lambda: unbroadcast(ct * y / (x * x + y * y), x),
            lambda: unbroadcast(-ct * x / (x * x + y * y), y))


@vjp_rule(lax.sinh_p, handles_complex=True)
def sinh_vjp(ct, x, **params):
    """d sinh(x) = cosh(x) dx."""
    return (ct * lax.cosh(x),)


@vjp_rule(lax.cosh_p, handles_complex=True)
def cosh_vjp(ct, x, **params):
    """d cosh(x) = sinh(x) dx."""
    return (ct * lax.sinh(x),)


@vjp_rule(lax.asinh_p, handles_complex=True)
def asinh_vjp(ct, x, **params):
    """d asinh(x) = dx / sqrt(x^2 + 1)."""
    return (ct * lax.rsqrt(x * x + 1),)


@vjp_rule(lax.acosh_p, handles_complex=True)
def acosh_vjp(ct, x, **params):
    """d acosh(x) = dx / sqrt((x - 1)(x + 1))."""
    return (ct * lax.rsqrt((x - 1) * (x + 1)),)


@vjp_rule(lax.atanh_p, handles_complex=True)
def atanh_vjp(ct, x, **params):
    """d atanh(x) = dx / (1 - x^2)."""
    return (ct / (1 - x * x),)


# --- error functions (the other special functions are in special.py) -----------------------------

@vjp_rule(lax.erf_p)
def erf_vjp(ct, x, **params):
    """d erf(x) = 2 / sqrt(pi) exp(-x^2) dx."""
    return (ct * ((2 / math.sqrt(math.pi)) * lax.exp(-(x * x))),)


@vjp_rule(lax.erfc_p)
def erfc_vjp(ct, x, **params):
    """d erfc(x) = -2 / sqrt(pi) exp(-x^2) dx."""
    return (ct * ((-2 / math.sqrt(math.pi)) * lax.exp(-(x * x))),)


# --- dtype, precision and identity-like ops ----------------------------------------------------

@vjp_rule(lax.convert_element_type_p, handles_complex=True)
def convert_element_type_vjp(ct, x, *, new_dtype, **params):
    """A cast's cotangent is cast back; none flows into integer or boolean inputs.

    complex -> real keeps the real part (jax's cast), so the cotangent returns as ``ct + 0j``;
    real -> complex embeds ``x`` as ``x + 0j``, so only the real part of ``ct`` returns.
    """
    x_dtype = jnp.result_type(x)
    if not jnp.issubdtype(x_dtype, jnp.inexact):
        return (None,)
    if jnp.iscomplexobj(ct) and not jnp.issubdtype(x_dtype, jnp.complexfloating):
        ct = lax.real(ct)  # explicit: a complex -> real cast would warn (ComplexWarning)
    if jnp.result_type(ct) == x_dtype:
        return (ct,)
    return (lax.convert_element_type(ct, x_dtype),)


@vjp_rule(lax.reduce_precision_p)
def reduce_precision_vjp(ct, x, *, exponent_bits, mantissa_bits, **params):
    """Rounding to fewer bits is treated as the identity, rounding the cotangent too."""
    return (lax.reduce_precision(ct, exponent_bits, mantissa_bits),)


@vjp_rule(lax.stop_gradient_p if hasattr(lax, "stop_gradient_p") else lax.copy_p,
          handles_complex=True)
def stop_gradient_vjp(ct, x, **params):
    """stop_gradient: no cotangent flows through."""
    return (None,)


ZERO_GRADIENT.add(lax.stop_gradient_p if hasattr(lax, "stop_gradient_p") else lax.copy_p)


@vjp_rule(lax.copy_p, handles_complex=True)
def copy_vjp(ct, x, **params):
    """copy is the identity."""
    return (ct,)


# --- complex parts ---------------------------------------------------------------------------
# Under jax's pairing <u, v> = Re(u v) (no conjugation), a real-linear map's cotangent map is its
# transpose: real(z) -> ct + 0j, imag(z) -> -i ct, conj(z) -> conj(ct), complex(x, y) ->
# (Re ct, -Im ct). See docs/autodiff.md, "Complex numbers".

def _to_complex(r, like):
    """``r + 0j`` in the complex dtype of ``like`` (``r`` real)."""
    return lax.convert_element_type(r, jnp.result_type(like))


@vjp_rule(lax.real_p, handles_complex=True)
def real_vjp(ct, x, **params):
    """d Re(z) = Re(dz): the cotangent returns as ct + 0j."""
    return (_to_complex(ct, x),)


@vjp_rule(lax.imag_p, handles_complex=True)
def imag_vjp(ct, x, **params):
    """d Im(z) = Im(dz) = Re(-i dz): the cotangent returns as -i ct."""
    return (lax.complex(jnp.zeros_like(ct), -ct),)


@vjp_rule(lax.conj_p, handles_complex=True)
def conj_vjp(ct, x, *, input_dtype, **params):
    """d conj(z) = conj(dz): conj(ct); for a real input (conj of x + 0j), Re(ct)."""
    if jnp.issubdtype(input_dtype, jnp.complexfloating):
        return (lax.conj(ct),)
    r = lax.real(ct)
    return (r if r.dtype == jnp.result_type(x) else r.astype(jnp.result_type(x)),)


@vjp_rule(lax.complex_p, handles_complex=True)
def complex_vjp(ct, x, y, **params):
    """d (x + i y) = dx + i dy: Re(ct) for x, -Im(ct) for y."""
    return (lambda: unbroadcast(lax.real(ct), x), lambda: unbroadcast(-lax.imag(ct), y))


# --- selection ------------------------------------------------------------------------------------

@vjp_rule(lax.select_n_p, handles_complex=True)
def select_n_vjp(ct, which, *cases, **params):
    """select_n(which, *cases): each case gets the cotangent where it was selected, 0 elsewhere."""
    zero = jnp.zeros_like(ct)

    def case_ct(i):
        return lambda: lax.select_n(which, *[ct if j == i else zero for j in range(len(cases))])
    return (None, *[case_ct(i) for i in range(len(cases))])


@vjp_rule(lax.clamp_p)
def clamp_vjp(ct, lo, x, hi, **params):
    """clamp(lo, x, hi): x gets the cotangent strictly inside (lo, hi); lo below, hi above.

    At a tie (x == lo or x == hi) no operand receives a cotangent, as in jax.
    """
    zero = jnp.zeros_like(ct)
    return (lambda: unbroadcast(jnp.where((lo > x) & (lo < hi), ct, zero), lo),
            lambda: jnp.where((x > lo) & (x < hi), ct, zero),
            lambda: unbroadcast(jnp.where(hi < x, ct, zero), hi))


no_gradient(
    lax.floor_p, lax.ceil_p, lax.round_p, lax.is_finite_p,
    lax.eq_p, lax.ne_p, lax.lt_p, lax.le_p, lax.gt_p, lax.ge_p,
    lax.and_p, lax.or_p, lax.not_p, lax.xor_p,
    lax.argmax_p, lax.argmin_p,
)
no_gradient(lax.sign_p, handles_complex=True)  # jax: zero derivative, z / |z| included
# Reinterpreting bits is not a differentiable map; jax defines its derivative as zero too.
no_gradient(lax.bitcast_convert_type_p, handles_complex=True)


def _add_any_vjp(ct, x, y, **params):
    """add_any (jax's cotangent accumulation, met when differentiating jax.grad): linear."""
    return (ct, ct)


try:  # a private primitive: only present in jaxprs produced by jax's own autodiff
    from jax._src.ad_util import add_jaxvals_p as _add_any_p
except ImportError:  # pragma: no cover
    _add_any_p = None
if _add_any_p is not None:
    register_vjp_rule(_add_any_p, _add_any_vjp, handles_complex=True)
