"""References created outside the differentiated function: a differentiated value written into
one is refused (as jax refuses), never silently dropped; a non-differentiated write works."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp


@pytest.mark.parametrize("write", ["swap", "addupdate"])
def test_writing_a_differentiated_value_into_an_outside_reference_is_refused(write):
    ref = jax.new_ref(jnp.arange(3.0))

    def f(x):
        if write == "swap":
            ref[...] = ref[...] + x
        else:
            jax.ref.addupdate(ref, ..., x)
        return jnp.sum(ref[...] ** 2) + jnp.sum(x)

    with pytest.raises(Exception):  # noqa: B017 - jax refuses too, with a message per primitive
        jax.grad(f)(jnp.ones(3))
    ref[...] = jnp.arange(3.0)
    with pytest.raises(funcbp.UnsupportedPrimitiveError, match=f"'{write}'.*jax.new_ref"):
        funcbp.grad(f)(jnp.ones(3))
    np.testing.assert_array_equal(ref[...], jnp.arange(3.0))  # refused before writing


def test_a_stop_gradient_write_into_an_outside_reference_matches_jax():
    ref = jax.new_ref(jnp.zeros(3))

    def f(x):
        ref[...] = lax.stop_gradient(x * 2.0)
        return jnp.sum(jnp.sin(x) * ref[...])

    x = jnp.arange(1.0, 4.0)
    expected = jax.grad(f)(x)
    ref[...] = jnp.zeros(3)
    np.testing.assert_allclose(funcbp.grad(f)(x), expected, rtol=1e-6)
    np.testing.assert_allclose(ref[...], x * 2.0)
