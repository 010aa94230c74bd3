"""funcbp.explain: the forward table matches the jaxpr, the backward one matches jax's grads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.explain import explain


def _loss(p, x):
    return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)


def _args():
    p = {"w": jax.random.normal(jax.random.key(0), (3, 2)), "b": jnp.array([0.5, -1.0])}
    return p, jax.random.normal(jax.random.key(1), (4, 3))


def test_forward_table_follows_the_jaxpr_with_values():
    p, x = _args()
    e = explain(_loss, p, x)
    eqns = jax.make_jaxpr(_loss)(p, x).jaxpr.eqns
    assert len(e.forward) == len(eqns)
    for row, eqn in zip(e.forward, eqns, strict=True):
        assert row[1].split(" = ")[1].startswith(eqn.primitive.name)
        assert row[3] == ", ".join(
            f"f32{list(v.aval.shape)}" for v in eqn.outvars)
    # the last value is the loss itself, summarised from an independent numpy computation
    want = np.sum(np.tanh(np.asarray(x) @ np.asarray(p["w"]) + np.asarray(p["b"])) ** 2)
    assert e.forward[-1][4] == f"[{want:.4g}]"
    assert [r[1] for r in e.inputs] == ["args[0]['b']", "args[0]['w']", "args[1]"]


def test_backward_table_runs_in_reverse_and_gradients_match_jax():
    p, x = _args()
    e = explain(_loss, p, x)
    steps = [int(r[0]) for r in e.backward]
    assert steps == sorted(steps, reverse=True) and steps[0] == len(e.forward)
    assert e.backward[0][1] == "reduce_sum (reduce_sum_vjp)"
    assert "tanh (tanh_vjp)" in [r[1] for r in e.backward]
    gp, gx = jax.grad(_loss, argnums=(0, 1))(p, x)
    norms = [float(r[2]) for r in e.gradients]
    np.testing.assert_allclose(
        norms, [np.linalg.norm(gp["b"]), np.linalg.norm(gp["w"]), np.linalg.norm(gx)], rtol=1e-3)
    # the cotangent arriving at the loss is 1
    assert e.backward[0][2].endswith("|1|")


def test_explicit_cotangent_and_non_scalar_output():
    x = jnp.arange(3.0)
    e = explain(lambda x: x * x, x, cotangent=jnp.array([1.0, 0.0, 2.0]))
    assert e.gradients[0][3] == "[0, 0, 8]"  # 2 x ct


def test_text_and_markdown_rendering():
    p, x = _args()
    e = explain(_loss, p, x)
    text = str(e)
    for title in ("forward pass", "backward pass", "gradients"):
        assert title in text
    lines = [ln for ln in text.splitlines() if ln.startswith("step")]
    assert len(lines) == 2  # the two table headers
    md = e.to_markdown()
    assert md.startswith("## explain(_loss)")
    assert "| step | equation | inputs | output | values |" in md
    assert "|---|---|---|---|---|" in md
