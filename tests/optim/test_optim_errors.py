"""Bad input to funcbp.optim gets a clear error that names the value or the leaf."""

from __future__ import annotations

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import optim

PARAMS = {"dense_0": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, "out": [jnp.ones(3)]}


@pytest.mark.parametrize("lr", [-0.1, float("nan"), -1, np.float32(-0.5), jnp.array(-0.01)])
@pytest.mark.parametrize(
    "make",
    [
        optim.sgd,
        optim.adam,
        optim.scale_by_learning_rate,
        optim.torch_sgd,
        optim.momentum,
        optim.nesterov,
        optim.adamw,
        optim.lion,
        optim.rmsprop,
        optim.adagrad,
        optim.adafactor,
    ],
    ids=lambda f: f.__name__,
)
def test_bad_learning_rate(make, lr):
    with pytest.raises(ValueError, match="learning_rate must be a non-negative number, got") as err:
        make(lr)
    assert repr(lr) in str(err.value)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: optim.sgd(0.1, momentum=-0.9), r"momentum must be in \[0, 1\), got -0.9"),
        (lambda: optim.sgd(0.1, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (lambda: optim.momentum(0.1, beta=1.2), r"beta must be in \[0, 1\)"),
        (lambda: optim.trace(float("nan")), "decay must be a non-negative number"),
        (lambda: optim.add_decayed_weights(float("nan")), "weight_decay must be a finite number"),
        (lambda: optim.add_decayed_weights(np.inf), "weight_decay must be a finite number"),
        (lambda: optim.add_l1_decay(float("nan")), "l1 must be a non-negative number"),
        (lambda: optim.clip(-1.0), "max_delta must be a non-negative number"),
        (lambda: optim.clip_by_global_norm(float("nan")), "max_norm must be a non-negative number"),
        (lambda: optim.torch_sgd(0.1, weight_decay=-1.0), "weight_decay must be a non-negative"),
        (lambda: optim.adam(0.1, b1=-0.9), r"b1 must be in \[0, 1\), got -0.9"),
        (lambda: optim.adam(0.1, b2=1.0), r"b2 must be in \[0, 1\), got 1.0"),
        (lambda: optim.adam(0.1, eps=0.0), "eps must be > 0, got 0.0"),
        (lambda: optim.adam(0.1, eps_root=-1e-9), "eps_root must be >= 0"),
        (lambda: optim.adamw(0.1, weight_decay=-1e-4), "weight_decay must be >= 0"),
        (lambda: optim.lion(0.1, b2=float("nan")), r"b2 must be in \[0, 1\), got nan"),
        (lambda: optim.rmsprop(0.1, decay=1.5), r"decay must be in \[0, 1\)"),
        (lambda: optim.rmsprop(0.1, momentum=-0.1), r"momentum must be in \[0, 1\)"),
        (lambda: optim.rmsprop(0.1, eps=-1e-8), "eps must be > 0"),
        (lambda: optim.adagrad(0.1, initial_accumulator_value=-1.0), "initial_accumulator_v"),
        (lambda: optim.adafactor(clipping_threshold=0.0), "clipping_threshold must be > 0"),
        (lambda: optim.adafactor(weight_decay_rate=-0.1), "weight_decay_rate must be >= 0"),
        (lambda: optim.adafactor(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: optim.clip_by_block_rms(-1.0), "threshold must be a non-negative"),
    ],
)
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: optim.adam(0.1, b1="0.9"), r"b1 must be a number, got '0.9' \(str\)"),
        (lambda: optim.adam(0.1, b1=lambda t: 0.9), "b1 must be a number, got the callable"),
        (lambda: optim.sgd("0.1"), "learning_rate must be a scalar number or a callable"),
        (lambda: optim.scale_by_factored_rms(min_dim_size_to_factor=2.0), "must be an int"),
        (lambda: optim.masked(optim.scale(1.0), {"w": "yes"}).init({"w": jnp.ones(1)}), "Python"),
        (lambda: optim.scale_by_lion(mode="soft"), "mode must be 'hard', 'smooth' or 'refined'"),
    ],
)
def test_bad_hyperparameter_types(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_schedules_and_zero_rates_are_accepted():
    optim.sgd(optim.cosine_decay_schedule(0.1, 10))
    optim.sgd(lambda t: -1.0)  # a callable is not inspected: it may depend on traced steps
    optim.sgd(0.0)
    optim.adamw(optim.cosine_decay_schedule(1e-3, 10), weight_decay=lambda t: 1e-4)
    optim.add_decayed_weights(-0.1)  # negative decay is allowed, as optax.fromage uses it
    optim.adam(jnp.asarray(1e-3), b1=jnp.asarray(0.9, jnp.float32))  # 0-d arrays are numbers


@pytest.mark.parametrize(
    "tx",
    [optim.sgd(0.1, 0.9), optim.adam(1e-3), optim.accumulate(optim.sgd(0.1, 0.9), 2)],
    ids=["sgd", "adam", "accumulate"],
)
def test_updates_structure_differs_from_state(tx):
    state = tx.init(PARAMS)
    wrong = {"dense_0": {"w": jnp.ones((2, 3)), "bias": jnp.zeros(3)}, "out": [jnp.ones(3)]}
    with pytest.raises(ValueError, match=r"only in updates: \['dense_0'\]\['bias'\]") as err:
        tx.update(wrong, state, None)
    assert "['dense_0']['b']" in str(err.value)


def test_updates_structure_differs_from_state_under_jit():
    tx = optim.sgd(0.1, 0.9)
    state = tx.init(PARAMS)
    wrong = {
        "dense_0": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)},
        "out": [jnp.ones(3), jnp.ones(3)],
    }
    with pytest.raises(ValueError, match=r"only in updates: \['out'\]\[1\]"):
        jax.jit(tx.update)(wrong, state)


