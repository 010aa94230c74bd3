"""scale_to_unit, fit_standardize, standardize: against numpy formulas and scikit-learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp.data import Standardizer, fit_standardize, scale_to_unit, standardize

EAGER_JIT = [lambda f: f, jax.jit]


def images(n=6, seed=0, c=3):
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 5.0, 50.0][:c])  # channels on very different scales
    return (rng.normal(size=(n, 4, 5, c)) * scale + 3.0).astype(np.float32)


@pytest.mark.parametrize(("dtype", "max_value"), [(np.uint8, 255), (np.uint8, 16), (np.float32, 2)])
def test_scale_to_unit(dtype, max_value):
    x = np.random.default_rng(1).integers(0, max_value + 1, size=(5, 3, 3, 1)).astype(dtype)
    out = scale_to_unit(x, max_value)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, x.astype(np.float64) / max_value, rtol=1e-7)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("wrap", EAGER_JIT, ids=["eager", "jit"])
def test_scale_to_unit_jax(wrap):
    x = jnp.arange(256, dtype=jnp.uint8)
    out = wrap(lambda x: scale_to_unit(x, 255))(x)
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.arange(256) / 255, rtol=1e-7)


def test_scale_to_unit_bad_max():
    with pytest.raises(ValueError, match="max_value must be positive, got 0"):
        scale_to_unit(np.ones(3), 0)


# per -> the axes numpy reduces over for (N, H, W, C) images
AXES = {"channel": (0, 1, 2), "feature": 0, "global": None}


@pytest.mark.parametrize("per", sorted(AXES))
def test_fit_standardize_matches_numpy(per):
    x = images()
    mean, std = fit_standardize(x, per=per)
    x64 = x.astype(np.float64)
    ref_mean = x64.mean(axis=AXES[per])
    ref_std = np.sqrt(((x64 - x64.mean(axis=AXES[per], keepdims=True)) ** 2).mean(axis=AXES[per]))
    assert mean.dtype == np.float32 and mean.shape == np.shape(ref_mean)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(std, ref_std, rtol=1e-6)
    z = standardize(x, mean, std)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose(z.mean(axis=AXES[per]), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=AXES[per]), 1.0, rtol=1e-5)


def test_per_feature_matches_scikit_learn():
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    x_train, x_test = images(40, seed=2).reshape(40, -1), images(7, seed=3).reshape(7, -1)
    x_train[:, 5] = 0.0  # a constant feature: scikit-learn divides by 1 there, as we do
    x_test[:, 5] = 2.0
    scaler = preprocessing.StandardScaler().fit(x_train.astype(np.float64))
    stats = fit_standardize(x_train, per="feature")
    np.testing.assert_allclose(stats.mean, scaler.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.std, scaler.scale_, rtol=1e-6)
    np.testing.assert_allclose(stats(x_test), scaler.transform(x_test), rtol=1e-5, atol=1e-5)
    assert stats.std[5] == 1.0 and np.all(stats(x_test)[:, 5] == 2.0)


def test_test_split_uses_training_statistics():
    x_train, x_test = images(30, seed=4), images(30, seed=5) + 10.0
    stats = fit_standardize(x_train)
    z_test = stats(x_test)
    # Standardised with the training statistics, the shifted test split is not centred.
    expected = (x_test.astype(np.float64) - x_train.mean(axis=(0, 1, 2))) / x_train.std(
        axis=(0, 1, 2)
    )
    np.testing.assert_allclose(z_test, expected, rtol=1e-5, atol=1e-5)
    assert np.all(z_test.mean(axis=(0, 1, 2)) > 0.1)


@pytest.mark.parametrize("wrap", EAGER_JIT, ids=["eager", "jit"])
@pytest.mark.parametrize("per", sorted(AXES))
def test_jax_arrays(wrap, per):
    x = images(8, seed=6)
    mean, std = wrap(lambda x: tuple(fit_standardize(x, per=per)))(jnp.asarray(x))
    ref = fit_standardize(x, per=per)
    np.testing.assert_allclose(np.asarray(mean), ref.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(std), ref.std, rtol=1e-5)
    z = wrap(standardize)(jnp.asarray(x), mean, std)
    assert isinstance(z, jax.Array) and z.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(z), standardize(x, *ref), rtol=1e-4, atol=1e-4)


def test_standardizer_is_a_pair():
    stats = fit_standardize(images())
    assert isinstance(stats, Standardizer)
    mean, std = stats
    np.testing.assert_array_equal(stats(images(seed=1)), standardize(images(seed=1), mean, std))


@pytest.mark.parametrize(
    ("x", "kwargs", "pattern"),
    [
        (np.zeros((0, 3)), {}, "must have examples"),
        (np.zeros((4, 3)), {"per": "pixel"}, "per must be 'channel', 'feature' or 'global'"),
        (np.zeros(4), {"per": "channel"}, "needs a channel axis"),
    ],
)
def test_fit_standardize_errors(x, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        fit_standardize(x, **kwargs)
