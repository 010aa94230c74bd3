"""VJP rules for gather and the scatter family (``x[idx]``, ``x.at[idx].add/set/multiply``).

Gather and scatter-add are each other's transpose: a gather's cotangent is a scatter-add of
``ct`` into zeros with the matching dimension numbers, and a scatter-add's update cotangent is
a gather of ``ct``. Both keep the primitive's ``mode``, so out-of-bounds windows behave as in
jax: with ``mode=fill`` a window that was filled (gather) or dropped (scatter) gets no
cotangent; ``clip`` clamps the same way in both directions.

``scatter`` (overwrite) with possibly repeated indices follows jax's scheme for deciding which
update won: scatter a distinct id per update, gather the ids back, and let only the updates
that find their own id receive a cotangent; operand positions that were overwritten get none.
"""

from __future__ import annotations

import numpy as np
from jax import lax

from funcbp.autodiff.rules import vjp_rule

__all__: list[str] = []

_CLAMP = lax.GatherScatterMode.PROMISE_IN_BOUNDS  # XLA clamps such gathers


def gather_dnums_for(dnums: lax.ScatterDimensionNumbers) -> lax.GatherDimensionNumbers:
    """The gather that reads back, for every update, the operand window a scatter writes."""
    return lax.GatherDimensionNumbers(
        offset_dims=dnums.update_window_dims,
        collapsed_slice_dims=dnums.inserted_window_dims,
        start_index_map=dnums.scatter_dims_to_operand_dims,
        operand_batching_dims=dnums.operand_batching_dims,
        start_indices_batching_dims=dnums.scatter_indices_batching_dims,
    )


def scatter_dnums_for(dnums: lax.GatherDimensionNumbers) -> lax.ScatterDimensionNumbers:
    """The scatter that writes every gathered window back where it came from."""
    return lax.ScatterDimensionNumbers(
        update_window_dims=dnums.offset_dims,
        inserted_window_dims=dnums.collapsed_slice_dims,
        scatter_dims_to_operand_dims=dnums.start_index_map,
        operand_batching_dims=dnums.operand_batching_dims,
        scatter_indices_batching_dims=dnums.start_indices_batching_dims,
    )


def _window_sizes(operand_ndim: int, updates_shape, dnums: lax.ScatterDimensionNumbers):
    """Slice sizes of the gather matching a scatter: 1 on inserted and batching dims."""
    sizes, window = [], iter(dnums.update_window_dims)
    for d in range(operand_ndim):
        if d in dnums.inserted_window_dims or d in dnums.operand_batching_dims:
            sizes.append(1)
        else:
            sizes.append(updates_shape[next(window)])
    return tuple(sizes)


def gather_windows(ct, indices, updates_shape, dnums, *, mode, indices_are_sorted=False,
                   unique_indices=False):
    """Reads, for each update of a scatter with ``dnums``, the window of ``ct`` it targets.

    Windows that the scatter dropped (out of bounds under ``mode=fill``) read as zeros.
    """
    return lax.gather(ct, indices, gather_dnums_for(dnums),
                      _window_sizes(ct.ndim, updates_shape, dnums),
                      indices_are_sorted=indices_are_sorted, unique_indices=unique_indices,
                      mode=mode, fill_value=0)


@vjp_rule(lax.gather_p, handles_complex=True)
def gather_vjp(ct, x, indices, *, dimension_numbers, indices_are_sorted, unique_indices,
               mode, **params):
    """d x[idx]: scatter-add ct into zeros at the gathered windows (filled windows add nothing)."""
    zeros = lax.full(np.shape(x), 0, ct.dtype)
    return (lax.scatter_add(zeros, indices, ct, scatter_dnums_for(dimension_numbers),
                            indices_are_sorted=indices_are_sorted,
                            unique_indices=unique_indices, mode=mode), None)


def _addsub_vjp(ct, x, indices, updates, sign, dnums, mode, indices_are_sorted, unique_indices):
    def d_updates():
        g = gather_windows(ct, indices, np.shape(updates), dnums, mode=mode,
                           indices_are_sorted=indices_are_sorted, unique_indices=unique_indices)
        return g if sign > 0 else lax.neg(g)
    return (ct, None, d_updates)


