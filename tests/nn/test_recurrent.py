"""SimpleRNN, GRU and LSTM: values against float64 NumPy loops (and PyTorch when installed),
gradients of funcbp against jax.grad, shapes, options and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcbp
from funcbp.nn.layer import ParamsError, ShapeError
from funcbp.nn.recurrent import GRU, LSTM, SimpleRNN

WRAPS = pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
B, T, F, H = 3, 5, 4, 6


def _rand(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _np_rnn(p, x):
    h, hs = np.zeros((x.shape[0], H)), []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ p["w_ih"] + h @ p["w_hh"] + p["b"])
        hs.append(h)
    return np.stack(hs, 1)


def _np_gru(p, x):
    h, hs = np.zeros((x.shape[0], H)), []
    for t in range(x.shape[1]):
        a = x[:, t] @ p["w_ih"] + p["b_ih"]
        c = h @ p["w_hh"] + p["b_hh"]
        r = _sig(a[:, :H] + c[:, :H])
        z = _sig(a[:, H:2 * H] + c[:, H:2 * H])
        n = np.tanh(a[:, 2 * H:] + r * c[:, 2 * H:])
        h = (1 - z) * n + z * h
        hs.append(h)
    return np.stack(hs, 1)


def _np_lstm(p, x):
    h, c, hs = np.zeros((x.shape[0], H)), np.zeros((x.shape[0], H)), []
    for t in range(x.shape[1]):
        g = x[:, t] @ p["w_ih"] + h @ p["w_hh"] + p["b"]
        i, f, gg, o = (g[:, k * H:(k + 1) * H] for k in range(4))
        c = _sig(f) * c + _sig(i) * np.tanh(gg)
        h = _sig(o) * np.tanh(c)
        hs.append(h)
    return np.stack(hs, 1)


LAYERS = {"rnn": (SimpleRNN, _np_rnn), "gru": (GRU, _np_gru), "lstm": (LSTM, _np_lstm)}


def _random_params(params, seed):
    """Non-zero biases too, so that a mixed-up bias would show."""
    leaves, tree = jax.tree.flatten(params)
    return jax.tree.unflatten(tree, [0.5 * _rand(seed + i, a.shape) for i, a in
                                     enumerate(leaves)])


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@WRAPS
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_values_match_numpy_loop(kind, return_sequences, wrap):
    make, ref = LAYERS[kind]
    layer = make(H, return_sequences=return_sequences)
    out_shape, params = layer.init(jax.random.key(0), (B, T, F))
    params = _random_params(params, 10)
    x = _rand(1, (B, T, F))
    y = wrap(layer.apply)(params, x)
    assert y.shape == out_shape == ((B, T, H) if return_sequences else (B, H))
    expected = ref(_np(params), np.asarray(x, np.float64))
    expected = expected if return_sequences else expected[:, -1]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_reverse_runs_the_flipped_sequence(kind):
    make, ref = LAYERS[kind]
    layer = make(H, return_sequences=True, reverse=True)
    _, params = layer.init(jax.random.key(0), (B, T, F))
    params = _random_params(params, 20)
    x = _rand(2, (B, T, F))
    expected = ref(_np(params), np.asarray(x, np.float64)[:, ::-1])[:, ::-1]
    np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5, atol=1e-5)


@WRAPS
@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradients_match_jax(kind, wrap):
    """funcbp.grad of a sequence loss (params and inputs) against jax.grad."""
    make, _ = LAYERS[kind]
    layer = make(H, return_sequences=True)
    _, params = layer.init(jax.random.key(3), (B, T, F))
    params = _random_params(params, 30)
    x, target = _rand(4, (B, T, F)), _rand(5, (B, T, H))

    def loss(params, x):
        return jnp.mean((layer.apply(params, x) - target) ** 2)

    ours = wrap(funcbp.value_and_grad(loss, argnums=(0, 1)))(params, x)
    ref = wrap(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), ours, ref)


def test_layers_compose_in_serial():
    model = funcbp.nn.serial(LSTM(H, return_sequences=True), GRU(H), funcbp.nn.Dense(2))
    out_shape, params = model.init(jax.random.key(0), (B, T, F))
    assert out_shape == (B, 2) and sorted(params) == ["dense_0", "gru_0", "lstm_0"]
    assert model.apply(params, _rand(0, (B, T, F))).shape == (B, 2)


def test_init_defaults():
    _, p = LSTM(H, forget_bias=1.0).init(jax.random.key(0), (B, T, F))
    np.testing.assert_array_equal(p["b"], np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])
    _, p = GRU(H).init(jax.random.key(0), (B, T, F))
    assert p["w_ih"].shape == (F, 3 * H) and p["w_hh"].shape == (H, 3 * H)
    for k in range(3):  # one orthogonal block per gate
        block = np.asarray(p["w_hh"][:, k * H:(k + 1) * H])
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_matches_torch(kind):
    torch = pytest.importorskip("torch")
    make, _ = LAYERS[kind]
    layer = make(H, return_sequences=True)
    _, params = layer.init(jax.random.key(0), (B, T, F))
    params = _random_params(params, 40)
    x = _rand(6, (B, T, F))
    mod = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](
        F, H, batch_first=True).double()
    with torch.no_grad():
        mod.weight_ih_l0.copy_(torch.tensor(np.asarray(params["w_ih"]).T))
        mod.weight_hh_l0.copy_(torch.tensor(np.asarray(params["w_hh"]).T))
        if kind == "gru":
            mod.bias_ih_l0.copy_(torch.tensor(np.asarray(params["b_ih"])))
            mod.bias_hh_l0.copy_(torch.tensor(np.asarray(params["b_hh"])))
        else:
            mod.bias_ih_l0.copy_(torch.tensor(np.asarray(params["b"])))
            mod.bias_hh_l0.zero_()
        expected = mod(torch.tensor(np.asarray(x, np.float64)))[0].numpy()
    np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5, atol=1e-5)


def test_errors_name_the_problem():
    layer = GRU(H)
    _, params = layer.init(jax.random.key(0), (B, T, F))
    with pytest.raises(ShapeError, match=r"\(batch, time, features\)"):
        layer.apply(params, jnp.ones((T, F)))
    with pytest.raises(ShapeError, match="'w_ih'"):
        layer.apply(params, jnp.ones((B, T, F + 1)))
    with pytest.raises(ParamsError, match="missing key"):
        layer.apply({k: v for k, v in params.items() if k != "b_hh"}, jnp.ones((B, T, F)))
    with pytest.raises(ShapeError, match="'w_hh'"):
        layer.apply(dict(params, w_hh=params["w_hh"][:, :H]), jnp.ones((B, T, F)))
    with pytest.raises(TypeError, match="floating"):
        layer.apply(params, jnp.ones((B, T, F), jnp.int32))
    with pytest.raises(ValueError, match="positive int"):
        SimpleRNN(0)
