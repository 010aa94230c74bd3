"""Smoke test of the experiments: each study's ``--quick`` mode runs, and its numbers show the
finding its write-up (docs/experiments/<study>.md) states.

Only findings that hold by orders of magnitude (or by construction) are asserted in quick
mode; the full runs behind the published figures are not part of the test suite.
"""

from __future__ import annotations

import importlib
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import STUDIES, common
from funcbp import losses, nn


def run_quick(study: str, tmp_path) -> dict:
    importlib.import_module(f"experiments.{study}").main(
        ["--quick", "--out", str(tmp_path), "--no-publish"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["study"] == study and results["mode"] == "quick"
    for fig in results["figures"]:
        assert (tmp_path / fig).stat().st_size > 1000, fig
    return results


# ------------------------------------------------------------- helpers (fast, not slow)


def test_grad_norms_fn_matches_jax_reference():
    model = common.deep_mlp([5, 4], "tanh", nn.init.glorot_normal())
    _, params = model.init(jax.random.key(3), (1, 2, 3, 1))
    x = jax.random.normal(jax.random.key(4), (7, 2, 3, 1))
    y = jax.random.randint(jax.random.key(5), (7,), 0, 10)
    ours = common.grad_norms_fn(model.apply)(params, x, y)
    ref = jax.grad(lambda p: losses.softmax_cross_entropy_with_integer_labels(
        model.apply(p, x), y))(params)
    assert sorted(ours) == ["dense_0", "dense_1", "dense_2"]
    for name, sub in ref.items():
        np.testing.assert_allclose(ours[name], jnp.linalg.norm(sub["w"]), rtol=1e-5)


def test_deep_mlp_activations_and_layer_order():
    model = common.deep_mlp([6] * 11, "relu", nn.init.he_normal())
    _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
    outs = model.apply(params, jnp.ones((3, 8, 8, 1)), return_activations=True)
    assert [o.shape for o in outs] == [(3, 6)] * 11 + [(3, 10)]
    assert bool(jnp.all(outs[0] >= 0))
    assert common.layer_order(list(params))[-3:] == ["dense_9", "dense_10", "dense_11"]


def test_digits_splits_standardised_on_training_split():
    s = common.digits_splits(seed=0)
    assert s.x_train.shape[0] + s.x_val.shape[0] + s.x_test.shape[0] == 1797
    mean = np.asarray(s.x_train).mean(axis=0)
    np.testing.assert_allclose(mean, 0, atol=1e-4)
    raw = common.digits_splits(seed=0, normalize="raw")
    assert float(raw.x_train.max()) == 16.0
    with pytest.raises(ValueError, match="normalize"):
        common.digits_splits(normalize="minmax")


def test_every_study_has_a_write_up():
    from pathlib import Path
    docs = Path(common.REPO) / "docs" / "experiments"
    for study in STUDIES:
        assert (docs / f"{study}.md").exists(), study


# ------------------------------------------------------------------- the quick studies


@pytest.mark.slow
def test_digits(tmp_path):
    r = run_quick("digits", tmp_path)
    assert r["mlp"]["test_acc"] > 0.75 and r["cnn"]["test_acc"] > 0.75
    conf = np.asarray(r["cnn"]["confusion"])
    assert conf.sum() == r["splits"]["test"]
    assert len(r["cnn"]["misclassified"]) == conf.sum() - np.trace(conf)


@pytest.mark.slow
def test_vanishing(tmp_path):
    r = run_quick("vanishing", tmp_path)["runs"]
    # The write-up's finding: at 10 layers the sigmoid net's first-layer gradient is orders of
    # magnitude below ReLU+He's, and decays from the last layer to the first.
    assert r["sigmoid_10"]["grad_norms_init"][0] * 100 < r["relu_10"]["grad_norms_init"][0]
    assert r["sigmoid_10"]["first_over_last_init"] < 1e-3
    assert r["relu_10"]["first_over_last_init"] > 0.1
    assert r["sigmoid_10"]["grad_norms_init"][0] < r["sigmoid_5"]["grad_norms_init"][0]
    # ...and not from saturation: almost no sigmoid input beyond +-4; ReLUs about half zero.
    assert len(r["sigmoid_10"]["saturated_init"]) == 9
    assert max(r["sigmoid_10"]["saturated_init"]) < 0.02
    assert 0.3 < np.mean(r["relu_10"]["zero_init"]) < 0.7


@pytest.mark.slow
def test_exploding(tmp_path):
    r = run_quick("exploding", tmp_path)
    mlp = r["mlp"]["runs"]
    assert mlp["no clipping"]["diverged"]
    assert not mlp["clip_by_global_norm(1)"]["diverged"]
    assert not mlp["clip(0.01) element-wise"]["diverged"]
    assert mlp["no clipping"]["max_grad_norm"] > 1e6 or not math.isfinite(
        mlp["no clipping"]["max_grad_norm"])
    rnn = r["rnn"]["runs"]
    assert all(math.isfinite(v) for v in rnn["clip_by_global_norm(1)"]["loss"])


@pytest.mark.slow
def test_initialisation(tmp_path):
    r = run_quick("initialisation", tmp_path)["runs"]
    small, he = r["relu/normal(0.01)"], r["relu/he_normal"]
    assert small["activation_std"][-2] * 1e4 < he["activation_std"][-2]
    assert small["grad_norms_init"][0] * 1e4 < he["grad_norms_init"][0]
    assert small["test_acc"] < 0.3 < he["test_acc"]


@pytest.mark.slow
def test_optimisers(tmp_path):
    r = run_quick("optimisers", tmp_path)
    c = r["comparison"]
    # Same epochs: full-batch GD has taken a handful of steps, mini-batch SGD hundreds.
    gd, sgd = c["full-batch GD"], c["mini-batch SGD"]
    assert gd["epoch_train_loss"][-1] > 2 * sgd["epoch_train_loss"][-1]
    assert c["full-batch GD"]["steps"] < c["mini-batch SGD"]["steps"] / 10
    sweep = r["lr_sweep"]
    assert sweep["0.001"]["epoch_train_loss"][-1] > 2 * c["momentum 0.9"]["epoch_train_loss"][-1]


@pytest.mark.slow
def test_batch_size(tmp_path):
    r = run_quick("batch_size", tmp_path)
    sizes = [str(b) for b in r["sizes"]]
    assert all(r["equal_steps"][b]["steps"] == r["steps"] for b in sizes)
    epochs_steps = [r["equal_epochs"][b]["steps"] for b in sizes]
    assert epochs_steps == sorted(epochs_steps, reverse=True)
    assert r["equal_epochs"][sizes[0]]["test_acc"] > r["equal_epochs"][sizes[-1]]["test_acc"] + 0.3


@pytest.mark.slow
def test_regularisation(tmp_path):
    r = run_quick("regularisation", tmp_path)["runs"]
    assert r["L1 1e-3"]["weights"]["below_1e-3"] > 5 * r["none"]["weights"]["below_1e-3"]
    # Subgradient descent on |w| makes weights hover around 0, never exactly 0.
    assert r["L1 1e-3"]["weights"]["exact_zero"] < 1e-3
    assert r["L2 1e-2"]["weights"]["mean_abs"] < r["none"]["weights"]["mean_abs"]


@pytest.mark.slow
def test_normalisation(tmp_path):
    r = run_quick("normalisation", tmp_path)["runs"]
    assert abs(r["standardize"]["input_mean"]) < 1e-3
    assert r["standardize"]["0.01"]["test_acc"] > r["raw"]["0.01"]["test_acc"]


@pytest.mark.slow
def test_fashion(tmp_path):
    r = run_quick("fashion", tmp_path)
    if r.get("skipped"):
        pytest.skip(r["reason"])
    assert r["runs"]["mlp"]["test_acc"] > 0.6
    assert r["baselines"]["mlp"]["accuracy"] == 0.883


@pytest.mark.slow
def test_noise_scale(tmp_path):
    r = run_quick("noise_scale", tmp_path)["datasets"]["digits"]
    check = r["vmap_check"]  # funcbp.quantities and vmap(jax.grad) give the same B_simple
    assert check["funcbp"] == pytest.approx(check["vmap"], rel=1e-3)
    b = [rec["b_simple"] for rec in r["records"]]
    assert all(math.isfinite(v) and v > 0 for v in b)
    assert b[-1] > b[0]  # the noise scale grows as the loss falls (McCandlish et al.)


@pytest.mark.slow
def test_dp_sgd(tmp_path):
    r = run_quick("dp_sgd", tmp_path)["runs"]
    # three routes to the same clipped, noised update: the same trajectory
    accs = {route: r[route]["test_acc"] for route in ("batch_grad", "batch_l2", "vmap")}
    assert max(accs.values()) - min(accs.values()) < 0.02, accs
    assert r["non-private"]["test_acc"] > 0.5
