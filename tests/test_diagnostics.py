"""Gradient-flow diagnostics: norms against jax, the vanishing gradient and its cure, tags."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcbp
from funcbp.autodiff.tag import recording, tag
from funcbp.diagnostics import gradient_flow, plot_gradient_flow

WRAPS = {"eager": lambda g: g, "jit": lambda g: jax.jit(g, static_argnums=0)}
SIZES = (16,) + (32,) * 9 + (1,)  # ten dense layers


def _init(key, scale):
    keys = jax.random.split(key, len(SIZES) - 1)
    return {f"dense_{i}": {"w": jax.random.normal(k, (a, b)) * scale(a), "b": jnp.zeros(b)}
            for i, (k, a, b) in enumerate(zip(keys, SIZES[:-1], SIZES[1:], strict=True))}


def _mlp(act):
    def loss(p, x, y):
        h = x
        for i in range(len(p)):
            h = tag(h, f"act_{i}") if i else h
            h = h @ p[f"dense_{i}"]["w"] + p[f"dense_{i}"]["b"]
            if i < len(p) - 1:
                h = act(h)
        return jnp.mean((h - y) ** 2)
    return loss


def _batch():
    return (jax.random.normal(jax.random.key(1), (64, 16)),
            jax.random.normal(jax.random.key(2), (64, 1)))


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_sigmoid_mlp_vanishes_and_relu_he_does_not(wrap):
    x, y = _batch()
    sig = WRAPS[wrap](gradient_flow)(_mlp(jax.nn.sigmoid),
                                     _init(jax.random.key(0), lambda n: 1 / np.sqrt(n)), x, y)
    relu = WRAPS[wrap](gradient_flow)(_mlp(jax.nn.relu),
                                      _init(jax.random.key(0), lambda n: np.sqrt(2 / n)), x, y)
    assert sig.layer_order == tuple(f"dense_{i}" for i in range(10))  # dense_2 before dense_10
    r_sig, r_relu = sig.ratios(), relu.ratios()
    # sigmoid: each layer multiplies the gradient by at most sigmoid' <= 1/4
    assert r_sig["dense_0"] < 1e-4
    assert all(r_sig[f"dense_{i}"] < r_sig[f"dense_{i + 1}"] for i in range(9))
    assert "dense_0" in sig.vanishing_layers and "dense_9" not in sig.vanishing_layers
    assert sig.exploding_layers == []
    # ReLU with He initialisation keeps every layer within an order of magnitude
    assert all(0.1 < r < 10 for r in r_relu.values()), r_relu
    assert relu.vanishing_layers == [] and relu.exploding_layers == []
    # the same picture at the tagged activations
    assert float(sig.tags["act_1"]) < 1e-3 * float(sig.tags["act_9"])
    assert 0.1 < float(relu.tags["act_1"]) / float(relu.tags["act_9"]) < 10


def test_norms_match_jax_grad_and_jax_cotangents():
    x, y = _batch()
    p = _init(jax.random.key(3), lambda n: 1 / np.sqrt(n))
    loss = _mlp(jnp.tanh)
    flow = gradient_flow(loss, p, x, y)
    ref = jax.grad(loss)(p, x, y)
    for name, g in ref.items():
        want = np.sqrt(sum(np.sum(np.square(v)) for v in g.values()))
        np.testing.assert_allclose(flow.layers[name], want, rtol=1e-5)
        np.testing.assert_allclose(flow.leaves[f"['{name}']['w']"], np.linalg.norm(g["w"]),
                                   rtol=1e-5)
    # the cotangent at act_5 = d loss / d (input of dense_5), from jax on the tail of the net
    h = x
    for i in range(5):
        h = jnp.tanh(h @ p[f"dense_{i}"]["w"] + p[f"dense_{i}"]["b"])

    def tail(h):
        for i in range(5, 10):
            h = h @ p[f"dense_{i}"]["w"] + p[f"dense_{i}"]["b"]
            h = jnp.tanh(h) if i < 9 else h
        return jnp.mean((h - y) ** 2)

    np.testing.assert_allclose(flow.tags["act_5"], np.linalg.norm(jax.grad(tail)(h)), rtol=1e-5)
    assert flow.tag_order == tuple(f"act_{i}" for i in range(1, 10))
    np.testing.assert_allclose(flow.loss, loss(p, x, y), rtol=1e-6)


def test_exploding_and_non_finite_gradients_are_flagged():
    p = {"dense_0": {"w": jnp.ones(3)}, "dense_1": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(3)}}

    def loss(p):
        return (1e5 * jnp.sum(p["dense_0"]["w"]) + jnp.sum(jnp.sqrt(p["dense_1"]["w"] - 1.0))
                + jnp.sum(p["head"]["w"]))

    flow = gradient_flow(loss, p, order=["dense_0", "dense_1", "head"])
    assert flow.exploding_layers == ["dense_0", "dense_1"]  # 1e5 times the head's; inf
    assert flow.vanishing_layers == []
    assert "EXPLODING" in str(flow)


def test_layer_order_is_natural_or_given():
    p = {f"dense_{i}": jnp.full((2,), float(i + 1)) for i in (0, 1, 2, 10, 11)}
    flow = gradient_flow(lambda p: sum(jnp.sum(v ** 2) for v in p.values()), p)
    assert flow.layer_order == ("dense_0", "dense_1", "dense_2", "dense_10", "dense_11")
    with pytest.raises(ValueError, match="every top-level key"):
        gradient_flow(lambda p: sum(jnp.sum(v) for v in p.values()), p, order=["dense_0"])


def test_tag_is_the_identity_everywhere():
    def f(x):
        return jnp.sum(jnp.sin(tag(x * 2.0, "h")) ** 2)

    def ref(x):
        return jnp.sum(jnp.sin(x * 2.0) ** 2)

    x = jax.random.normal(jax.random.key(4), (3, 4))
    np.testing.assert_allclose(f(x), ref(x))
    np.testing.assert_allclose(jax.grad(f)(x), jax.grad(ref)(x), rtol=1e-6)
    np.testing.assert_allclose(funcbp.grad(f)(x), jax.grad(ref)(x), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(funcbp.grad(f))(x), jax.grad(ref)(x), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(x), jax.vmap(ref)(x), rtol=1e-6)
    np.testing.assert_allclose(funcbp.grad(funcbp.grad(lambda s: f(x * s)))(1.0),
                               jax.grad(jax.grad(lambda s: ref(x * s)))(1.0), rtol=1e-5)
    np.testing.assert_allclose(jax.linear_transpose(lambda v: tag(v, "t") * 3.0, x)(x)[0], 3 * x)
    with pytest.raises(TypeError, match="non-empty string"):
        tag(x, "")


def test_tags_inside_loop_bodies_are_skipped_not_leaked():
    def loss(w):
        def step(c, _):
            return tag(jnp.tanh(c * w), "inner"), None
        c, _ = jax.lax.scan(step, jnp.ones(3), None, length=3)
        return jnp.sum(tag(c, "outer"))

    with recording() as rec:
        g = funcbp.grad(loss)(jnp.full(3, 0.5))
    np.testing.assert_allclose(g, jax.grad(loss)(jnp.full(3, 0.5)), rtol=1e-5)
    assert set(rec.norms) == {"outer"}
    assert float(rec.norms["outer"]) == pytest.approx(np.sqrt(3.0))


def test_plot_and_log_history(tmp_path):
    x, y = _batch()
    history = [gradient_flow(_mlp(jax.nn.sigmoid), _init(jax.random.key(k), lambda n: n ** -0.5),
                             x, y) for k in range(3)]
    logged = [h.to_dict() for h in history]
    assert list(logged[0]["layers"]) == [f"dense_{i}" for i in range(10)]
    assert "dense_0" in logged[0]["vanishing"]
    out = plot_gradient_flow(logged, str(tmp_path / "flow.png"))
    with open(out, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="non-empty"):
        plot_gradient_flow([], str(tmp_path / "empty.png"))