@vjp_rule(lax.scatter_add_p, handles_complex=True)
def scatter_add_vjp(ct, x, indices, updates, *, dimension_numbers, indices_are_sorted,
                    unique_indices, mode, **params):
    """d x.at[idx].add(v): ct for x; for v the window of ct each update was added to."""
    return _addsub_vjp(ct, x, indices, updates, +1, dimension_numbers, mode,
                       indices_are_sorted, unique_indices)


@vjp_rule(lax.scatter_sub_p, handles_complex=True)
def scatter_sub_vjp(ct, x, indices, updates, *, dimension_numbers, indices_are_sorted,
                    unique_indices, mode, **params):
    """d x.at[idx].subtract(v): ct for x; for v minus the window of ct it was subtracted from."""
    return _addsub_vjp(ct, x, indices, updates, -1, dimension_numbers, mode,
                       indices_are_sorted, unique_indices)


def _winners(x, indices, updates, dnums, mode, indices_are_sorted):
    """Which operand positions kept their value, and which updates won their position.

    Each update (one id per scatter position, shared by its whole window) writes its id into
    zeros and the ids are gathered back; an update won exactly where it reads its own id. The
    read-back clamps its indices, like ``mode=clip`` scatters do, while a dropped update's id
    is nowhere to be read. This is how jax's JVP of a non-unique scatter decides.
    """
    ids_shape = list(np.shape(updates))
    for d in dnums.update_window_dims:
        ids_shape[d] = 1
    num_ids = int(np.prod(ids_shape))
    id_dtype = np.int32 if num_ids < np.iinfo(np.int32).max else np.int64
    ids = lax.broadcast_in_dim(
        lax.iota(id_dtype, num_ids).reshape(ids_shape) + id_dtype(1), np.shape(updates),
        tuple(range(len(ids_shape))))
    written = lax.scatter(lax.full(np.shape(x), 0, id_dtype), indices, ids, dnums,
                          indices_are_sorted=indices_are_sorted, unique_indices=False, mode=mode)
    read_back = lax.gather(written, indices, gather_dnums_for(dnums),
                           _window_sizes(len(np.shape(x)), np.shape(updates), dnums),
                           indices_are_sorted=indices_are_sorted, mode=_CLAMP)
    return lax.eq(written, lax.full_like(written, 0)), lax.eq(ids, read_back)


@vjp_rule(lax.scatter_p, handles_complex=True)
def scatter_vjp(ct, x, indices, updates, *, dimension_numbers, indices_are_sorted,
                unique_indices, mode, update_jaxpr=None, **params):
    """d x.at[idx].set(v): ct where x survived; for v, ct at the positions each update won."""
    if update_jaxpr is not None:  # x.at[idx].apply(f): the scatter applies f in place
        raise NotImplementedError(
            "funcbp has no gradient for x.at[idx].apply(f) (scatter with an update function; "
            "jax has none either). Write it as x.at[idx].set(f(x[idx])) instead.")
    dnums = dimension_numbers

    def window_ct():
        return gather_windows(ct, indices, np.shape(updates), dnums, mode=mode,
                              indices_are_sorted=indices_are_sorted,
                              unique_indices=unique_indices)

    if unique_indices:  # the caller promised no two updates collide: no winner to find
        def d_x():
            return lax.scatter(ct, indices, lax.full(np.shape(updates), 0, ct.dtype), dnums,
                               indices_are_sorted=indices_are_sorted, unique_indices=True,
                               mode=mode)
        return (d_x, None, window_ct)

    kept, won = None, None

    def masks():
        nonlocal kept, won
        if kept is None:
            kept, won = _winners(x, indices, updates, dnums, mode, indices_are_sorted)
        return kept, won

    def d_x():
        return lax.select(masks()[0], ct, lax.full_like(ct, 0))

    def d_updates():
        g = window_ct()
        return lax.select(masks()[1], g, lax.full_like(g, 0))
    return (d_x, None, d_updates)


