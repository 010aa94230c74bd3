"""Complex numbers at the API: jax's convention for grad, holomorphic=True, errors, refusals.

jax's convention, checked here against jax and against float64 central differences: for a real
``f`` of a complex ``z = x + i y``, ``grad(f)(z) = df/dx - i df/dy`` (the conjugate of the
gradient read as a complex number); with ``holomorphic=True``, ``grad(f)(z) = f'(z)``.
Per-rule checks against ``jax.vjp`` are the ``complex_*`` cases in ``tests/autodiff/cases``.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp
from funcbp.autodiff.rules import UnsupportedPrimitiveError


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _z(seed, *shape):
    """complex128 values as numpy (a jnp array made at import time would be complex64)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _fd_grad(f, z, eps=1e-6):
    """jax's convention from central differences: df/dx - i df/dy, one component at a time."""
    z = np.asarray(z, np.complex128)
    g = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        parts = []
        for step in (eps, 1j * eps):
            up, down = z.copy(), z.copy()
            up[i] += step
            down[i] -= step
            parts.append((float(f(jnp.asarray(up))) - float(f(jnp.asarray(down)))) / (2 * eps))
        g[i] = parts[0] - 1j * parts[1]
    return g


A = _z(1, 3)
REAL_OF_COMPLEX = {  # real-valued functions of a complex vector, each through one family
    "abs": lambda z: jnp.sum(jnp.abs(z) ** 3),
    "mul": lambda z: jnp.sum(jnp.abs(z * A * (0.5 - 2j)) ** 2),
    "dot_general": lambda z: jnp.real(jnp.dot(z, A)) + jnp.imag(z @ jnp.outer(A, z) @ A),
    "exp": lambda z: jnp.sum(jnp.real(jnp.exp(z)) * jnp.imag(jnp.exp(2j * z))),
    "log": lambda z: jnp.sum(jnp.imag(jnp.log(z)) + jnp.real(jnp.log(z * z)) ** 2),
    "real_imag": lambda z: jnp.sum(jnp.real(z) ** 2 * jnp.imag(z)),
    "conj": lambda z: jnp.sum(jnp.real(jnp.conj(z) * A * z * z)),
    "complex": lambda z: jnp.sum(jnp.abs(lax.complex(jnp.real(z) ** 2, jnp.imag(z) * 3.0))),
    "angle": lambda z: jnp.sum(jnp.angle(z) * jnp.abs(z)),
}


@pytest.mark.parametrize("name", list(REAL_OF_COMPLEX))
def test_grad_of_real_function_of_complex_input(name):
    f = REAL_OF_COMPLEX[name]
    z = _z(2, 3)
    ours = funcbp.grad(f)(z)
    np.testing.assert_allclose(ours, jax.grad(f)(z), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours, _fd_grad(jax.jit(f), z), rtol=1e-6, atol=1e-7)
    assert ours.dtype == jnp.complex128


def test_the_issue_case_complex_intermediate_of_real_input():
    """|x (1 + 2i)|^2 = 5 x^2: the derivative at x = 1 is 10 (funcbp used to return 4.47)."""
    f = lambda x: jnp.sum(jnp.abs(x * (1 + 2j)) ** 2)  # noqa: E731
    assert float(funcbp.grad(f)(1.0)) == pytest.approx(10.0, rel=1e-12)
    assert float(funcbp.grad(f)(1.0)) == pytest.approx(float(jax.grad(f)(1.0)), rel=1e-12)
    x = jnp.array([0.3, -1.7])
    ours = funcbp.grad(f)(x)
    assert ours.dtype == jnp.float64
    np.testing.assert_allclose(ours, 10 * x, rtol=1e-12)
    np.testing.assert_allclose(ours, jax.grad(f)(x), rtol=1e-12)


def test_real_function_with_complex_intermediates_second_order():
    f = lambda x: jnp.sum(jnp.abs(jnp.exp(1j * x) * (x + 2j)) ** 3 + jnp.real(jnp.sin(x + 1j)))  # noqa: E731,E501
    x = jnp.array([0.3, -1.2, 2.0])
    g = lambda x: jnp.sum(funcbp.grad(f)(x) ** 2)  # noqa: E731
    g_ref = lambda x: jnp.sum(jax.grad(f)(x) ** 2)  # noqa: E731
    np.testing.assert_allclose(funcbp.grad(f)(x), jax.grad(f)(x), rtol=1e-10)
    np.testing.assert_allclose(funcbp.grad(g)(x), jax.grad(g_ref)(x), rtol=1e-9)


HOLOMORPHIC = {
    "exp": (jnp.exp, jnp.exp),
    "log_of_square": (lambda z: jnp.log(z * z), lambda z: 2 / z),
    "tanh": (jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2),
    "polynomial": (lambda z: z ** 3 - (2 - 1j) * z, lambda z: 3 * z * z - (2 - 1j)),
    "sqrt_reciprocal": (lambda z: 1 / jnp.sqrt(z), lambda z: -0.5 * z ** -1.5),
}


