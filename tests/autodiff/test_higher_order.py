"""Higher order: gradients of funcbp's gradients, by funcbp and by jax, against jax.

Every rule's backward is written with primitives that have rules themselves, so second
derivatives of networks (tanh, sigmoid, softplus, log-softmax) must equal ``jax.hessian``.
Float64 throughout, so the tolerances can be tight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp

ACTIVATIONS = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "log_softmax": lambda h: jax.nn.log_softmax(h, axis=-1),
}


def _net(act):
    """Two-layer network with a cross-entropy-like scalar output; params as a dict."""
    def loss(params, x):
        h = act(x @ params["w1"] + params["b1"])
        logits = h @ params["w2"]
        return -jnp.mean(jax.nn.log_softmax(logits)[:, 0]) + 0.1 * jnp.sum(h ** 2)
    return loss


def _params(seed):
    k = jax.random.split(jax.random.key(seed), 4)
    return ({"w1": jax.random.normal(k[0], (3, 4), jnp.float64),
             "b1": jax.random.normal(k[1], (4,), jnp.float64),
             "w2": jax.random.normal(k[2], (4, 3), jnp.float64)},
            jax.random.normal(k[3], (5, 3), jnp.float64))


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-11), a, b)


def _flat(params):
    leaves = jax.tree.leaves(params)
    return jnp.concatenate([x.ravel() for x in leaves]), lambda v: jax.tree.unflatten(
        jax.tree.structure(params), [v[s:s + x.size].reshape(x.shape) for s, x in
                                     zip(np.cumsum([0] + [x.size for x in leaves]), leaves)])


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.slow
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_hessian_of_network_matches_jax(act):
    """Full Hessian over all parameters: funcbp over funcbp, jax over funcbp, funcbp over jax."""
    params, x = _params(abs(hash(act)) % 1000)
    flat, unflat = _flat(params)
    loss = _net(ACTIVATIONS[act])

    def f(v):
        return loss(unflat(v), x)

    ref = jax.hessian(f)(flat)
    n = flat.size

    def jac_by_rows(grad_of, outer_vjp):
        g = grad_of(f)
        _, pullback = outer_vjp(g, flat)
        return jax.vmap(lambda e: pullback(e)[0])(jnp.eye(n, dtype=flat.dtype))

    _close(jax.jit(lambda: jac_by_rows(funcbp.grad, funcbp.vjp))(), ref)
    _close(jax.jit(lambda: jac_by_rows(funcbp.grad, jax.vjp))(), ref)
    _close(jax.jit(lambda: jac_by_rows(jax.grad, funcbp.vjp))(), ref)


@pytest.mark.parametrize("wrap", ["eager", "jit"])
def test_grad_of_grad_scalar(wrap):
    """d2/dx2 of a scalar function mixing the transcendental rules."""
    def f(x):
        return jnp.sin(x) * jnp.exp(-x * x) + jnp.log1p(x * x) * jnp.tanh(x)

    w = jax.jit if wrap == "jit" else (lambda g: g)
    xs = jax.random.normal(jax.random.key(1), (3,), jnp.float64)
    for x in xs:
        ref = jax.grad(jax.grad(f))(x)
        _close(w(funcbp.grad(funcbp.grad(f)))(x), ref)
        _close(w(jax.grad(funcbp.grad(f)))(x), ref)
        _close(w(funcbp.grad(jax.grad(f)))(x), ref)


def test_third_order():
    def f(x):
        return jnp.sum(jax.nn.softplus(x) * jnp.tanh(x))

    x = jax.random.normal(jax.random.key(2), (), jnp.float64)
    ref = jax.grad(jax.grad(jax.grad(f)))(x)
    _close(funcbp.grad(funcbp.grad(funcbp.grad(f)))(x), ref)


@pytest.mark.parametrize("act", ["tanh", "log_softmax"])
def test_hessian_vector_product(act):
    """HVP as the gradient of <grad f, v>, for a pytree of parameters."""
    params, x = _params(7)
    v, _ = _params(8)
    loss = _net(ACTIVATIONS[act])

    def hvp(grad):
        def gv(p):
            g = grad(loss)(p, x)
            return sum(jnp.vdot(g[k], v[k]) for k in g)
        return grad(gv)

    ref = jax.jvp(lambda p: jax.grad(loss)(p, x), (params,), (v,))[1]
    _close(jax.jit(hvp(funcbp.grad))(params), ref)


def _jacrev(vjp, f):
    """jax.jacrev built from a vjp: one pullback per output basis vector, vmapped."""
    def jac(x):
        y, pullback = vjp(f, x)
        basis = jnp.eye(y.size, dtype=y.dtype).reshape((y.size, *y.shape))
        rows = jax.vmap(lambda e: pullback(e)[0])(basis)
        return rows.reshape((*y.shape, *x.shape))
    return jac


@pytest.mark.parametrize("wrap", ["eager", "jit"])
def test_jacrev_from_vjp(wrap):
    w = jax.random.normal(jax.random.key(3), (4, 3), jnp.float64)

    def f(x):
        return jax.nn.log_softmax(jnp.tanh(x @ w), axis=-1)

    x = jax.random.normal(jax.random.key(4), (2, 4), jnp.float64)
    wrap_fn = jax.jit if wrap == "jit" else (lambda g: g)
    _close(wrap_fn(_jacrev(funcbp.vjp, f))(x), jax.jacrev(f)(x))
    # and the Jacobian of a gradient (a Hessian) from two funcbp vjps
    g = funcbp.grad(lambda x: jnp.sum(f(x) ** 2))
    _close(wrap_fn(_jacrev(funcbp.vjp, g))(x), jax.hessian(lambda x: jnp.sum(f(x) ** 2))(x))


def test_hessian_through_scan_and_cond():
    """Second derivatives through the control-flow rules (an RNN with a gated step)."""
    def f(w, xs):
        def cell(h, x):
            h = jnp.tanh(h * w + x)
            h = lax.cond(x[0] > 0, jax.nn.softplus, jax.nn.sigmoid, h)
            return h, jnp.sum(h)
        h, s = lax.scan(cell, jnp.ones(3, xs.dtype), xs)
        return jnp.sum(h ** 2) + jnp.sum(s)

    w = jax.random.normal(jax.random.key(5), (3,), jnp.float64)
    xs = jax.random.normal(jax.random.key(6), (6, 3), jnp.float64)
    ref = jax.hessian(f)(w, xs)
    grad_w = funcbp.grad(f)
    _close(jax.jit(_jacrev(funcbp.vjp, lambda w: grad_w(w, xs)))(w), ref)
    _close(jax.jit(jax.jacrev(lambda w: grad_w(w, xs)))(w), ref)
