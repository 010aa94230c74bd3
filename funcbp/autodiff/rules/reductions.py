"""VJP rules for reductions: sum, max, min, prod, cumulative ops, sort and top_k."""

from __future__ import annotations

import jax
import numpy as np
from jax import lax
from jax._src.lax.other import logaddexp as _logaddexp  # the combine jax's cumlogsumexp uses

from funcbp.autodiff.rules import register_vjp_rule, vjp_rule

__all__: list[str] = []


def _kept(ndim, axes):
    return tuple(d for d in range(ndim) if d not in axes)


@vjp_rule(lax.reduce_sum_p, handles_complex=True)
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


@vjp_rule(lax.reduce_max_p, handles_complex=True)
def reduce_max_vjp(ct, x, *, out, axes, **params):
    """d max(x) goes to the maximal elements, split equally among ties."""
    return _chooser_vjp(ct, x, out, axes)


@vjp_rule(lax.reduce_min_p, handles_complex=True)
def reduce_min_vjp(ct, x, *, out, axes, **params):
    """d min(x) goes to the minimal elements, split equally among ties."""
    return _chooser_vjp(ct, x, out, axes)


# --- products -----------------------------------------------------------------------------------

def _exclusive_products(x, axis):
    """prod_{j != i} x_j along ``axis``, from prefix and suffix products (no division)."""
    if x.shape[axis] == 0:
        return x
    one = lax.full((), 1, x.dtype)
    shifted_right = lax.pad(x, one, [(1, -1, 0) if d == axis else (0, 0, 0)
                                     for d in range(x.ndim)])
    shifted_left = lax.pad(x, one, [(-1, 1, 0) if d == axis else (0, 0, 0)
                                    for d in range(x.ndim)])
    return lax.cumprod(shifted_right, axis) * lax.cumprod(shifted_left, axis, reverse=True)


@vjp_rule(lax.reduce_prod_p, handles_complex=True)
def reduce_prod_vjp(ct, x, *, axes, **params):
    """d prod(x) / dx_i = prod_{j != i} x_j: exact with any number of zeros."""
    shape = np.shape(x)
    kept = _kept(len(shape), axes)
    perm = kept + tuple(axes)
    flat = lax.transpose(x, perm).reshape(
        tuple(shape[d] for d in kept) + (int(np.prod([shape[d] for d in axes])),))
    others = _exclusive_products(flat, flat.ndim - 1)
    others = lax.transpose(others.reshape(tuple(shape[d] for d in perm)),
                           tuple(np.argsort(perm)))
    return (others * lax.broadcast_in_dim(ct, shape, kept),)


# --- cumulative ops -----------------------------------------------------------------------------

@vjp_rule(lax.cumsum_p, handles_complex=True)
def cumsum_vjp(ct, x, *, axis, reverse, **params):
    """cumsum is linear; its transpose is the cumsum running the other way."""
    return (lax.cumsum(ct, axis, reverse=not reverse),)


def _interp():
    from funcbp.autodiff import interpreter  # the interpreter imports this package

    return interpreter


def _register_scan(primitive, combine, handles_complex=False):
    """cumprod/cummax/cummin/cumlogsumexp, differentiated through a parallel prefix scan.

    jax differentiates these through ``lax.associative_scan(combine, ...)``, so its ties
    (``max``/``min`` split equal values half and half at every combine) and its treatment of
    zeros in products come from that scan's tree. funcbp walks the very same decomposition
    with its own rules, which reproduces jax's results exactly and stays differentiable.
    """
    def forward(x, *, needs, axis, reverse, **params):
        closed = jax.make_jaxpr(
            lambda v: lax.associative_scan(combine, v, axis=axis, reverse=reverse))(x)
        (out,), record = _interp().forward(closed.jaxpr, list(closed.consts), [x], [True])
        return out, record

    def scan_vjp(ct, x, *, res, **params):
        return (_interp().backward(res, [ct])[0],)

    scan_vjp.__name__ = scan_vjp.__qualname__ = f"{primitive.name}_vjp"
    scan_vjp.__doc__ = (f"d {primitive.name}: reverse walk of the associative scan of "
                        f"{getattr(combine, '__name__', 'combine')}, as jax differentiates it.")
    register_vjp_rule(primitive, scan_vjp, forward=forward, handles_complex=handles_complex)


_register_scan(lax.cumprod_p, lax.mul, handles_complex=True)
_register_scan(lax.cummax_p, lax.max, handles_complex=True)
_register_scan(lax.cummin_p, lax.min, handles_complex=True)
_register_scan(lax.cumlogsumexp_p, _logaddexp, handles_complex=True)


# --- sorting ------------------------------------------------------------------------------------

