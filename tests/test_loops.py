"""bounded_while_loop: while_loop's values within the bound, and gradients (funcbp.grad and
jax.grad, with and without checkpointing) against finite differences and, for a fixed point,
the implicit function theorem; float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp
from funcbp.check import check_grads
from funcbp.loops import LoopBoundWarning, bounded_while_loop

GRADS = [pytest.param(funcbp.grad, id="funcbp"), pytest.param(jax.grad, id="jax")]
CHECKPOINT = [pytest.param(None, id="plain"), pytest.param(3, id="checkpoint3")]


def fixed_point(params, checkpoint_every=None):
    """x = cos(a x) + b, iterated until two iterates agree to 1e-14 (about 40 steps)."""
    a, b = params[0], params[1]

    def cond(state):
        x, prev = state
        return jnp.abs(x - prev) > 1e-14

    def body(state):
        x, _ = state
        return jnp.cos(a * x) + b, x

    x, _ = bounded_while_loop(cond, body, (b, b + 1.0), 200, checkpoint_every=checkpoint_every)
    return x


def ode(params, checkpoint_every=None):
    """y' = -k y + c sin(t) on [0, 2] by Heun's method with an adaptive step (an embedded Euler
    error estimate, steps rejected above tol); returns sum(y(2)^2)."""
    k, c, y0 = params[0], params[1], params[2:]
    t_end, tol = 2.0, 1e-6

    def f(t, y):
        return -k * y + c * jnp.sin(t)

    def body(state):
        t, y, dt = state
        h = jnp.minimum(dt, t_end - t)
        f0 = f(t, y)
        euler = y + h * f0
        heun = y + 0.5 * h * (f0 + f(t + h, euler))
        err = jnp.sqrt(jnp.sum((heun - euler) ** 2))
        accept = err <= tol
        scale = jnp.clip(0.9 * jnp.sqrt(tol / (err + 1e-30)), 0.2, 2.0)
        return (jnp.where(accept, t + h, t), jnp.where(accept, heun, y), h * scale)

    _, y, _ = bounded_while_loop(lambda s: s[0] < t_end, body, (0.0, y0, 0.01), 2000,
                                 checkpoint_every=checkpoint_every)
    return jnp.sum(y ** 2)


@pytest.mark.parametrize("checkpoint_every", CHECKPOINT)
@pytest.mark.parametrize("grad", GRADS)
def test_fixed_point_gradient_is_the_implicit_derivative(grad, checkpoint_every):
    with jax.enable_x64(True):
        ab = jnp.array([0.7, 0.3])
        x = fixed_point(ab)
        g = grad(fixed_point)(ab, checkpoint_every)
        a = 0.7
        s = np.sin(a * float(x))
        # F(x, a, b) = cos(a x) + b - x = 0  =>  dx/da = -x s / (1 + a s), dx/db = 1 / (1 + a s)
        np.testing.assert_allclose(g, [-float(x) * s / (1 + a * s), 1 / (1 + a * s)],
                                   rtol=1e-10)
        report = check_grads(lambda p: fixed_point(p, checkpoint_every), (ab,),
                             grad_fn=grad, against=("fd",))
        assert report.passed, str(report)


@pytest.mark.parametrize("checkpoint_every", CHECKPOINT)
@pytest.mark.parametrize("grad", GRADS)
def test_adaptive_ode_gradient_matches_finite_differences(grad, checkpoint_every):
    with jax.enable_x64(True):
        params = jnp.array([1.5, 0.8, 1.0, -0.5])
        report = check_grads(lambda p: ode(p, checkpoint_every), (params,), grad_fn=grad,
                             against=("fd",))
        assert report.passed, str(report)
        assert report.leaves[0].vs_fd.max_rel_err < 1e-6


def test_values_are_while_loops_within_the_bound():
    def cond(s):
        return s["n"] < 7

    def body(s):
        return {"n": s["n"] + 1, "x": s["x"] * 1.5 + jnp.sin(s["x"])}

    init = {"n": jnp.asarray(0), "x": jnp.linspace(0.1, 1.0, 3)}
    ref = lax.while_loop(cond, body, init)
    for k in (None, 2, 50):
        out, steps = jax.jit(lambda s, k=k: bounded_while_loop(
            cond, body, s, 10, checkpoint_every=k, return_steps=True))(init)
        assert int(steps) == 7
        jax.tree.map(np.testing.assert_array_equal, out, ref)
    blocks = jax.make_jaxpr(lambda s: bounded_while_loop(cond, body, s, 10, checkpoint_every=2))
    assert "remat" in str(blocks(init))  # blocks of steps under jax.checkpoint


def test_the_bound_stops_the_loop_and_warns_eagerly():
    with pytest.warns(LoopBoundWarning, match="max_steps=10"):
        out, steps = bounded_while_loop(lambda x: x < 100, lambda x: x + 1, 0, 10,
                                        return_steps=True)
    assert int(out) == 10 and int(steps) == 10
    assert int(bounded_while_loop(lambda x: x < 100, lambda x: x + 1, 0, 0)) == 0


def test_while_loops_error_points_to_it_and_bad_input_is_refused():
    def loss(x):
        return lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * 2.0, c[1] + 1),
                              (x, 0))[0]

    with pytest.raises(funcbp.UnsupportedPrimitiveError, match="funcbp.bounded_while_loop"):
        funcbp.grad(loss)(1.0)
    with pytest.raises(ValueError, match="max_steps must be a Python int"):
        bounded_while_loop(lambda x: x < 1, lambda x: x, 0.0, 2.5)
    with pytest.raises(ValueError, match="checkpoint_every"):
        bounded_while_loop(lambda x: x < 1, lambda x: x, 0.0, 3, checkpoint_every=0)
    with pytest.raises(TypeError, match="boolean scalar"):
        bounded_while_loop(lambda x: x, lambda x: x, jnp.ones(2), 3)
