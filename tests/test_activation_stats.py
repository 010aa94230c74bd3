"""Forward statistics of tags and activations: against numpy, under jit and funcbp.grad; a dead
ReLU layer shows as 100% zero; the trainer logs and plots them (--activation-stats)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcbp
from funcbp import nn
from funcbp.autodiff.tag import recording, tag
from funcbp.diagnostics import activation_stats, plot_activation_stats
from funcbp.train import TrainConfig, fit, read_metrics


def _numpy_stats(x, saturate=False):
    x = np.asarray(x, np.float64)
    out = {"mean": x.mean(), "std": x.std(), "zero": np.mean(x == 0)}
    if saturate:
        out["saturated"] = np.mean(np.abs(x) > 4)
    return out


@pytest.mark.parametrize("how", ["plain", "jit", "funcbp.grad"])
def test_tag_statistics_match_numpy_and_merge_two_records(how):
    a = jnp.array([[-5.0, 0.0, 1.0], [8.0, 0.0, -2.0]])
    b = jnp.array([4.5, 0.25])

    def f(a, b):
        z = jnp.sum(jax.nn.sigmoid(tag(a, "pre", kind="sigmoid")))
        return z + jnp.sum(jax.nn.sigmoid(tag(b, "pre", kind="sigmoid")))  # same name: merged

    def run(a, b):
        with recording() as rec:
            if how == "funcbp.grad":
                funcbp.grad(f)(a, b)
            else:
                f(a, b)
        return rec.stats["pre"]

    stats = jax.jit(run)(a, b) if how == "jit" else run(a, b)
    ref = _numpy_stats(np.concatenate([np.ravel(a), b]), saturate=True)
    for key, value in ref.items():
        np.testing.assert_allclose(float(stats[key]), value, rtol=1e-6, atol=1e-7, err_msg=key)
    assert int(stats["count"]) == 8


def test_a_dead_relu_layer_shows_as_all_zero_and_a_saturated_sigmoid_as_saturated():
    model = nn.serial(nn.Dense(16), nn.relu, nn.Dense(16), nn.relu, nn.Dense(8), nn.sigmoid)
    _, params = model.init(jax.random.key(0), (1, 4))
    params["dense_1"]["b"] = params["dense_1"]["b"] - 100.0  # every unit of relu_1 dies
    params["dense_2"]["w"] = params["dense_2"]["w"] * 0.0
    params["dense_2"]["b"] = jnp.full(8, 6.0)  # the sigmoid's inputs are all 6: saturated
    x = jax.random.normal(jax.random.key(1), (32, 4))
    stats = jax.jit(lambda p, x: activation_stats(model.apply, p, x))(params, x)
    assert stats.order == ("relu_0", "relu_1", "sigmoid_0")
    assert float(stats.layers["relu_1"]["zero"]) == 1.0
    assert float(stats.layers["relu_1"]["dead"]) == 1.0
    assert 0.2 < float(stats.layers["relu_0"]["zero"]) < 0.8
    assert float(stats.layers["relu_0"]["dead"]) < 0.5
    assert float(stats.layers["sigmoid_0"]["saturated"]) == 1.0
    h = jax.nn.relu(x @ params["dense_0"]["w"] + params["dense_0"]["b"])
    ref = _numpy_stats(h)
    for key in ("mean", "std", "zero"):
        np.testing.assert_allclose(float(stats.layers["relu_0"][key]), ref[key], rtol=1e-5)
    text = str(stats)
    assert "relu_1" in text and "100.0%" in text


def test_plot_draws_a_history(tmp_path):
    history = [{"relu_0": {"mean": 1.0, "std": 0.5, "zero": 0.1 * k, "dead": 0.0}}
               for k in range(3)]
    path = plot_activation_stats(history, str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").stat().st_size > 1000 and path.endswith("a.png")


@pytest.mark.slow
def test_fit_logs_and_plots_activation_stats(tmp_path):
    fit(TrainConfig(model="mlp", epochs=1, activation_stats=True, augment=False),
        run_dir=tmp_path, quiet=True, log=lambda line: None)
    (epoch,) = [r for r in read_metrics(tmp_path) if r.get("type") == "epoch"]
    stats = epoch["activation_stats"]
    assert list(stats) == ["relu_0", "relu_1"]
    for s in stats.values():
        assert 0.0 <= s["zero"] <= 1.0 and s["std"] > 0
    assert (tmp_path / "activation_stats.png").stat().st_size > 1000