def _scatter_add_along(ct, idx, axis, shape):
    """zeros(shape) with ``ct[..., j, ...]`` added at ``idx[..., j, ...]`` along ``axis``."""
    batch = tuple(d for d in range(len(shape)) if d != axis)
    dnums = lax.ScatterDimensionNumbers(
        update_window_dims=(), inserted_window_dims=(axis,), scatter_dims_to_operand_dims=(axis,),
        operand_batching_dims=batch, scatter_indices_batching_dims=batch)
    return lax.scatter_add(lax.full(shape, 0, ct.dtype), lax.expand_dims(idx, (len(shape),)), ct,
                           dnums, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def sort_forward(*operands, needs, dimension, is_stable, num_keys):
    """Sorts an iota alongside the operands (as a non-key) to keep the permutation."""
    shape = np.shape(operands[0])
    iota = lax.broadcasted_iota(np.int32, shape, dimension)
    outs = lax.sort_p.bind(*operands, iota, dimension=dimension, is_stable=is_stable,
                           num_keys=num_keys)
    return outs[:-1], outs[-1]


@vjp_rule(lax.sort_p, forward=sort_forward, handles_complex=True)
def sort_vjp(cts, *operands, res, needs, dimension, **params):
    """Each operand's cotangent is its output's, sent back through the sorting permutation."""
    shape = np.shape(operands[0])
    return tuple(
        None if ct is None or not need else _scatter_add_along(ct, res, dimension, shape)
        for ct, need in zip(cts, needs, strict=True))


@vjp_rule(lax.top_k_p)
def top_k_vjp(cts, x, *, out, axis, **params):
    """d top_k: each selected value's cotangent goes back to the position it was taken from."""
    ct = cts[0]
    if ct is None:
        return (None,)
    return (_scatter_add_along(ct, out[1], axis, np.shape(x)),)


@vjp_rule(lax.approx_top_k_p)
def approx_top_k_vjp(cts, x, *, out, reduction_dimension, **params):
    """d approx_max_k / approx_min_k: each value's cotangent goes back to where it was taken.

    ``k``, ``is_max_k``, ``recall_target``, ``reduction_input_size_override`` and
    ``aggregate_to_topk`` only decide which positions are selected; the returned indices say
    which were, so the rule reads them instead of repeating the selection.
    """
    ct = cts[0]
    if ct is None:
        return (None,)
    axis = reduction_dimension % np.ndim(x)
    return (_scatter_add_along(ct, out[1], axis, np.shape(x)),)


# --- lax.reduce with a custom reducer -----------------------------------------------------------

def _reduce_tree(reducer, dimensions, operands, inits):
    """``lax.reduce`` as jax differentiates it: the reducer applied pairwise in a halving tree.

    The reduced axes are moved to the front and flattened; each step combines the first half
    with the second (element ``i`` with element ``ceil(n/2) + i``), padding the second half with
    the init values when ``n`` is odd, until one row is left. With a reducer that picks (a max,
    an argmax) this tree decides the ties, so funcbp walks the same tree as jax's JVP.
    """
    shape = np.shape(operands[0])
    kept = _kept(len(shape), dimensions)
    out_shape = tuple(shape[d] for d in kept)
    n = int(np.prod([shape[d] for d in dimensions], dtype=np.int64))
    m = int(np.prod(out_shape, dtype=np.int64))
    perm = tuple(dimensions) + kept
    xs = [lax.reshape(lax.transpose(x, perm), (n, m)) for x in operands]
    combine = jax.vmap(reducer)
    while n > 1:
        half = (n + 1) // 2
        first = [lax.slice_in_dim(x, 0, half) for x in xs]
        second = [lax.slice_in_dim(x, half, n) for x in xs]
        if n - half != half:
            second = [lax.pad(x, i, ((0, 1, 0), (0, 0, 0))) for x, i in zip(second, inits,
                                                                              strict=True)]
        flat = combine(*[lax.reshape(x, (half * m,)) for x in first + second])
        xs, n = [lax.reshape(y, (half, m)) for y in flat], half
    if n == 0:
        return [lax.broadcast_in_dim(i, out_shape, ()) for i in inits]
    return [lax.reshape(x, out_shape) for x in xs]


def reduce_forward(*args, needs, jaxpr, dimensions, **params):
    """Runs the reduction tree of :func:`_reduce_tree` through funcbp's interpreter."""
    k = len(args) // 2
    if any(needs[k:]):
        raise NotImplementedError(
            "funcbp: lax.reduce is differentiated with respect to its operands only, not its "
            "init_values (as in jax); the init values must not depend on what is "
            "differentiated. Use constants as init values and combine afterwards.")
    from jax.extend.core import jaxpr_as_fun

    reducer = jaxpr_as_fun(jaxpr)
    closed = jax.make_jaxpr(
        lambda *a: _reduce_tree(reducer, dimensions, a[:k], a[k:]))(*args)
    return _interp().forward(closed.jaxpr, list(closed.consts), list(args), list(needs))


@vjp_rule(lax.reduce_p, forward=reduce_forward)
def reduce_vjp(cts, *args, res, **params):
    """d lax.reduce(f): reverse walk of the pairwise tree of ``f`` that jax's JVP builds.

    ``jaxpr`` (the reducer) and ``dimensions`` shape the tree; ``computation`` is the Python
    function the jaxpr was traced from and adds nothing.
    """
    return tuple(_interp().backward(res, list(cts)))