@vjp_rule(lax.scatter_mul_p, handles_complex=True)
def scatter_mul_vjp(ct, x, indices, updates, *, dimension_numbers, indices_are_sorted,
                    unique_indices, mode, **params):
    """d x.at[idx].multiply(v): ct scaled by the updates for x; for v_j, ct times the product of
    x and the other updates written to the same position.

    With ``unique_indices=True`` that product is ``x`` alone. With repeated indices (where jax
    refuses) it is ``P / v_j`` for ``P = x * prod(nonzero updates there)`` when no update there is
    zero, ``P`` for the one zero update when exactly one is, and 0 otherwise: exact with zeros.
    """
    dnums = dimension_numbers
    window_kw = dict(mode=mode, indices_are_sorted=indices_are_sorted)

    def d_x():
        return lax.scatter_mul(ct, indices, updates, dnums, indices_are_sorted=indices_are_sorted,
                               unique_indices=unique_indices, mode=mode)

    def d_updates():
        if unique_indices:
            return gather_windows(lax.mul(ct, x), indices, np.shape(updates), dnums,
                                  unique_indices=True, **window_kw)
        zero = lax.eq(updates, lax.full_like(updates, 0))
        one = lax.full_like(updates, 1)
        zeros_at = lax.scatter_add(lax.full(np.shape(x), 0, ct.dtype), indices,
                                   lax.convert_element_type(zero, ct.dtype), dnums, **window_kw)
        nonzero_product = lax.scatter_mul(x, indices, lax.select(zero, one, updates), dnums,
                                          **window_kw)
        ct_product = lax.mul(ct, nonzero_product)
        none_zero = lax.eq(zeros_at, lax.full_like(zeros_at, 0))
        one_zero = lax.eq(zeros_at, lax.full_like(zeros_at, 1))
        blank = lax.full_like(ct_product, 0)
        g_none = gather_windows(lax.select(none_zero, ct_product, blank), indices,
                                np.shape(updates), dnums, **window_kw)
        g_one = gather_windows(lax.select(one_zero, ct_product, blank), indices,
                               np.shape(updates), dnums, **window_kw)
        return lax.select(zero, g_one, lax.div(g_none, lax.select(zero, one, updates)))
    return (d_x, None, d_updates)


def _scatter_extremum_vjp(ct, x, indices, updates, out, dnums, mode, indices_are_sorted):
    # Every contender equal to the result -- the operand value and each update written there --
    # gets an equal share of that position's cotangent (jax's convention for max at ties). An
    # untouched position keeps its value alone, so its share is the whole cotangent.
    window_kw = dict(mode=mode, indices_are_sorted=indices_are_sorted)
    won = lax.eq(updates, gather_windows(out, indices, np.shape(updates), dnums, **window_kw))
    kept = lax.convert_element_type(lax.eq(x, out), ct.dtype)
    winners = lax.scatter_add(lax.full(np.shape(x), 0, ct.dtype), indices,
                              lax.convert_element_type(won, ct.dtype), dnums, **window_kw)
    contenders = lax.max(lax.add(winners, kept), lax.full_like(kept, 1))
    share = lax.div(ct, contenders)

    def d_updates():
        g = gather_windows(share, indices, np.shape(updates), dnums, **window_kw)
        return lax.select(won, g, lax.full_like(g, 0))
    return (lambda: lax.mul(share, kept), None, d_updates)


@vjp_rule(lax.scatter_max_p, handles_complex=True)
def scatter_max_vjp(ct, x, indices, updates, *, out, dimension_numbers, indices_are_sorted,
                    mode, **params):
    """d x.at[idx].max(v): each position's cotangent split equally among the operand value and
    the updates that equal the maximum there (repeated indices and ties included)."""
    return _scatter_extremum_vjp(ct, x, indices, updates, out, dimension_numbers, mode,
                                 indices_are_sorted)


@vjp_rule(lax.scatter_min_p, handles_complex=True)
def scatter_min_vjp(ct, x, indices, updates, *, out, dimension_numbers, indices_are_sorted,
                    mode, **params):
    """d x.at[idx].min(v): each position's cotangent split equally among the operand value and
    the updates that equal the minimum there (repeated indices and ties included)."""
    return _scatter_extremum_vjp(ct, x, indices, updates, out, dimension_numbers, mode,
                                 indices_are_sorted)
