"""Behaviours where funcbp used to differ from jax (issue 18), each against jax and, where a
number is involved, float64 central finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp
from funcbp.autodiff import interpreter
from tests.jaxversion import skip_without


def _fd(f, x, eps=1e-6):
    """Central finite difference of scalar ``f`` at scalar ``x`` (float64)."""
    return (f(x + eps) - f(x - eps)) / (2 * eps)


# --- custom_vjp inside jax.checkpoint, differentiated twice --------------------------------

@jax.custom_vjp
def clip_gradient(lo, hi, x):
    return x


clip_gradient.defvjp(lambda lo, hi, x: (x, (lo, hi)),
                     lambda res, g: (None, None, jnp.clip(g, *res)))


@pytest.mark.parametrize("x", [0.3, 2.5])
def test_second_order_through_checkpointed_custom_vjp(x):
    """Was silently wrong: the checkpoint's forward applied the custom rule a second time."""
    with jax.enable_x64(True):
        inner = lambda y: jnp.sin(clip_gradient(-0.75, 0.75, y))  # noqa: E731
        f = lambda x: jax.checkpoint(inner)(x) * x  # noqa: E731
        ours = funcbp.grad(lambda x: funcbp.grad(f)(x))(x)
        ref = jax.grad(jax.grad(f))(x)
        np.testing.assert_allclose(ours, ref, rtol=1e-12)
        # the first derivative is clip(x cos x) + sin x; away from the clip its derivative is
        # the plain second derivative, which finite differences of the gradient see
        if abs(x * np.cos(x)) < 0.75:
            np.testing.assert_allclose(ours, _fd(funcbp.grad(f), x), rtol=1e-6)
        np.testing.assert_allclose(jax.grad(funcbp.grad(f))(x), ref, rtol=1e-12)


@pytest.mark.parametrize("policy", [None, "dots", "everything"])
def test_checkpoint_policy_is_honoured(policy):
    pol = {None: None, "dots": jax.checkpoint_policies.dots_saveable,
           "everything": jax.checkpoint_policies.everything_saveable}[policy]
    block = jax.checkpoint(lambda x, w: jnp.tanh(jnp.tanh(x @ w) @ w), policy=pol)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3))
    loss = lambda w: jnp.sum(block(x, w))  # noqa: E731
    np.testing.assert_allclose(funcbp.grad(loss)(w), jax.grad(loss)(w), rtol=1e-5)
    eqns = jax.make_jaxpr(funcbp.grad(loss))(w).jaxpr.eqns
    dots = sum(e.primitive is lax.dot_general_p for e in eqns)
    tanhs = sum(e.primitive is lax.tanh_p for e in eqns)
    # 2 forward dots + 3 backward dots (the second dot's two cotangents, the first's
    # weight); recomputing the forward adds the 2 dots again unless the policy saves them
    assert dots == {None: 7, "dots": 5, "everything": 5}[policy]
    assert tanhs == {None: 4, "dots": 4, "everything": 2}[policy]


# --- custom_jvp / custom_vjp corners -----------------------------------------------------------

@jax.custom_jvp
def doubled(x):
    return 2.0 * x


doubled.defjvp(lambda p, t: (doubled(p[0]), doubled(t[0])))  # the rule applies f to its tangent


def test_custom_jvp_rule_that_calls_the_function_on_its_tangent():
    """Used to recurse until RecursionError."""
    f = lambda x: jnp.sum(jnp.sin(doubled(x)))  # noqa: E731
    x = jnp.array([0.1, 0.7])
    np.testing.assert_allclose(funcbp.grad(f)(x), jax.grad(f)(x), rtol=1e-6)


def _symbolic_zeros_fn(seen):
    @jax.custom_vjp
    def h(x, y):
        return x * y, x + y

    def h_fwd(x, y):
        return h(x.value, y.value), (x.value, y.value)

    def h_bwd(res, cts):
        x, y = res
        seen.append(tuple(type(c).__name__ for c in cts))
        c1, c2 = (jnp.zeros_like(x) if type(c).__name__ == "SymbolicZero" else c for c in cts)
        return c1 * y + c2, c1 * x + c2

    h.defvjp(h_fwd, h_bwd, symbolic_zeros=True)
    return lambda x, y: h(x, y)[0]


@pytest.mark.parametrize("vjp3", [False, True], ids=["custom_vjp_call", "call_hi_primitive"])
def test_custom_vjp_symbolic_zeros(vjp3):
    """bwd sees a SymbolicZero for an unused output, as with jax, instead of instantiated
    zeros; under jax_custom_vjp3 every custom_vjp is a call_hi_primitive."""
    with _config("jax_custom_vjp3", vjp3):
        ours_seen, ref_seen = [], []
        ours = funcbp.grad(_symbolic_zeros_fn(ours_seen), (0, 1))(1.5, 2.0)
        ref = jax.grad(_symbolic_zeros_fn(ref_seen), (0, 1))(1.5, 2.0)
    np.testing.assert_allclose(ours, ref)
    assert ours_seen == ref_seen == [("ArrayImpl", "SymbolicZero")]


class _config:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def __enter__(self):
        if not hasattr(jax.config, self.name):  # an older jax without the option
            if self.value:
                skip_without(self.name)
            self.old = None
            return
        self.old = getattr(jax.config, self.name)
        jax.config.update(self.name, self.value)

    def __exit__(self, *exc):
        if self.old is not None:
            jax.config.update(self.name, self.old)


