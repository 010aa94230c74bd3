"""funcbp.vjp / grad / value_and_grad behave as jax's: signatures, pytrees, errors, composition."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp

KEY = jax.random.key(42)


def _params(key):
    k = jax.random.split(key, 4)
    return {
        "dense_0": {"w": jax.random.normal(k[0], (4, 5)), "b": jax.random.normal(k[1], (5,))},
        "layers": [jax.random.normal(k[2], (5, 3)), None, (jax.random.normal(k[3], (3,)),)],
    }


def _loss(params, x, scale=1.0):
    h = jnp.tanh(x @ params["dense_0"]["w"] + params["dense_0"]["b"])
    h = h @ params["layers"][0] + params["layers"][2][0]
    return scale * jnp.mean(jax.nn.logsumexp(h, axis=-1))


@pytest.mark.parametrize("argnums", [0, 1, (0,), (0, 1), (1, 0), -1])
@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_value_and_grad_matches_jax_on_nested_pytrees(argnums, wrap):
    params = _params(jax.random.fold_in(KEY, 1))
    x = jax.random.normal(jax.random.fold_in(KEY, 2), (6, 4))
    ours = wrap(funcbp.value_and_grad(_loss, argnums=argnums))(params, x, scale=2.0)
    ref = jax.value_and_grad(_loss, argnums=argnums)(params, x, scale=2.0)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    chex.assert_trees_all_close(ours, ref, rtol=2e-6, atol=1e-7)


def test_grad_has_aux_returns_aux_untouched():
    def f(w, x):
        y = jnp.sin(w * x)
        return jnp.sum(y), {"y": y, "n": jnp.int32(3)}

    w, x = jnp.array([0.3, 0.7]), jnp.array([1.0, 2.0])
    ours = funcbp.grad(f, has_aux=True)(w, x)
    ref = jax.grad(f, has_aux=True)(w, x)
    chex.assert_trees_all_close(ours, ref, rtol=1e-6)
    (v1, aux1), g1 = funcbp.value_and_grad(f, has_aux=True)(w, x)
    (v2, aux2), g2 = jax.value_and_grad(f, has_aux=True)(w, x)
    chex.assert_trees_all_close((v1, aux1, g1), (v2, aux2, g2), rtol=1e-6)


def test_vjp_structure_aux_and_multiple_outputs():
    def f(a, b):
        return {"s": jnp.sin(a) * b, "t": (a * 2.0, jnp.sum(b))}, jnp.cos(a)

    a = jax.random.normal(KEY, (3,))
    b = jax.random.normal(jax.random.fold_in(KEY, 1), (3,))
    out, pb, aux = funcbp.vjp(f, a, b, has_aux=True)
    out_ref, pb_ref, aux_ref = jax.vjp(f, a, b, has_aux=True)
    chex.assert_trees_all_close((out, aux), (out_ref, aux_ref))
    ct = jax.tree.map(lambda x: jax.random.normal(KEY, x.shape), out)
    chex.assert_trees_all_close(pb(ct), pb_ref(ct), rtol=1e-6)
    assert isinstance(pb(ct), tuple) and len(pb(ct)) == 2


def test_vjp_pullback_can_be_called_twice_and_is_linear():
    x = jax.random.normal(KEY, (4,))
    _, pb = funcbp.vjp(lambda x: jnp.exp(x) * x, x)
    c1, c2 = jnp.ones(4), jnp.arange(4.0)
    np.testing.assert_allclose(pb(c1 + 2 * c2)[0], pb(c1)[0] + 2 * pb(c2)[0], rtol=1e-5)


def test_integer_and_bool_inputs_as_jax_handles_them():
    f = lambda x, n, flag: jnp.where(flag, x * n, x)
    x, n, flag = jnp.array([1.0, 2.0]), jnp.int32(3), jnp.array([True, False])
    _, pb = funcbp.vjp(f, x, n, flag)
    _, pb_ref = jax.vjp(f, x, n, flag)
    ours, ref = pb(jnp.ones(2)), pb_ref(jnp.ones(2))
    np.testing.assert_allclose(ours[0], ref[0])
    for a, b in zip(ours[1:], ref[1:], strict=True):
        assert a.dtype == jax.dtypes.float0 and a.shape == b.shape
    with pytest.raises(TypeError, match="allow_int"):
        funcbp.grad(lambda n: n * 2.0)(3)
    g = funcbp.grad(lambda x, n: x * n, argnums=(0, 1), allow_int=True)(1.5, 2)
    assert g[1].dtype == jax.dtypes.float0
    np.testing.assert_allclose(g[0], 2.0)


def test_none_leaves_and_unused_inputs_get_zero_gradients():
    f = lambda p: jnp.sum(p["a"] ** 2)
    p = {"a": jnp.ones(3), "b": jnp.arange(2.0), "c": None}
    ours, ref = funcbp.grad(f)(p), jax.grad(f)(p)
    assert ours["c"] is None
    chex.assert_trees_all_close(ours, ref)


@pytest.mark.parametrize("fun,match", [
    (lambda x: x, "scalar-output"),
    (lambda x: (x * 2).astype(jnp.int32).sum(), "real-valued outputs"),
])
def test_grad_output_checks(fun, match):
    with pytest.raises(TypeError, match=match):
        funcbp.grad(fun)(jnp.ones(3))


def test_argnums_out_of_range_and_has_aux_shape_errors():
    with pytest.raises(TypeError, match="argnums"):
        funcbp.grad(lambda x, y: x, argnums=(2,))(1.0)
    with pytest.raises(TypeError, match="pair"):
        funcbp.grad(lambda x: x, has_aux=True)(1.0)


def test_pullback_rejects_wrong_cotangent():
    _, pb = funcbp.vjp(lambda x: x * 2, jnp.ones(2))
    with pytest.raises(ValueError, match="shape|float32"):
        pb(jnp.ones(3))
    with pytest.raises(ValueError, match="tree structure"):
        pb((jnp.ones(2),))


def test_jit_vmap_per_example_gradients_and_x64():
    w = jax.random.normal(KEY, (3,))
    xs = jax.random.normal(jax.random.fold_in(KEY, 1), (5, 3))
    loss = lambda w, x: jnp.tanh(jnp.dot(w, x)) ** 2
    ours = jax.jit(jax.vmap(funcbp.grad(loss), in_axes=(None, 0)))(w, xs)
    ref = jax.vmap(jax.grad(loss), in_axes=(None, 0))(w, xs)
    chex.assert_trees_all_close(ours, ref, rtol=1e-6)
    with jax.enable_x64(True):
        w64 = jnp.asarray(np.asarray(w), jnp.float64)
        g = funcbp.grad(lambda w: jnp.sum(jnp.sin(w) ** 3))(w64)
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, jax.grad(lambda w: jnp.sum(jnp.sin(w) ** 3))(w64),
                                   rtol=1e-13)


def test_jit_does_not_retrace_on_second_call():
    f = chex.assert_max_traces(lambda w: jnp.sum(jnp.sin(w)), n=1)
    g = jax.jit(funcbp.grad(f))
    g(jnp.ones(3))
    g(jnp.zeros(3))


@pytest.mark.parametrize("outer,inner", [
    (funcbp.grad, funcbp.grad), (jax.grad, funcbp.grad), (funcbp.grad, jax.grad)])
def test_second_derivatives(outer, inner):
    f = lambda x: jnp.sum(jax.nn.softplus(x) * jnp.tanh(x) + jax.nn.log_softmax(x) ** 2)
    x = jax.random.normal(KEY, (4,))
    ours = outer(lambda x: jnp.sum(inner(f)(x) ** 2))(x)
    ref = jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_closure_over_outer_differentiated_value():
    # d/dx [ d/dy (x * y^2) at y=3 ] = d/dx (6x) = 6
    f = lambda x: funcbp.grad(lambda y: x * y ** 2)(3.0)
    np.testing.assert_allclose(funcbp.grad(f)(2.0), 6.0)
    np.testing.assert_allclose(jax.grad(f)(2.0), 6.0)


def test_unsupported_primitive_names_itself_where_and_how_to_fix():
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    mystery_p = Primitive("mystery")
    mystery_p.def_impl(lambda x: x)
    mystery_p.def_abstract_eval(lambda x: x)
    mlir.register_lowering(mystery_p, lambda ctx, x: [x])

    def model(x):
        return jnp.sum(mystery_p.bind(jnp.sin(x)))

    with pytest.raises(funcbp.UnsupportedPrimitiveError) as err:
        funcbp.grad(model)(jnp.ones(2))
    msg = str(err.value)
    assert "'mystery'" in msg and "test_api.py" in msg and "vjp_rule" in msg

    # The documented extension point makes it work.
    funcbp.register_vjp_rule(mystery_p, lambda ct, x, **params: (ct,))
    try:
        np.testing.assert_allclose(funcbp.grad(model)(jnp.zeros(2)), jnp.ones(2))
    finally:
        del funcbp.VJP_RULES[mystery_p]


def test_registering_twice_needs_override():
    with pytest.raises(ValueError, match="already registered"):
        funcbp.register_vjp_rule(lax.sin_p, lambda ct, x, **p: (ct,))


def test_no_jax_autodiff_on_the_gradient_path(monkeypatch):
    """funcbp never calls jax.vjp/grad/jvp/linear_transpose while differentiating."""
    f = lambda p, x: jnp.mean(jax.nn.relu(x @ p["w"]) ** 2 + jax.nn.gelu(x @ p["w"]))
    g2 = lambda x: jnp.sum(funcbp.grad(lambda y: jnp.sum(jnp.tanh(y) ** 2 + jax.nn.relu(y)))(x))
    p, x, y = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2)}, jnp.ones((4, 3)), jnp.array([0.5, -0.3])
    ref1, ref2 = jax.grad(f)(p, x), jax.grad(g2)(y)

    def forbidden(*a, **k):
        raise AssertionError("jax autodiff called on funcbp's gradient path")

    for name in ("vjp", "grad", "jvp", "linear_transpose", "value_and_grad", "linearize"):
        monkeypatch.setattr(jax, name, forbidden)
    from jax._src.interpreters import ad
    monkeypatch.setattr(ad, "backward_pass", forbidden)
    monkeypatch.setattr(ad, "linearize_jaxpr", forbidden)
    chex.assert_trees_all_close(funcbp.grad(f)(p, x), ref1, rtol=1e-6)
    chex.assert_trees_all_close(funcbp.grad(g2)(y), ref2, rtol=1e-5)
