"""Cases for elementwise rules: arithmetic, transcendental, select, ties and kinks."""

import jax
import jax.numpy as jnp
from jax import lax

from tests.autodiff.cases import Case, args, normal, positive, uniform


def ties(*shape):
    """Values on a coarse grid so that maxima, minima and comparisons tie often."""
    def draw(key, dtype):
        return jax.random.randint(key, shape, -2, 3).astype(dtype)
    return draw


def with_zeros(*shape):
    def draw(key, dtype):
        x = jax.random.normal(key, shape, dtype)
        return jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3, shape), 0, x)
    return draw


S = (3, 4)
CASES = [
    Case("add", lambda x, y: x + y, args(normal(*S), normal(*S))),
    Case("add_broadcast_scalar", lambda x, y: x + y, args(normal(*S), normal())),
    Case("add_broadcast_row", lambda x, y: x + y, args(normal(*S), normal(1, 4))),
    Case("sub", lambda x, y: lax.sub(x, y), args(normal(*S), normal(*S))),
    Case("mul", lambda x, y: x * y, args(normal(*S), normal(*S))),
    Case("mul_same_var_twice", lambda x: x * x, args(normal(*S))),
    Case("mul_literal", lambda x: 0.5 * x, args(normal(*S))),
    Case("div", lambda x, y: x / y, args(normal(*S), positive(*S))),
    # A broadcast denominator (softmax, mean) takes the rule's reduce-then-divide path.
    Case("div_broadcast_denominator", lambda x, y: x / y, args(normal(*S), positive(3, 1))),
    Case("div_broadcast_both", lambda x, y: x / y, args(normal(3, 1), positive(1, 4))),
    Case("div_scalar_denominator", lambda x, y: x / y, args(normal(*S), positive())),
    Case("neg", lambda x: -x, args(normal(*S))),
    Case("max", lambda x, y: lax.max(x, y), args(normal(*S), normal(*S))),
    Case("max_ties", lambda x, y: lax.max(x, y), args(ties(*S), ties(*S)), fd=False),
    Case("min_ties", lambda x, y: lax.min(x, y), args(ties(*S), ties(*S)), fd=False),
    Case("relu_at_zero", jax.nn.relu, args(ties(*S)), fd=False),
    Case("pow", lambda x, y: lax.pow(x, y), args(positive(*S), normal(*S))),
    Case("pow_zero_base", lambda x, y: lax.pow(x, y), args(lambda k, d: jnp.zeros(S, d),
                                                            uniform(1.5, 3.0, *S)), fd=False),
    Case("pow_int_exponent", lambda x: lax.pow(x, jnp.int32(3)), args(normal(*S))),
    Case("integer_pow", lambda x: x ** 3, args(normal(*S))),
    Case("integer_pow_neg", lambda x: lax.integer_pow(x, -2), args(positive(*S))),
    Case("square", lambda x: lax.square(x), args(normal(*S))),
    Case("rem", lambda x, y: lax.rem(x, y), args(normal(*S, scale=3.0), positive(*S)), fd=False),
    Case("exp", jnp.exp, args(normal(*S))),
    Case("exp2", jnp.exp2, args(normal(*S))),
    Case("log", jnp.log, args(positive(*S))),
    Case("log1p", jnp.log1p, args(positive(*S))),
    Case("expm1", jnp.expm1, args(normal(*S))),
    Case("tanh", jnp.tanh, args(normal(*S))),
    Case("logistic", jax.nn.sigmoid, args(normal(*S))),
    Case("sqrt", jnp.sqrt, args(positive(*S))),
    Case("rsqrt", lax.rsqrt, args(positive(*S))),
    Case("cbrt", jnp.cbrt, args(positive(*S))),
    Case("abs", jnp.abs, args(normal(*S))),
    Case("abs_at_zero", jnp.abs, args(with_zeros(*S)), fd=False),
    Case("sign_has_no_gradient", lambda x: jnp.sign(x) * x, args(with_zeros(*S)), fd=False),
    Case("sin", jnp.sin, args(normal(*S))),
    Case("cos", jnp.cos, args(normal(*S))),
    Case("tan", jnp.tan, args(uniform(-1.0, 1.0, *S))),
    Case("asin", jnp.arcsin, args(uniform(-0.9, 0.9, *S))),
    Case("acos", jnp.arccos, args(uniform(-0.9, 0.9, *S))),
    Case("atan", jnp.arctan, args(normal(*S))),
    Case("atan2", jnp.arctan2, args(normal(*S), normal(*S))),
    Case("sinh", jnp.sinh, args(normal(*S))),
    Case("cosh", jnp.cosh, args(normal(*S))),
    Case("asinh", jnp.arcsinh, args(normal(*S))),
    Case("acosh", jnp.arccosh, args(uniform(1.5, 3.0, *S))),
    Case("atanh", jnp.arctanh, args(uniform(-0.9, 0.9, *S))),
    Case("erf", lax.erf, args(normal(*S))),
    Case("erfc", lax.erfc, args(normal(*S))),
    Case("erf_inv", lax.erf_inv, args(uniform(-0.9, 0.9, *S))),
    Case("lgamma", lax.lgamma, args(positive(*S))),
    Case("gelu_exact", lambda x: jax.nn.gelu(x, approximate=False), args(normal(*S))),
    Case("convert_element_type", lambda x: x.astype(jnp.float16).astype(x.dtype) * x,
         args(normal(*S)), rtol=1e-3, atol=1e-3, fd=False),
    Case("convert_to_int_no_gradient", lambda x: x.astype(jnp.int32).astype(x.dtype) + x,
         args(normal(*S)), fd=False),
    Case("reduce_precision", lambda x: lax.reduce_precision(x, 8, 7) * x, args(normal(*S)),
         fd=False),
    # fd=False: finite differences see through stop_gradient, by design of stop_gradient
    Case("stop_gradient", lambda x: lax.stop_gradient(x) * x, args(normal(*S)), fd=False),
    Case("copy", lambda x: jnp.array(x, copy=True) * 2.0, args(normal(*S))),
    Case("select_n", lambda p, x, y: lax.select(p, x, y),
         args(lambda k, d: jax.random.bernoulli(k, 0.5, S), normal(*S), normal(*S))),
    Case("select_n_three_way", lambda w, x, y, z: lax.select_n(w, x, y, z),
         args(lambda k, d: jax.random.randint(k, S, 0, 3), normal(*S), normal(*S), normal(*S))),
    Case("where_comparisons",
         lambda x, y: jnp.where(x > y, x * y, x - y) + jnp.where(x >= y, x, y)
         + jnp.where(x <= y, x, 2 * y) + jnp.where(x == y, x, 0.0) * jnp.where(x != y, y, 1.0)
         + jnp.where(x < y, y, x),
         args(normal(*S), normal(*S))),
    Case("clamp", lambda lo, x, hi: lax.clamp(lo, x, hi),
         args(normal(*S, scale=0.5), normal(*S, scale=2.0), uniform(1.0, 2.0, *S))),
    Case("clamp_scalar_bounds", lambda x: lax.clamp(-0.5, x, 0.5), args(normal(*S))),
    Case("floor_ceil_round_no_gradient",
         lambda x: (jnp.floor(x) + jnp.ceil(x) + jnp.round(x)) * x + jnp.isfinite(x) * x,
         args(normal(*S)), fd=False),
    Case("bitcast_no_gradient",
         lambda x: lax.bitcast_convert_type(x, jnp.int32 if x.dtype == jnp.float32 else jnp.int64)
         .astype(x.dtype) * 1e-9 * x + lax.bitcast_convert_type(x, x.dtype) * x,
         args(normal(*S)), fd=False),
    Case("logical_ops_no_gradient",
         lambda x, y: jnp.where((x > 0) & ~(y > 0) | (x < y) ^ (x != y), x, y),
         args(normal(*S), normal(*S)), fd=False),
    Case("argmax_no_gradient",
         lambda x: jnp.take_along_axis(x, jnp.argmax(x, 1, keepdims=True), 1)
         + jnp.take_along_axis(x, jnp.argmin(x, 1, keepdims=True), 1),
         args(normal(*S))),
    Case("grad_of_jax_grad", jax.grad(lambda x: jnp.sum(jnp.sin(x) * x * x)), args(normal(*S))),
]