def test_leaf_shape_differs_from_state():
    tx = optim.sgd(0.1, 0.9)
    state = tx.init(PARAMS)
    wrong = jax.tree.map(jnp.zeros_like, PARAMS)
    wrong["dense_0"]["w"] = jnp.ones((3, 2))
    with pytest.raises(ValueError, match=r"updates\['dense_0'\]\['w'\] has shape \(3, 2\)"):
        tx.update(wrong, state)


def test_params_structure_differs_from_updates():
    tx = optim.add_decayed_weights(1e-4)
    with pytest.raises(ValueError, match=r"only in params: \['extra'\]"):
        tx.update(PARAMS, tx.init(PARAMS), {**PARAMS, "extra": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"only in params"):
        optim.apply_updates({**PARAMS, "extra": jnp.ones(2)}, PARAMS)


def test_state_of_another_optimizer():
    tx = optim.sgd(0.1, 0.9)
    other = optim.adam(1e-3).init(PARAMS)[:1]
    with pytest.raises(ValueError, match="chain of 2 transformations got a state with 1 entries"):
        tx.update(PARAMS, other, PARAMS)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
@pytest.mark.parametrize(
    "tx",
    [optim.sgd(0.1), optim.sgd(0.1, 0.9), optim.adam(1e-3), optim.clip(1.0)],
    ids=["sgd", "momentum", "adam", "clip"],
)
def test_non_float_leaf(tx, dtype):
    params = {"dense_0": {"w": jnp.ones((2, 3)), "step": jnp.zeros((), dtype)}}
    with pytest.raises(TypeError, match=r"params\['dense_0'\]\['step'\] has dtype"):
        tx.init(params)
    good = {"dense_0": {"w": jnp.ones((2, 3)), "step": jnp.zeros(())}}
    state = tx.init(good)
    with pytest.raises(TypeError, match=r"updates\['dense_0'\]\['step'\] has dtype"):
        tx.update(params, state, None)
    with pytest.raises(TypeError, match=r"params\['dense_0'\]\['step'\]"):
        optim.apply_updates(params, good)


def test_missing_params_for_weight_decay():
    tx = optim.add_decayed_weights(1e-4)
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(PARAMS, tx.init(PARAMS))


def test_bad_mask():
    tx = optim.add_decayed_weights(1e-4, mask={"dense_0": True})
    with pytest.raises(ValueError, match="mask must be a tree of booleans"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: optim.chain(optim.sgd(0.1), "adam"), TypeError, "chain argument 1"),
        (lambda: optim.accumulate(optim.sgd(0.1), 0), ValueError, "every_k"),
        (lambda: optim.accumulate(optim.sgd(0.1), 2.5), ValueError, "every_k"),
        (lambda: optim.scale_by_schedule(0.1), TypeError, "callable"),
    ],
)
def test_bad_combinator_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_optax_transforms_still_work_inside_our_chain_with_checks():
    """Our checks do not get in the way of optax's own states (e.g. MaskedNode leaves)."""
    tx = optim.chain(
        optax.masked(optim.trace(0.9), {"dense_0": True, "out": False}), optim.scale(-0.1)
    )
    state = tx.init(PARAMS)
    u, _ = tx.update(PARAMS, state, PARAMS)
    np.testing.assert_allclose(u["out"][0], -0.1 * PARAMS["out"][0])


@pytest.mark.parametrize(
    "module",
    [
        "base",
        "transforms",
        "adaptive",
        "clipping",
        "decay",
        "combine",
        "aliases",
        "aliases_rms",
        "factorized",
        "inject",
        "masking",
        "monitor",
        "names",
        "schedules",
        "__init__",
    ],
)
def test_docstring_examples_run(module):
    name = "funcbp.optim" if module == "__init__" else f"funcbp.optim.{module}"
    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0 and result.failed == 0
