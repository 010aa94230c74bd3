"""Gradients of gradients through gather, scatter, cumulative ops, sort and products.

The backward passes of these rules are built from gather, scatter-add, cumsum, sort, ... which
have rules themselves, so differentiating a funcbp gradient again (by jax or by funcbp) must
give jax's second derivatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp

IDX = np.array([0, 3, 3, 1, 0])  # repeated on purpose
N = 6


def _with_zeros(x):
    return x.at[1].set(0.0).at[4].set(0.0)


FUNS = {
    "gather": lambda x: jnp.sum(jnp.sin(x[IDX]) * x[IDX[::-1]]),
    "scatter_add": lambda x: jnp.sum(jnp.sin(x.at[IDX].add(x[:5] ** 2))),
    "scatter_set_duplicates": lambda x: jnp.sum(jnp.sin(x.at[IDX].set(x[1:] ** 2)) * x),
    "cumsum": lambda x: jnp.sum(jnp.sin(jnp.cumsum(x)) * x),
    "cumprod": lambda x: jnp.sum(jnp.cumprod(_with_zeros(x)) ** 2),
    "sort": lambda x: jnp.sum(jnp.sin(jnp.sort(x)) * x),
    "top_k": lambda x: jnp.sum(lax.top_k(x, 3)[0] ** 3),
    "reduce_prod_with_zeros": lambda x: jnp.sum(
        jnp.prod(_with_zeros(x).reshape(2, 3), axis=1) ** 2 + jnp.prod(x) ** 2),
}


def _sum_sq_grad(grad):
    def outer(f):
        return lambda x: jnp.sum(grad(f)(x) ** 2)
    return outer


@pytest.mark.parametrize("outer", ["jax", "funcbp"])
@pytest.mark.parametrize("name", list(FUNS))
def test_gradient_of_gradient_matches_jax(name, outer):
    f = FUNS[name]
    outer_grad = jax.grad if outer == "jax" else funcbp.grad
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(abs(hash(name)) % 2**31), (N,), jnp.float64)
        ours = jax.jit(outer_grad(_sum_sq_grad(funcbp.grad)(f)))(x)
        ref = jax.jit(jax.grad(_sum_sq_grad(jax.grad)(f)))(x)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
