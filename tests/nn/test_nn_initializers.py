"""Initializer statistics: drawn variance within 5 sampling standard errors of the formula."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp.nn import init

SHAPE = (128, 512)           # fan_in 128, fan_out 512, fan_avg 320
CONV = (3, 3, 16, 32)        # HWIO: fan_in 3*3*16 = 144, fan_out 3*3*32 = 288
_Z2 = math.erf(2 / math.sqrt(2))                       # P(|N(0,1)| < 2)
_TRUNC_VAR = 1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / _Z2   # var of N(0,1) | |.|<2

CASES = {
    # name: (initializer, shape, expected variance, expected bound on |w| or None)
    "normal": (init.normal(0.3), SHAPE, 0.09, None),
    "uniform": (init.uniform(-0.5, 1.0), SHAPE, 1.5 ** 2 / 12, None),
    "truncated_normal": (init.truncated_normal(0.5), SHAPE, 0.25 * _TRUNC_VAR, 1.0),
    "glorot_uniform": (init.glorot_uniform(), SHAPE, 2 / (128 + 512), math.sqrt(6 / 640)),
    "glorot_normal": (init.glorot_normal(), SHAPE, 2 / (128 + 512), None),
    "xavier_uniform_conv": (init.xavier_uniform(), CONV, 2 / (144 + 288), math.sqrt(6 / 432)),
    "he_uniform": (init.he_uniform(), SHAPE, 2 / 128, math.sqrt(6 / 128)),
    "he_uniform_fan_out": (init.he_uniform("fan_out"), SHAPE, 2 / 512, math.sqrt(6 / 512)),
    "he_normal": (init.he_normal(), SHAPE, 2 / 128, None),
    "kaiming_normal_fan_out": (init.kaiming_normal(mode="fan_out"), SHAPE, 2 / 512, None),
    "he_normal_conv": (init.he_normal(), CONV, 2 / 144, None),
    "lecun_uniform": (init.lecun_uniform(), SHAPE, 1 / 128, math.sqrt(3 / 128)),
    "lecun_normal": (init.lecun_normal(), SHAPE, 1 / 128, None),
    "variance_scaling_normal": (init.variance_scaling(3.0, "fan_avg", "normal"), SHAPE,
                                3 / 320, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_variance_matches_formula(name):
    initializer, shape, variance, bound = CASES[name]
    w = np.asarray(initializer(jax.random.key(3), shape), np.float64)
    assert w.shape == shape and w.dtype == np.float64
    n = w.size
    mean = w.mean()
    centered = w - (0.0 if name != "uniform" else mean)
    var = np.mean(centered ** 2)
    se_var = math.sqrt((np.mean(centered ** 4) - var ** 2) / n)
    assert abs(var - variance) < 5 * se_var, (var, variance, se_var)
    if name != "uniform":
        assert abs(mean) < 5 * math.sqrt(variance / n)
    if bound is not None:
        assert np.abs(w).max() <= bound * (1 + 1e-6)


def test_uniform_range_and_constants():
    w = init.uniform(-0.5, 1.0)(jax.random.key(0), SHAPE)
    assert float(w.min()) >= -0.5 and float(w.max()) < 1.0
    np.testing.assert_array_equal(init.zeros()(None, (2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(init.ones()(None, (4,)), np.ones(4))
    np.testing.assert_array_equal(init.constant(0.5)(None, (3,), jnp.float32), np.full(3, 0.5))


def test_normal_variants_are_gaussian_not_truncated():
    # "normal" draws are not clipped at 2 sigma: some exceed it (P ~ 4.6% of 65536 entries)
    w = init.variance_scaling(1.0, "fan_in", "normal")(jax.random.key(0), SHAPE)
    assert float(jnp.abs(w).max()) > 2.5 * math.sqrt(1 / 128)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (3, 3, 4, 16)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_orthogonal(shape, scale):
    w = np.asarray(init.orthogonal(scale)(jax.random.key(1), shape), np.float64)
    assert w.shape == shape
    m = w.reshape(-1, shape[-1])
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, scale ** 2 * np.eye(gram.shape[0]), atol=1e-5)


def test_orthogonal_column_axis():
    w = np.asarray(init.orthogonal(column_axis=0)(jax.random.key(1), (8, 20)))
    np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-5)


def test_dtype_and_bad_arguments():
    assert init.he_normal()(jax.random.key(0), (4, 3), jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="fan"):
        init.glorot_uniform()(jax.random.key(0), (5,))
    with pytest.raises(ValueError, match="mode"):
        init.variance_scaling(1.0, "fan_max", "normal")
    with pytest.raises(ValueError, match="distribution"):
        init.variance_scaling(1.0, "fan_in", "cauchy")