def test_custom_vjp3_user_rule_is_used():
    with _config("jax_custom_vjp3", True):
        @jax.custom_vjp
        def f(x):
            return jnp.sin(x)

        f.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda c, g: (2 * c * g,))  # planted x2
        g = lambda x: jnp.sum(f(x) * x)  # noqa: E731
        x = jnp.array([1.0, 2.0])
        assert "call_hi_primitive" in str(jax.make_jaxpr(g)(x))
        np.testing.assert_allclose(funcbp.grad(g)(x), jax.grad(g)(x), rtol=1e-6)
        np.testing.assert_allclose(jax.jit(funcbp.grad(g))(x), jax.grad(g)(x), rtol=1e-6)


# --- the pullback is a pytree --------------------------------------------------------------------

def test_pullback_returned_from_jit():
    f = lambda x: jax.lax.scan(lambda c, a: (c * jnp.sin(a) + a, c), x, jnp.arange(3.0))[0]
    x = jnp.array([0.5, -1.0])
    out, pullback = jax.jit(lambda x: funcbp.vjp(f, x))(x)
    ct = jnp.array([1.0, 2.0])
    np.testing.assert_allclose(pullback(ct)[0], jax.vjp(f, x)[1](ct)[0], rtol=1e-6)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(pullback))


def test_pullback_as_custom_vjp_residual():
    @jax.custom_vjp
    def f(x):
        return jnp.tanh(x) * x

    f.defvjp(lambda x: funcbp.vjp(lambda x: jnp.tanh(x) * x, x), lambda pb, g: pb(g))
    loss = lambda x: jnp.sum(f(x))  # noqa: E731
    x = jnp.linspace(-1.0, 1.0, 4)
    ref = jax.grad(lambda x: jnp.sum(jnp.tanh(x) * x))(x)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), ref, rtol=1e-6)


def test_python_number_cotangent():
    _, pullback = funcbp.vjp(jnp.sin, jnp.float32(1.0))
    _, ref = jax.vjp(jnp.sin, jnp.float32(1.0))
    np.testing.assert_allclose(pullback(1.0)[0], ref(1.0)[0])
    np.testing.assert_allclose(pullback(2)[0], 2 * ref(1.0)[0])
    with pytest.raises(ValueError, match="unexpected cotangent"):
        funcbp.vjp(jnp.sin, jnp.ones(3))[1](1.0)


# --- eager evaluation of Python control flow ------------------------------------------------

def branchy(x):
    return 3 * x if x < 2 else jnp.sin(x)


def looped(x, n):
    y = x
    for _ in range(int(n)):
        y = jnp.tanh(y) * x
    return jnp.sum(y) if jnp.sum(x) > 0 else -jnp.sum(y)


@pytest.mark.parametrize("x", [1.0, 3.0])
def test_python_control_flow_on_concrete_inputs(x):
    np.testing.assert_allclose(funcbp.grad(branchy)(x), jax.grad(branchy)(x), rtol=1e-6)
    np.testing.assert_allclose(funcbp.grad(funcbp.grad(branchy))(x),
                               jax.grad(jax.grad(branchy))(x), rtol=1e-6)
    v = jnp.array([0.5, 1.0]) * (1 if x < 2 else -1)
    np.testing.assert_allclose(funcbp.grad(looped)(v, 3), jax.grad(looped)(v, 3), rtol=1e-6)


def test_python_control_flow_under_jit_raises_like_jax():
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(jax.grad(branchy))(1.0)
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(funcbp.grad(branchy))(1.0)


# --- loops, activity, error types --------------------------------------------------------------

def _doubling_loop(c):
    return lax.while_loop(lambda s: s[1] < 3, lambda s: (s[0] * 2.0, s[1] + 1), (c, 0))[0]


def test_while_fed_only_by_stop_gradient_is_evaluated():
    f = lambda x: _doubling_loop(lax.stop_gradient(x)) * x  # noqa: E731
    assert funcbp.grad(f)(1.5) == jax.grad(f)(1.5) == 8 * 1.5


def test_while_loop_error_is_a_value_error_like_jax():
    f = lambda x: _doubling_loop(x)  # noqa: E731
    with pytest.raises(ValueError):
        jax.grad(f)(1.0)
    with pytest.raises(ValueError, match="lax.while_loop"):
        funcbp.grad(f)(1.0)


def test_missing_rule_inside_a_jitted_helper_names_the_users_line():
    @jax.jit
    def helper(x):
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    def loss(x):
        return jnp.sum(helper(x * 2.0))  # the line the message must name

    with pytest.raises(funcbp.UnsupportedPrimitiveError) as info:
        funcbp.grad(loss)(jnp.ones(3))
    line = loss.__code__.co_firstlineno + 1
    assert f"test_jax_parity.py:{line}" in str(info.value)
    assert "jit(helper)" in str(info.value)


# --- hooks: what the walks report ------------------------------------------------------------

class _Log(interpreter.Hooks):
    def __init__(self):
        self.forward, self.backward = [], []

    def forward_eqn(self, eqn, invals, outs):
        self.forward.append((eqn.primitive.name, tuple(str(f) for f in interpreter.path())))

    def backward_eqn(self, eqn, invals, outs, cts_out, cts_in):
        self.backward.append(eqn.primitive.name)


def test_hooks_see_both_walks_and_nested_paths():
    log = _Log()
    f = lambda x: jnp.sum(jax.jit(lambda y: jnp.sin(y) * y)(x) ** 2)  # noqa: E731
    with interpreter.hooks(log):
        g = funcbp.grad(f)(jnp.ones(3))
    np.testing.assert_allclose(g, jax.grad(f)(jnp.ones(3)), rtol=1e-6)
    inner = [p for name, p in log.forward if name == "sin"]
    assert inner and inner[0][0].startswith("jit(<lambda>)")
    assert [n for n, _ in log.forward] == ["sin", "mul", "jit", "integer_pow", "reduce_sum"]
    assert log.backward == ["reduce_sum", "integer_pow", "mul", "sin", "jit"]
