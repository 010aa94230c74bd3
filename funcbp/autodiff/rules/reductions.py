"""VJP rules for reductions: sum, max, min (cumulative ops, sort and products follow)."""

from __future__ import annotations

import numpy as np
from jax import lax

from funcbp.autodiff.rules import vjp_rule

__all__: list[str] = []


def _kept(ndim, axes):
    return tuple(d for d in range(ndim) if d not in axes)


@vjp_rule(lax.reduce_sum_p)
def reduce_sum_vjp(ct, x, *, axes, **params):
    """d sum(x) = broadcast of the cotangent over the summed axes."""
    shape = np.shape(x)
    return (lax.broadcast_in_dim(ct, shape, _kept(len(shape), axes)),)


def _chooser_vjp(ct, x, out, axes):
    # Every element equal to the result shares the cotangent equally (jax's convention).
    shape = np.shape(x)
    kept = _kept(len(shape), axes)
    winners = lax.eq(x, lax.broadcast_in_dim(out, shape, kept)).astype(ct.dtype)
    count = lax.reduce_sum(winners, axes)
    return (winners * lax.broadcast_in_dim(ct / count, shape, kept),)


@vjp_rule(lax.reduce_max_p)
def reduce_max_vjp(ct, x, *, out, axes, **params):
    """d max(x) goes to the maximal elements, split equally among ties."""
    return _chooser_vjp(ct, x, out, axes)


@vjp_rule(lax.reduce_min_p)
def reduce_min_vjp(ct, x, *, out, axes, **params):
    """d min(x) goes to the minimal elements, split equally among ties."""
    return _chooser_vjp(ct, x, out, axes)
