"""make_train_step / make_eval_step: funcbp's gradients against jax.value_and_grad, guards."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcbp
from funcbp import data, losses, nn, optim
from funcbp.train import evaluate, make_eval_step, make_train_step

XENT = losses.softmax_cross_entropy_with_integer_labels


def small_cnn():
    return nn.serial(
        nn.Conv2D(4, 3), nn.relu, nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense(16), nn.relu, nn.Dropout(0.2), nn.Dense(10),
    )


def small_mlp():
    return nn.serial(nn.Flatten(), nn.Dense(32), nn.tanh, nn.Dropout(0.1), nn.Dense(10))


# (model, optimiser, step options): each row runs 20 steps with both gradient implementations.
CASES = {
    "mlp-sgd-l2": (small_mlp, lambda: optim.sgd(0.1, momentum=0.9, nesterov=True),
                   {"l2": 1e-3}),
    "mlp-adam-l1-clip": (small_mlp,
                         lambda: optim.chain(optim.clip_by_global_norm(0.5), optim.adam(1e-2)),
                         {"l1": 1e-4}),
    "cnn-sgd-shift": (small_cnn,
                      lambda: optax.chain(optax.clip(0.5), optax.sgd(0.05, momentum=0.9)),
                      {"augment_fn": lambda k, x: data.random_shift(k, x, 1), "l2": 5e-4}),
}


def _batches(n_steps, batch=16):
    keys = jax.random.split(jax.random.key(7), 2)
    x = jax.random.uniform(keys[0], (n_steps, batch, 8, 8, 1))
    y = jax.random.randint(keys[1], (n_steps, batch), 0, 10)
    return x, y


def _run(make_model, make_tx, options, grad_fn, n_steps=20):
    model, tx = make_model(), make_tx()
    _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
    opt_state = tx.init(params)
    step = make_train_step(model.apply, XENT, tx, grad_fn, **options)
    xs, ys = _batches(n_steps)
    history = []
    for i in range(n_steps):
        params, opt_state, m = step(params, opt_state, (xs[i], ys[i]), jax.random.key(100 + i))
        history.append(jax.device_get({k: m[k] for k in ("loss", "objective", "grad_norm")}))
    return params, opt_state, history, step


@pytest.mark.parametrize("case", sorted(CASES))
def test_funcbp_step_matches_jax_step_for_20_steps(case):
    make_model, make_tx, options = CASES[case]
    ours = _run(make_model, make_tx, options, funcbp.value_and_grad)
    ref = _run(make_model, make_tx, options, jax.value_and_grad)
    # Same forward pass, gradients equal up to float32 summation order, 20 steps of drift.
    chex.assert_trees_all_close(ours[0], ref[0], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(ours[1], ref[1], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(ours[2], ref[2], rtol=1e-5, atol=1e-6)
    # The reference is not trivially equal to the start: the parameters did move.
    _, start = make_model().init(jax.random.key(0), (1, 8, 8, 1))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref[0], start)
    assert max(jax.tree.leaves(moved)) > 1e-3
    # One compilation for the 20 steps, and the donated inputs were consumed.
    params, opt_state, _, step = ours
    assert step._cache_size() == 1
    xs, ys = _batches(1)
    step(params, opt_state, (xs[0], ys[0]), jax.random.key(0))
    assert step._cache_size() == 1
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves((params, opt_state)))


def test_metrics_match_an_independent_computation():
    model = small_mlp()
    _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
    tx = optax.sgd(0.1)
    xs, ys = _batches(1)
    x, y = xs[0], ys[0]
    key = jax.random.key(3)
    logits = model.apply(params, x, key=jax.random.split(key)[1], train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    acc = np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(y))
    _, grads = jax.value_and_grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, x, key=jax.random.split(key)[1], train=True), y).mean())(params)
    norm = optax.tree.norm(grads)
    step = make_train_step(model.apply, XENT, tx)
    new_params, _, m = step(jax.tree.map(jnp.copy, params), tx.init(params), (x, y), key)
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(m["objective"], loss, rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"], acc)
    np.testing.assert_allclose(m["grad_norm"], norm, rtol=1e-5)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    chex.assert_trees_all_close(new_params, expected, rtol=1e-5, atol=1e-7)
    assert bool(m["finite"]) and not any(jax.tree.leaves(m["nonfinite"]))


def _sqrt_model():
    """logits = x @ w + sqrt(v): at v == 0 the loss is finite but d/dv is inf."""
    def apply(params, x, *, key=None, train=False):
        return x.reshape(x.shape[0], -1) @ params["a"]["w"] + jnp.sqrt(params["b"]["v"])
    return apply


@pytest.mark.parametrize("wrap", [False, True], ids=["eager", "jit"])
def test_nonfinite_gradient_skips_the_update_and_names_the_leaf(wrap):
    apply = _sqrt_model()
    params = {"a": {"w": jnp.full((64, 10), 0.01)}, "b": {"v": jnp.array([1.0] * 9 + [0.0])}}
    tx = optim.sgd(0.1, momentum=0.9)
    opt_state = tx.init(params)
    before = jax.device_get((params, opt_state))
    step = make_train_step(apply, XENT, tx, jit=wrap)
    xs, ys = _batches(1)
    new_params, new_state, m = step(params, opt_state, (xs[0], ys[0]), jax.random.key(0))
    assert np.isfinite(m["loss"]) and not bool(m["finite"])
    assert jax.device_get(m["nonfinite"]) == {"a": {"w": False}, "b": {"v": True}}
    chex.assert_trees_all_equal(jax.device_get((new_params, new_state)), before)


def test_stateful_model_is_refused():
    model = nn.serial(nn.Dense(3), nn.BatchNorm())
    with pytest.raises(ValueError, match="BatchNorm"):
        make_train_step(model, XENT, optim.sgd(0.1))


@pytest.mark.parametrize("batch_size", [7, 50, 1000])
def test_evaluate_in_batches_equals_one_pass(batch_size):
    model = small_mlp()
    _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
    x = jax.random.uniform(jax.random.key(1), (50, 8, 8, 1))
    y = jax.random.randint(jax.random.key(2), (50,), 0, 10)
    logits = model.apply(params, x)
    result = evaluate(make_eval_step(model.apply, XENT), params, x, y, batch_size)
    np.testing.assert_allclose(
        result["loss"], optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
        rtol=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == np.asarray(y)))


@pytest.mark.parametrize("wrap", [False, True], ids=["eager", "jit"])
def test_out_of_range_labels_are_counted_and_skip_the_update(wrap):
    model = small_mlp()
    _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
    tx = optim.sgd(0.1)
    opt_state = tx.init(params)
    before = jax.device_get((params, opt_state))
    xs, ys = _batches(1)
    y = ys[0].at[3].set(10).at[5].set(-1)             # 1-based or sentinel labels
    step = make_train_step(model.apply, XENT, tx, jit=wrap)
    ev = make_eval_step(model.apply, XENT, jit=wrap)
    if not wrap:                                       # eager: a direct error
        with pytest.raises(losses.LabelRangeError, match=r"2 of 16 labels .* \[0, 10\)"):
            step(params, opt_state, (xs[0], y), jax.random.key(0))
        with pytest.raises(losses.LabelRangeError, match="2 of 16"):
            ev(params, (xs[0], y))
        return
    new_params, new_state, m = step(params, opt_state, (xs[0], y), jax.random.key(0))
    assert int(m["bad_labels"]) == 2 and not bool(m["finite"])
    chex.assert_trees_all_equal(jax.device_get((new_params, new_state)), before)
    assert int(ev(before[0], (xs[0], y))["bad_labels"]) == 2
    with pytest.raises(losses.LabelRangeError, match=r"2 of 16 labels .*batch 1 \(examples 0-15\)"):
        evaluate(ev, before[0], xs[0], y, batch_size=16)
