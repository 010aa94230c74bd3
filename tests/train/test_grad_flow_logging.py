"""The trainer logs per-layer gradient norms each epoch and plots them (--grad-flow)."""

import jax
import numpy as np
import pytest

from funcbp.diagnostics import gradient_flow
from funcbp.train import TrainConfig, fit, read_metrics


@pytest.mark.slow
def test_fit_logs_gradient_flow_per_epoch(tmp_path):
    fit(TrainConfig(model="mlp", epochs=2, grad_flow=True, augment=False), run_dir=tmp_path,
        quiet=True)
    epochs = [r for r in read_metrics(tmp_path) if r.get("type") == "epoch"]
    assert len(epochs) == 2
    for r in epochs:
        layers = r["grad_flow"]["layers"]
        assert list(layers) == sorted(layers) and len(layers) >= 2
        assert all(np.isfinite(v) and v > 0 for v in layers.values())
    assert (tmp_path / "gradient_flow.png").stat().st_size > 1000


def test_gradient_flow_norms_match_jax_grad():
    k = jax.random.split(jax.random.key(3), 3)
    params = {"dense_0": {"w": jax.random.normal(k[0], (5, 4))},
              "dense_1": {"w": jax.random.normal(k[1], (4, 3))}}
    x = jax.random.normal(k[2], (8, 5))

    def loss(p, x):
        return jax.numpy.mean(jax.numpy.tanh(jax.numpy.tanh(x @ p["dense_0"]["w"])
                                             @ p["dense_1"]["w"]) ** 2)

    flow = gradient_flow(loss, params, x)
    ref = jax.grad(loss)(params, x)
    for name in params:
        np.testing.assert_allclose(flow.layers[name], np.linalg.norm(ref[name]["w"]), rtol=1e-5)
