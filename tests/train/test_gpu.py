"""The trainer and a few gradients on a GPU, in float32 and bfloat16; skipped without one.

``tests/conftest.py`` pins the CPU unless ``JAX_PLATFORMS`` is set, so run them with::

    JAX_PLATFORMS=cuda,cpu .venv/bin/python -m pytest -m gpu tests

(``make bench`` does, when ``nvidia-smi`` finds a GPU; see docs/benchmarks.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcbp
from funcbp import losses, nn
from funcbp.train import TrainConfig, fit

pytestmark = pytest.mark.gpu


def _gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


GPU = _gpu()
needs_gpu = pytest.mark.skipif(GPU is None, reason="no GPU: jax.devices('gpu') finds none "
                               "(set JAX_PLATFORMS=cuda,cpu on a machine with one)")


@needs_gpu
@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_trainer_runs_on_the_gpu(tmp_path, precision):
    with jax.default_device(GPU):
        result = fit(TrainConfig(model="digits_cnn", epochs=3, batch_size=64, precision=precision,
                                 writers=""), run_dir=tmp_path / "run", quiet=True,
                     log=lambda line: None)
    assert GPU in jax.tree.leaves(result.params)[0].devices()
    assert result.test["test_accuracy"] > 0.9


def _cnn():
    return nn.serial(nn.Conv2D(8, 3), nn.relu, nn.MaxPool2D(2), nn.Flatten(), nn.Dense(10))


@needs_gpu
@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_gradients_match_jax_on_the_gpu(dtype, rtol):
    """funcbp.grad against jax.grad of a small CNN's loss, both computed on the GPU."""
    model = _cnn()
    with jax.default_device(GPU):
        _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1), dtype)
        y = jnp.arange(16) % 10

        def loss(p):
            logits = model.apply(p, x).astype(jnp.float32)
            return losses.softmax_cross_entropy_with_integer_labels(logits, y)

        ours = jax.jit(funcbp.grad(loss))(params)
        ref = jax.jit(jax.grad(loss))(params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(
                                       b.astype(jnp.float32)))))
