"""flax.linen and equinox models trained through the two-line adapters reach the accuracy of
the same model trained by its own library's usual loop (optax, jax.grad) on the digits.

Both loops start from the same initial parameters and see the batches in the same order (the
order ``fit`` draws: ``funcbp.data.batch_epoch`` with the epoch's key), so what may differ is
only the gradient's rounding (funcbp's backward pass against jax's) and the trainer around it.
Tolerance: two test examples of 359 (0.0056); a wrong gradient, a missed update or a shuffled
label costs far more. The libraries are test-only extras: the tests skip without them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import data as fdata
from funcbp.train import fit, from_equinox, from_flax

EPOCHS, BATCH, LR = 3, 64, 3e-3
RUN = dict(epochs=EPOCHS, batch_size=BATCH, lr=LR, optimizer="adam", schedule="constant",
           l2=0.0, val_fraction=0.0, writers="", quiet=True, log=lambda line: None)


@pytest.fixture(scope="module")
def digits():
    images, labels = fdata.load_digits()
    x = (images / 16.0).astype(np.float32).reshape(-1, 64)
    (x_tr, y_tr), (x_te, y_te) = fdata.split(jax.random.key(0), x, labels.astype(np.int32),
                                             (0.8, 0.2), stratify=True)
    return np.asarray(x_tr), np.asarray(y_tr), np.asarray(x_te), np.asarray(y_te)


def _keys(seed=0):
    """The keys ``fit`` uses: parameters from the first half, epoch orders from the second."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    return init_key, train_key


def _epochs(x, y, train_key):
    for epoch in range(EPOCHS):
        perm_key, _ = jax.random.split(jax.random.fold_in(train_key, epoch))
        xs, ys = fdata.batch_epoch(perm_key, x, y, BATCH)
        yield from zip(xs, ys, strict=True)


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _accuracy(logits, y):
    return float(np.mean(np.argmax(np.asarray(logits), -1) == y))


@pytest.mark.slow
def test_flax_linen_model_matches_its_own_training_loop(digits, tmp_path):
    nn = pytest.importorskip("flax.linen")
    x, y, x_test, y_test = digits

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))

    # funcbp: the two-line adapter.
    model = from_flax(MLP())
    result = fit(model, None, "softmax_cross_entropy", (x, y), test_data=(x_test, y_test),
                 run_dir=tmp_path / "run", **RUN)

    # flax's own loop: module.init, optax.adam, jax.value_and_grad, jax.jit.
    init_key, train_key = _keys()
    module = MLP()
    params = module.init({"params": init_key, "dropout": init_key}, jnp.zeros((1, 64)))["params"]
    tx = optax.adam(LR)
    state = tx.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        loss, g = jax.value_and_grad(lambda p: _ce(module.apply({"params": p}, xb), yb))(params)
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for xb, yb in _epochs(x, y, train_key):
        params, state = step(params, state, xb, yb)
    own = _accuracy(module.apply({"params": params}, x_test), y_test)
    print(f"funcbp fit {result.test['test_accuracy']:.4f}, own loop {own:.4f}")
    assert own > 0.9
    assert abs(result.test["test_accuracy"] - own) <= 2 / len(y_test) + 1e-9


@pytest.mark.slow
def test_equinox_model_matches_its_own_training_loop(digits, tmp_path):
    eqx = pytest.importorskip("equinox")
    x, y, x_test, y_test = digits
    init_key, train_key = _keys()
    net = eqx.nn.MLP(64, 10, width_size=64, depth=1, key=init_key)

    # funcbp: the two-line adapter.
    params, apply = from_equinox(net)
    result = fit(params, apply, "softmax_cross_entropy", (x, y), test_data=(x_test, y_test),
                 run_dir=tmp_path / "run", **RUN)

    # equinox's own loop: filter_value_and_grad, optax over the module's arrays, filter_jit.
    tx = optax.adam(LR)
    model = net
    state = tx.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state, xb, yb):
        loss, g = eqx.filter_value_and_grad(lambda m: _ce(jax.vmap(m)(xb), yb))(model)
        updates, state = tx.update(g, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state

    for xb, yb in _epochs(x, y, train_key):
        model, state = step(model, state, xb, yb)
    own = _accuracy(jax.vmap(model)(jnp.asarray(x_test)), y_test)
    print(f"funcbp fit {result.test['test_accuracy']:.4f}, own loop {own:.4f}")
    assert own > 0.9
    assert abs(result.test["test_accuracy"] - own) <= 2 / len(y_test) + 1e-9


def test_from_flax_refuses_a_module_with_state():
    nn = pytest.importorskip("flax.linen")

    class WithNorm(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=True)(x)

    with pytest.raises(ValueError, match="batch_stats"):
        from_flax(WithNorm()).init(jax.random.key(0), (1, 4))