@pytest.mark.parametrize("name", list(HOLOMORPHIC))
def test_holomorphic_grad_is_the_complex_derivative(name):
    f, df = HOLOMORPHIC[name]
    z = jnp.asarray(0.7 - 0.4j)
    ours = funcbp.grad(f, holomorphic=True)(z)
    np.testing.assert_allclose(ours, jax.grad(f, holomorphic=True)(z), rtol=1e-12)
    np.testing.assert_allclose(ours, df(z), rtol=1e-12)
    h = 1e-6  # a holomorphic f has the same difference quotient in every direction
    for step in (h, 1j * h):
        np.testing.assert_allclose(ours, (f(z + step) - f(z - step)) / (2 * step), rtol=1e-8)


def test_holomorphic_value_and_grad_pytrees_and_aux():
    def f(p, c):
        return jnp.sum(jnp.sin(p["a"]) * p["b"] ** 2) * c, {"aux": p["a"]}

    p = {"a": _z(3, 2), "b": _z(4, 2)}
    ours = funcbp.value_and_grad(f, has_aux=True, holomorphic=True)(p, 2.0)
    ref = jax.value_and_grad(f, has_aux=True, holomorphic=True)(p, 2.0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), ours, ref)
    jit_ours = jax.jit(funcbp.grad(lambda a: jnp.sum(a ** 3), holomorphic=True))(p["a"])
    np.testing.assert_allclose(jit_ours, 3 * p["a"] ** 2, rtol=1e-12)


def test_vjp_with_complex_cotangents_matches_jax():
    f = lambda z, x: (jnp.exp(z) * x, jnp.abs(z) + x)  # noqa: E731
    z, x = _z(5, 3), jnp.array([0.5, -1.0, 2.0])
    ct = (_z(6, 3), jnp.array([1.0, 2.0, -1.0]))
    ours = funcbp.vjp(f, z, x)[1](ct)
    ref = jax.vjp(f, z, x)[1](ct)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-12)


def _message(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is compared by the caller
        return type(e), str(e)
    return None, None


@pytest.mark.parametrize("call", [
    lambda g: g(jnp.exp)(jnp.asarray(1 + 1j)),  # complex output without holomorphic
    lambda g: g(jnp.exp, holomorphic=True)(jnp.asarray(1.0)),  # real input
    lambda g: g(jnp.abs, holomorphic=True)(jnp.asarray(1 + 1j)),  # real output
    lambda g: g(lambda z: z.sum(), holomorphic=True, allow_int=True)(jnp.arange(2)),
], ids=["complex_output", "holomorphic_real_input", "holomorphic_real_output",
        "holomorphic_int_input"])
def test_complex_dtype_errors_match_jax(call):
    ours_type, ours_msg = _message(lambda: call(funcbp.grad))
    ref_type, ref_msg = _message(lambda: call(jax.grad))
    assert ours_type is ref_type is TypeError
    assert ours_msg == ref_msg.replace("jax.vjp", "funcbp.vjp")


def test_complex_to_real_cast_differentiates_without_a_spurious_warning():
    f = lambda z: lax.convert_element_type(z, jnp.float64) * 3.0  # noqa: E731
    z = _z(7, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)  # the forward cast's own
        _, ours_pull = funcbp.vjp(f, z)
        _, ref_pull = jax.vjp(f, z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = ours_pull(jnp.array([1.0, 2.0, -1.0]))
    np.testing.assert_array_equal(ours[0], ref_pull(jnp.array([1.0, 2.0, -1.0]))[0])


def test_real_operand_of_a_complex_product_gets_a_real_cotangent_without_warnings():
    f = lambda x, z: lax.dot_general(x, z, (((1,), (0,)), ((), ())))  # noqa: E731
    x, z, ct = np.ones((2, 3)), _z(9, 3, 2), _z(10, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # casting complex to real is deprecated in jax
        ours = funcbp.vjp(f, x, z)[1](ct)
    for a, b in zip(ours, jax.vjp(f, x, z)[1](ct), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_complex_values_at_real_only_rules_are_refused():
    """A rule not registered with handles_complex=True refuses complex values, naming itself,
    instead of applying real-valued formulas (which is how |z(1+2j)|^2 once came out wrong)."""
    from funcbp.autodiff.rules import VJP_RULES, replaced_rule

    f = lambda z: jnp.real(jnp.sin(z)).sum()  # noqa: E731
    funcbp.grad(f)(_z(8, 3))  # sin's own rule handles complex values
    with replaced_rule(lax.sin_p, VJP_RULES[lax.sin_p]):  # the same rule, not marked
        with pytest.raises(UnsupportedPrimitiveError, match="'sin' does not handle complex"):
            funcbp.grad(f)(_z(8, 3))
    with pytest.raises(UnsupportedPrimitiveError, match="'funcbp_tag' does not handle complex"):
        funcbp.grad(lambda z: jnp.real(funcbp.tag(z, "z")).sum())(_z(8, 3))
