"""What the call-like rules refuse, and how: callbacks (wrap them in jax.custom_vjp, as jax
says), a custom_vjp's linear half left by jax.jvp (jax's own error), donated device_puts."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

import funcbp
from tests.jaxversion import requires


def _pure(x):
    y = jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return jnp.sum(y)


def _io(x):
    return jnp.sum(io_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x))


@pytest.mark.parametrize("fun,name", [(_pure, "pure_callback"), (_io, "io_callback")])
def test_callbacks_are_refused_with_what_to_do_and_where(fun, name):
    with pytest.raises(funcbp.UnsupportedPrimitiveError) as info:
        funcbp.grad(fun)(jnp.ones(3))
    message = str(info.value)
    assert f"'{name}'" in message and "jax.custom_vjp" in message
    assert "test_calls_more.py" in message  # the user's line


def test_a_callback_wrapped_in_custom_vjp_differentiates():
    @jax.custom_vjp
    def sin(x):
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    sin.defvjp(lambda x: (sin(x), x), lambda x, ct: (ct * jnp.cos(x),))
    x = jnp.arange(3.0)
    np.testing.assert_allclose(funcbp.grad(lambda x: jnp.sum(sin(x)))(x), jnp.cos(x),
                               rtol=1e-6)


def test_jvp_of_a_custom_vjp_function_fails_as_in_jax():
    """custom_lin (the linear half of a custom_vjp in a jvp's jaxpr) cannot be evaluated."""
    @jax.custom_vjp
    def cube(x):
        return x ** 3

    cube.defvjp(lambda x: (x ** 3, x), lambda x, ct: (3 * x * x * ct,))
    f = lambda x: jnp.sum(jax.jvp(cube, (x,), (jnp.ones(3),))[1])  # noqa: E731
    with pytest.raises(NotImplementedError, match="custom_lin"):
        jax.grad(f)(jnp.ones(3))
    with pytest.raises(funcbp.UnsupportedPrimitiveError, match="custom_lin.*custom_vjp"):
        funcbp.grad(f)(jnp.ones(3))


def test_a_donating_device_put_is_refused():
    f = lambda x: jnp.sum(jax.device_put(x * 2.0, donate=True) ** 2)  # noqa: E731
    with pytest.raises(funcbp.UnsupportedPrimitiveError, match="DONATE_INPUT"):
        funcbp.grad(f)(jnp.ones(3))


@requires("legacy_pmap")
def test_jax_0_9_legacy_pmap_is_refused_pointing_to_shard_map():
    """jax 0.9's pmap under the deprecated jax_pmap_shmap_merge=False is an xla_pmap: refused
    (a documented exclusion) with what to do; by default pmap is a shard_map and works."""
    f = lambda x: jnp.sum(jax.pmap(jnp.sin)(x))  # noqa: E731
    x = jnp.ones((1, 3))
    np.testing.assert_allclose(funcbp.grad(f)(x), jnp.cos(x), rtol=1e-6)
    previous = jax.config.jax_pmap_shmap_merge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # jax deprecates the option itself
        jax.config.update("jax_pmap_shmap_merge", False)
    try:
        with pytest.raises(funcbp.UnsupportedPrimitiveError, match="'xla_pmap'.*shard_map"):
            funcbp.grad(f)(x)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            jax.config.update("jax_pmap_shmap_merge", previous)
