"""Control flow beyond the spec table: scan in jit in scan, while-loop errors, higher order.

References are jax.grad / jax.vjp / jax.hessian on fresh random inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp
from funcbp.autodiff.rules.control import NonDifferentiableLoopError
from tests.autodiff.cases.calls import scaled_square, softclip

WRAPS = {"eager": lambda f: f, "jit": jax.jit}


def _keys(seed, n):
    return jax.random.split(jax.random.key(seed), n)


def _close(a, b, rtol=2e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def scan_in_jit_in_scan(w, h0, xs):
    """An outer scan whose body calls a jitted function that runs its own scan."""
    @jax.jit
    def block(h, row):
        def inner(g, x):
            g = jnp.tanh(g @ w + x)
            return g, jnp.sum(g * g)
        g, e = lax.scan(inner, h, row)
        return g, e

    def outer(h, row):
        g, e = block(h, row)
        return 0.5 * (h + g), e.mean()
    h, es = lax.scan(outer, h0, xs)
    return jnp.sum(h ** 2) + jnp.sum(es)


def checkpointed_steps_in_scan(w, b, h0, xs):
    """Each scan step is a jax.checkpoint-ed two-layer block (policy: save nothing)."""
    @jax.checkpoint
    def step(h, x):
        a = jax.nn.softplus(h @ w + x)
        return jnp.tanh(a @ w.T + b)

    h, _ = lax.scan(lambda h, x: (step(h, x), None), h0, xs)
    return jnp.sum(jnp.sin(h))


def reversed_pytree_scan(params, init, xs):
    """Reverse scan with a (dict, tuple) carry and dict ys."""
    def body(carry, x):
        (h, c), n = carry
        h = jnp.tanh(h * params["a"] + x)
        c = c + jax.nn.sigmoid(h) * params["b"]
        return ((h, c), n + 1), {"h": h, "hc": h * c}
    ((h, c), _), ys = lax.scan(body, ((init["h"], init["c"]), 0), xs, reverse=True)
    return jnp.sum(h * c) + jnp.sum(ys["h"] ** 2) - jnp.sum(jnp.cos(ys["hc"]))


def doubly_nested(w, h0, xs):
    """Three levels of scan, the innermost reading every enclosing carry."""
    def l1(h, block):
        def l2(g, row):
            def l3(k, x):
                k = jnp.sin(k * w + x * g + h)
                return k, None
            k, _ = lax.scan(l3, g, row)
            return g + 0.5 * k, None
        g, _ = lax.scan(l2, h, block)
        return jnp.tanh(g), g.sum()
    h, s = lax.scan(l1, h0, xs)
    return jnp.sum(h) + jnp.sum(s ** 2)


def custom_rules_in_scan(w, xs):
    """custom_vjp (residuals and a Python bwd) and custom_jvp (relu, softclip) in a scan body."""
    def body(h, x):
        h = scaled_square(jnp.tanh(h * w + x), w[0]) + jax.nn.relu(x) + softclip(h, 2.0)
        return h, h
    h, ys = lax.scan(body, jnp.ones(3), xs)
    return jnp.sum(h) + jnp.sum(ys ** 2)


def _sample(seed):
    k = _keys(seed, 8)
    return {
        "scan_in_jit_in_scan": (scan_in_jit_in_scan, (
            0.5 * jax.random.normal(k[0], (3, 3)), jax.random.normal(k[1], (2, 3)),
            jax.random.normal(k[2], (4, 5, 2, 3)))),
        "checkpointed_steps_in_scan": (checkpointed_steps_in_scan, (
            0.5 * jax.random.normal(k[0], (3, 3)), jax.random.normal(k[3], (3,)),
            jax.random.normal(k[1], (2, 3)), jax.random.normal(k[2], (6, 2, 3)))),
        "reversed_pytree_scan": (reversed_pytree_scan, (
            {"a": jax.random.normal(k[0], (3,)), "b": jax.random.normal(k[1], ())},
            {"h": jax.random.normal(k[2], (3,)), "c": jax.random.normal(k[3], (3,))},
            jax.random.normal(k[4], (5, 3)))),
        "doubly_nested": (doubly_nested, (
            0.5 * jax.random.normal(k[0], (3,)), jax.random.normal(k[1], (3,)),
            jax.random.normal(k[2], (3, 2, 2, 3)))),
        "custom_rules_in_scan": (custom_rules_in_scan, (
            0.3 * jax.random.normal(k[0], (3,)), jax.random.normal(k[1], (5, 3)))),
    }


NAMES = list(_sample(0))


@pytest.mark.parametrize("wrap", list(WRAPS))
@pytest.mark.parametrize("name", NAMES)
def test_grad_matches_jax(name, wrap):
    fun, values = _sample(hash(name) % 1000)[name]
    argnums = tuple(range(len(values)))
    ours = WRAPS[wrap](funcbp.value_and_grad(fun, argnums))(*values)
    ref = WRAPS[wrap](jax.value_and_grad(fun, argnums))(*values)
    _close(ours, ref, rtol=5e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scan_in_jit_in_scan", "checkpointed_steps_in_scan",
                                  "reversed_pytree_scan"])
def test_second_order_through_scan(name):
    """Hessian-vector products through the scan rules (funcbp over funcbp, jax over funcbp)."""
    fun, values = _sample(3)[name]
    with jax.enable_x64(True):
        values = jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(
            x.dtype, jnp.floating) else x, values)
        w, rest = values[0], values[1:]
        v = jax.tree.map(lambda x: jax.random.normal(jax.random.key(9), x.shape, x.dtype), w)

        def hvp(grad):
            def g_dot_v(w):
                g = grad(lambda w: fun(w, *rest))(w)
                return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v),
                                                           strict=True))
            return g_dot_v

        ref = jax.jit(jax.grad(hvp(jax.grad)))(w)
        for outer, inner in [(funcbp.grad, funcbp.grad), (jax.grad, funcbp.grad),
                             (funcbp.grad, jax.grad)]:
            _close(jax.jit(outer(hvp(inner)))(w), ref, rtol=1e-8, atol=1e-10)


def test_vjp_of_scan_with_partial_needs():
    """Only some inputs differentiated: a const, the xs, or only the init carry."""
    k = _keys(1, 3)
    w, h0, xs = jax.random.normal(k[0], (3,)), jax.random.normal(k[1], (3,)), \
        jax.random.normal(k[2], (4, 3))

    def f(w, h0, xs):
        return lax.scan(lambda h, x: (jnp.sin(h * w) + x, h * x), h0, xs)

    for argnums in [(0,), (1,), (2,), (0, 2)]:
        ct = (jax.random.normal(k[0], (3,)), jax.random.normal(k[1], (4, 3)))

        def pull(vjp, argnums=argnums, ct=ct):
            def partial(*dyn):
                full = [w, h0, xs]
                for n, a in zip(argnums, dyn, strict=True):
                    full[n] = a
                return f(*full)
            return vjp(partial, *[(w, h0, xs)[n] for n in argnums])[1](ct)

        _close(pull(funcbp.vjp), pull(jax.vjp))


def test_while_loop_with_active_carry_raises_a_clear_error():
    def f(x):
        return lax.while_loop(lambda c: jnp.sum(c) < 10.0, lambda c: c * 2.0, x)

    with pytest.raises(NonDifferentiableLoopError, match=r"while_loop.*fori_loop.*lax\.scan"):
        funcbp.grad(lambda x: jnp.sum(f(x)))(jnp.ones(3))
    assert issubclass(NonDifferentiableLoopError, funcbp.UnsupportedPrimitiveError)


def test_fori_loop_with_traced_bounds_raises():
    def f(x, n):
        return lax.fori_loop(0, n, lambda i, c: jnp.sin(c), x)

    with pytest.raises(NonDifferentiableLoopError, match="fori_loop with Python-int bounds"):
        jax.jit(funcbp.grad(f))(1.0, 3)  # under jit the bound n is a traced value


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_while_loop_off_the_gradient_path_still_runs(wrap):
    """An int-only loop and a loop over a non-differentiated input evaluate normally."""
    def f(x, y):
        n = lax.while_loop(lambda i: i * i < 20, lambda i: i + 1, 0)  # int-only: 5
        z = lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 1.5), (0, y))[1]
        return jnp.sum(jnp.tanh(x) * n * z)

    x, y = jax.random.normal(jax.random.key(0), (3,)), jax.random.normal(jax.random.key(1), (3,))
    _close(WRAPS[wrap](funcbp.value_and_grad(f))(x, y), WRAPS[wrap](jax.value_and_grad(f))(x, y))


def test_scan_jitted_step_does_not_retrace():
    """The jitted gradient of a scan compiles once and is reused on new values."""
    traces = []

    def loss(w, xs):
        traces.append(1)
        return jnp.sum(lax.scan(lambda h, x: (jnp.tanh(h * w + x), None), jnp.zeros(3), xs)[0])

    g = jax.jit(funcbp.grad(loss))
    for s in range(3):
        k = _keys(s, 2)
        out = g(jax.random.normal(k[0], (3,)), jax.random.normal(k[1], (4, 3)))
        _close(out, jax.grad(loss)(jax.random.normal(k[0], (3,)),
                                   jax.random.normal(k[1], (4, 3))))
    assert len(traces) == 1 + 3  # one trace for our jit, one per jax.grad reference call


def test_scan_backward_keeps_no_per_step_copy_of_constants():
    """A weight read in every step is not stacked once per step by the forward scan."""
    w = jnp.ones((64, 64))
    xs = jnp.ones((50, 64))

    def loss(w, xs):
        return jnp.sum(lax.scan(lambda h, x: (jnp.tanh(h @ w.T + x), None), jnp.zeros(64),
                                xs)[0])

    jaxpr = jax.make_jaxpr(funcbp.grad(loss))(w, xs)
    fwd_scan = next(e for e in jaxpr.jaxpr.eqns if e.primitive is lax.scan_p)
    stacked = [v.aval.shape for v in fwd_scan.outvars[1:]]
    assert all(s != (50, 64, 64) for s in stacked), stacked


def test_checkpoint_in_scan_keeps_less_memory():
    """With jax.checkpoint the compiled step stacks only each layer's input (XLA's count)."""
    from benchmarks.remat_memory import measure

    plain = measure(funcbp.value_and_grad, "scan", 8, 64, 256, checkpoint=False)
    ckpt = measure(funcbp.value_and_grad, "scan", 8, 64, 256, checkpoint=True)
    activation = 256 * 64 * 4 / 2**20
    # plain keeps >= 2 activations per layer (dot input, tanh output); checkpoint keeps 1
    assert plain["temp_mib"] >= 2 * 8 * activation
    assert ckpt["temp_mib"] <= plain["temp_mib"] - 0.9 * 8 * activation
