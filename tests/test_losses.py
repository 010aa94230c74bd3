"""funcbp.losses against optax and hand formulas; stability at +-1e4; gradients vs jax.grad."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcbp
from funcbp import losses

B, C = 6, 5


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(shape, seed=0, scale=1.0, dtype=jnp.float32):
    return jnp.asarray(scale * _rng(seed).standard_normal(shape), dtype)


def _soft_labels(seed=1):
    p = _rng(seed).random((B, C))
    return jnp.asarray(p / p.sum(-1, keepdims=True), jnp.float32)


def _int_labels(seed=1):
    return jnp.asarray(_rng(seed).integers(0, C, B), jnp.int32)


def _bits(shape, seed=1):
    return jnp.asarray(_rng(seed).integers(0, 2, shape), jnp.float32)


def _probs(shape, seed=0):
    return jnp.asarray(_rng(seed).uniform(0.01, 0.99, shape), jnp.float32)


# name: (our loss, optax reference per example, args factory)
CASES = {
    "mse": (losses.mse, lambda p, t: jnp.mean(optax.squared_error(p, t), axis=-1),
            lambda: (_normal((B, 3)), _normal((B, 3), 1))),
    "mse_1d": (losses.mse, optax.squared_error, lambda: (_normal((B,)), _normal((B,), 1))),
    "sigmoid_bce": (losses.sigmoid_binary_cross_entropy,
                    lambda x, y: jnp.mean(optax.sigmoid_binary_cross_entropy(x, y), axis=-1),
                    lambda: (_normal((B, 3), scale=3.0), _bits((B, 3)))),
    "sigmoid_bce_soft_targets": (losses.sigmoid_binary_cross_entropy,
                                 optax.sigmoid_binary_cross_entropy,
                                 lambda: (_normal((B,), scale=3.0), _probs((B,), 2))),
    "bce_probs": (losses.binary_cross_entropy,
                  lambda p, y: jnp.mean(optax.sigmoid_binary_cross_entropy(
                      jnp.log(p) - jnp.log1p(-p), y), axis=-1),
                  lambda: (_probs((B, 2)), _bits((B, 2)))),
    "softmax_ce_soft": (losses.softmax_cross_entropy, optax.softmax_cross_entropy,
                        lambda: (_normal((B, C), scale=2.0), _soft_labels())),
    "softmax_ce_onehot": (losses.softmax_cross_entropy, optax.softmax_cross_entropy,
                          lambda: (_normal((B, C), scale=2.0),
                                   jax.nn.one_hot(_int_labels(), C))),
    "softmax_ce_int": (losses.softmax_cross_entropy_with_integer_labels,
                       optax.softmax_cross_entropy_with_integer_labels,
                       lambda: (_normal((B, C), scale=2.0), _int_labels())),
    "softmax_ce_int_3d": (losses.softmax_cross_entropy_with_integer_labels,
                          optax.softmax_cross_entropy_with_integer_labels,
                          lambda: (_normal((B, 2, C)),
                                   jnp.asarray(_rng(3).integers(0, C, (B, 2)), jnp.int32))),
    "hinge": (losses.hinge, optax.hinge_loss,
              lambda: (_normal((B,), scale=2.0), 2 * _bits((B,)) - 1)),
}


@pytest.mark.parametrize("reduction, wrap", [("mean", lambda f: f), ("sum", jax.jit),
                                             ("none", lambda f: f)],
                         ids=["mean-eager", "sum-jit", "none-eager"])
@pytest.mark.parametrize("name", list(CASES))
def test_loss_matches_optax(name, reduction, wrap):
    ours, ref_fn, make = CASES[name]
    a, b = make()
    per_example = ref_fn(a, b)
    expected = {"mean": jnp.mean(per_example), "sum": jnp.sum(per_example),
                "none": per_example}[reduction]
    got = wrap(lambda a, b: ours(a, b, reduction=reduction))(a, b)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-6)


def test_bce_probs_matches_formula_and_clips():
    p, y = _probs((B,)), _bits((B,))
    pn, yn = np.asarray(p, np.float64), np.asarray(y, np.float64)
    ref = -np.mean(yn * np.log(pn) + (1 - yn) * np.log(1 - pn))
    np.testing.assert_allclose(losses.binary_cross_entropy(p, y), ref, rtol=1e-5)
    edge = losses.binary_cross_entropy(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]),
                                       reduction="none")
    assert np.isfinite(edge).all() and (np.asarray(edge) > 15.0).all()   # ~ -log(1e-7)
    g = funcbp.grad(lambda p: losses.binary_cross_entropy(p, jnp.array([1.0, 0.0])))(
        jnp.array([0.0, 1.0]))
    np.testing.assert_array_equal(g, np.zeros(2))   # clipped: finite, no gradient


def test_smooth_labels_matches_optax():
    y = jax.nn.one_hot(_int_labels(), C)
    np.testing.assert_allclose(losses.smooth_labels(y, 0.1), optax.smooth_labels(y, 0.1),
                               rtol=1e-7)
    np.testing.assert_allclose(losses.smooth_labels(y, 0.1).sum(-1), np.ones(B), rtol=1e-6)


def _params():
    return {"dense_0": {"w": _normal((3, 4)), "b": _normal((4,), 1)},
            "conv2d_0": {"w": _normal((2, 2, 1, 3), 2), "b": _normal((3,), 3)},
            "batchnorm_0": {"scale": _normal((3,), 4), "bias": _normal((3,), 5)}}


def test_penalties_match_optax_and_numpy():
    params = _params()
    leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(params)]
    optax_l2 = sum(jnp.sum(optax.l2_loss(leaf)) for leaf in jax.tree.leaves(params))
    np.testing.assert_allclose(losses.l2_penalty(params), optax_l2, rtol=1e-6)
    np.testing.assert_allclose(losses.l1_penalty(params),
                               sum(np.abs(w).sum() for w in leaves), rtol=1e-6)
    weights = [np.asarray(params["dense_0"]["w"]), np.asarray(params["conv2d_0"]["w"])]
    np.testing.assert_allclose(losses.l2_penalty(params, mask=losses.default_weight_mask),
                               sum(0.5 * (w.astype(np.float64) ** 2).sum() for w in weights),
                               rtol=1e-6)
    mask = losses.default_weight_mask(params)
    assert mask["dense_0"] == {"w": True, "b": False}
    assert mask["batchnorm_0"] == {"scale": False, "bias": False}
    np.testing.assert_allclose(losses.l1_penalty(params, mask=mask),
                               sum(np.abs(w).astype(np.float64).sum() for w in weights),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="same tree structure"):
        losses.l2_penalty(params, mask={"dense_0": True})


def test_accuracy_and_top_k_against_numpy():
    logits, labels = _normal((50, C), 4), jnp.asarray(_rng(5).integers(0, C, 50), jnp.int32)
    ln, yn = np.asarray(logits), np.asarray(labels)
    np.testing.assert_allclose(losses.accuracy(logits, labels), np.mean(ln.argmax(-1) == yn))
    np.testing.assert_allclose(losses.accuracy(logits, jax.nn.one_hot(labels, C)),
                               np.mean(ln.argmax(-1) == yn))
    order = np.argsort(-ln, axis=-1)
    for k in range(1, C + 1):
        expected = np.mean([yn[i] in order[i, :k] for i in range(50)])
        np.testing.assert_allclose(jax.jit(losses.top_k_accuracy, static_argnums=2)(
            logits, labels, k), expected)
    np.testing.assert_allclose(losses.top_k_accuracy(logits, labels, 1),
                               losses.accuracy(logits, labels))
    with pytest.raises(ValueError, match="k must be"):
        losses.top_k_accuracy(logits, labels, C + 1)


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"predictions has shape \(6, 3\).*\(6,\)"):
        losses.mse(_normal((B, 3)), _normal((B,)))
    with pytest.raises(TypeError, match="integers"):
        losses.softmax_cross_entropy_with_integer_labels(_normal((B, C)), _soft_labels())
    with pytest.raises(ValueError, match="reduction"):
        losses.mse(_normal((B,)), _normal((B,)), reduction="avg")


# ------------------------------------------------------------------ stability at +-1e4

BIG = jnp.array([[1e4, -1e4, 0.0, 3.0, -1e4], [-1e4, -1e4, -1e4, -1e4, 1e4]])
STABLE = {
    # name: (loss of logits, labels)
    "sigmoid_bce": (losses.sigmoid_binary_cross_entropy,
                    jnp.array([[1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0, 0.0]])),
    "softmax_ce_soft": (losses.softmax_cross_entropy,
                        jnp.array([[0.0, 0.5, 0.0, 0.5, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])),
    "softmax_ce_int": (losses.softmax_cross_entropy_with_integer_labels, jnp.array([1, 0])),
    "bce_sigmoid_probs": (lambda x, y: losses.binary_cross_entropy(jax.nn.sigmoid(x), y),
                          jnp.array([[1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0, 0.0]])),
    "hinge": (losses.hinge, jnp.sign(BIG) + (BIG == 0)),
}


@pytest.mark.parametrize("name", list(STABLE))
def test_large_logits_finite_values_and_gradients(name):
    fn, labels = STABLE[name]
    value, g = funcbp.value_and_grad(lambda x: fn(x, labels))(BIG)
    ref_value, ref_g = jax.value_and_grad(lambda x: fn(x, labels))(BIG)
    assert jnp.isfinite(value) and jnp.isfinite(g).all()
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(g, ref_g, rtol=1e-6, atol=1e-7)
    if name in ("softmax_ce_soft", "softmax_ce_int", "sigmoid_bce"):   # match optax too
        ref = {"sigmoid_bce": lambda x, y: jnp.mean(optax.sigmoid_binary_cross_entropy(x, y)),
               "softmax_ce_soft": lambda x, y: jnp.mean(optax.softmax_cross_entropy(x, y)),
               "softmax_ce_int": lambda x, y: jnp.mean(
                   optax.softmax_cross_entropy_with_integer_labels(x, y))}[name]
        np.testing.assert_allclose(value, ref(BIG, labels), rtol=1e-6)
        np.testing.assert_allclose(g, jax.grad(ref)(BIG, labels), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- gradients vs jax.grad

GRAD_CASES = {
    **{name: (fn, make) for name, (fn, _, make) in CASES.items()},
    "smooth_then_ce": (lambda x, y: losses.softmax_cross_entropy(x, losses.smooth_labels(y, 0.1)),
                       CASES["softmax_ce_onehot"][2]),
    "l1": (lambda p, _: losses.l1_penalty(p), lambda: (_params(), None)),
    "l2_masked": (lambda p, _: losses.l2_penalty(p, mask=losses.default_weight_mask),
                  lambda: (_params(), None)),
}


VARIANTS = {"float32-eager": ("float32", lambda f: f), "float32-jit": ("float32", jax.jit),
            "float64-jit": ("float64", jax.jit)}


EAGER = {"mse", "sigmoid_bce", "bce_probs", "softmax_ce_soft", "softmax_ce_int", "hinge",
         "l2_masked"}


@pytest.mark.parametrize("name, variant", [(n, v) for n in GRAD_CASES for v in VARIANTS
                                           if n in EAGER or not v.endswith("eager")])
def test_loss_grad_matches_jax(name, variant):
    fn, make = GRAD_CASES[name]
    dtype, wrap = VARIANTS[variant]
    with jax.enable_x64(dtype == "float64"):
        a, b = make()
        cast = lambda t: jax.tree.map(lambda v: v.astype(dtype) if jnp.issubdtype(
            v.dtype, jnp.floating) else v, t)
        a, b = cast(a), cast(b)
        argnums = (0, 1) if b is not None and jnp.issubdtype(b.dtype, jnp.floating) else 0
        ours = wrap(funcbp.grad(fn, argnums))(a, b)
        ref = wrap(jax.grad(fn, argnums))(a, b)
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-10,
                                                                         atol=1e-12)
        chex.assert_trees_all_close(ours, ref, **tol)


# ------------------------------------------------------- labels outside [0, classes)

LABEL_FNS = {
    "softmax_ce_int": losses.softmax_cross_entropy_with_integer_labels,
    "accuracy": losses.accuracy,
    "top_2_accuracy": lambda x, y: losses.top_k_accuracy(x, y, 2),
}


@pytest.mark.parametrize("bad", [C, -1, 7], ids=["classes", "minus_one", "far"])
@pytest.mark.parametrize("name", list(LABEL_FNS))
def test_out_of_range_labels_are_refused_eagerly_and_nan_under_jit(name, bad):
    fn = LABEL_FNS[name]
    logits, labels = _normal((B, C)), _int_labels().at[2].set(bad).at[4].set(bad)
    with pytest.raises(losses.LabelRangeError,
                       match=rf"2 of {B} labels are outside \[0, {C}\).*labels must be 0..4"):
        fn(logits, labels)
    # Under jit the labels cannot be seen: NaN, which no finite check lets through (optax
    # gives NaN only for labels >= classes, a number for -1; funcbp never gives a number).
    assert np.isnan(jax.jit(fn)(logits, labels))
    assert int(jax.jit(losses.count_bad_labels, static_argnums=1)(labels, C)) == 2
    # The valid examples keep their values, and their gradients stay finite.
    if name == "softmax_ce_int":
        per = jax.jit(lambda x, y: fn(x, y, reduction="none"))(logits, labels)
        ref = optax.softmax_cross_entropy_with_integer_labels(logits, _int_labels())
        keep = np.arange(B) % 2 == 1
        np.testing.assert_allclose(np.asarray(per)[keep], np.asarray(ref)[keep], rtol=1e-6)
        g = jax.jit(funcbp.grad(lambda x, y: jnp.sum(jnp.where(jnp.isnan(
            fn(x, y, reduction="none")), 0.0, fn(x, y, reduction="none")))))(logits, labels)
        assert np.isfinite(np.asarray(g)).all()


def test_label_checks_leave_float_labels_alone():
    assert int(losses.count_bad_labels(jnp.array([0.5, 12.0]), 3)) == 0
    losses.check_labels(jnp.array([0.5, 12.0]), 3)
    onehot = jax.nn.one_hot(_int_labels(), C)
    assert np.isfinite(float(jax.jit(losses.accuracy)(_normal((B, C)), onehot)))
