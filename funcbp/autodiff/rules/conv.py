"""VJP rules for convolutions and windowed reductions (pooling).

Per spatial dimension, ``conv_general_dilated`` dilates the input ``x`` by ``ld`` (lhs
dilation), pads it by ``(lo, hi)`` to a length ``P = (n - 1) ld + 1 + lo + hi`` and correlates it
with the kernel dilated by ``rd`` (rhs dilation, extent ``K = (k - 1) rd + 1``) at stride ``s``::

    out[o] = sum_j xp[o s + j rd] w[j],    o < m = (P - K) // s + 1,    r = P - K - (m - 1) s

(``r`` is the tail of ``xp`` that no window reaches). Both cotangents are convolutions again:

* ``d x``: the output cotangent dilated by ``s``, padded by ``(K - 1 - lo, K - 1 - hi + r)``,
  correlated with the spatially reversed kernel (in/out features swapped) at stride ``ld``.
* ``d w``: ``x`` correlated with the output cotangent used as the kernel: lhs dilation stays
  ``ld``, the cotangent is dilated by ``s`` and the window steps by ``rd``; padding
  ``(lo, hi - r)``. Batch and feature axes trade places, so the contraction runs over the batch.

Groups: the ``d x`` convolution keeps ``feature_group_count`` (the kernel's group axis moves from
its output to its input features); feature groups become batch groups in the ``d w`` convolution
and vice versa. Batch groups sit group-major on the batch axis (XLA's convention). On CPU, the
``d w`` convolution of a batch of 64 or more is summed over slices of 16+ samples, which XLA runs
up to 3x faster than the whole batch at once.

Pooling rules scatter each window's cotangent back with ``lax.pad`` (interior padding
``stride - 1``), one pad per offset in the window, or, for non-overlapping windows, with a
reshape into ``(out, window)`` blocks. Max/min pooling gives each window's cotangent to the FIRST
extreme element in row-major window order, as jax's ``select_and_scatter_add`` does; we never emit
``select_and_scatter_add`` (slow on XLA's CPU backend) nor ``scatter``.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcbp.autodiff.rules import vjp_rule

__all__: list[str] = []


# --- convolution -------------------------------------------------------------------------------

def _conv_tail(n, k, m, stride, lo, hi, ld, rd):
    """``r``: how far the padded, dilated input reaches past the last window (see module doc)."""
    padded = (n - 1) * ld + 1 + lo + hi
    return padded - ((k - 1) * rd + 1) - (m - 1) * stride


def _ungroup(x, axis, groups, before):
    """Splits ``axis`` (size ``groups * n``, group-major) and merges the groups into ``before``."""
    shape = list(x.shape)
    split = shape[:axis] + [groups, shape[axis] // groups] + shape[axis + 1:]
    x = x.reshape(split)
    # axes of ``split``: the group axis sits at ``axis``; everything after it shifted by one
    dst = before if before < axis else before + 1
    order = [d for d in range(len(split)) if d != axis]
    order.insert(order.index(dst), axis)
    x = lax.transpose(x, tuple(order))
    merged = list(np.asarray(split)[order])
    at = order.index(axis)
    merged[at:at + 2] = [merged[at] * merged[at + 1]]
    return x.reshape(merged)


def _in_dtype_of(ct, a):
    """``a`` cast to the cotangent's dtype: with ``preferred_element_type`` (bf16 inputs, f32
    output) the backward convolutions run in the output's precision, as jax's do. An explicit
    cast, not ``jnp.result_type``, so it works under ``jax_numpy_dtype_promotion="strict"``."""
    return a if a.dtype == ct.dtype else lax.convert_element_type(a, ct.dtype)


def _conv_lhs_ct(ct, lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
                 dimension_numbers, feature_group_count, batch_group_count, precision):
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    nsp = len(window_strides)
    groups = max(feature_group_count, batch_group_count)
    # kernel as [O, I, *spatial], then its group axis moves from O to I: [O/g, g * I, *spatial]
    w = lax.transpose(rhs, tuple(rhs_spec))
    o, i, *ksize = w.shape
    w = w.reshape(groups, o // groups, i, *ksize)
    w = lax.transpose(w, (1, 0, *range(2, w.ndim))).reshape(o // groups, groups * i, *ksize)
    w = lax.rev(w, tuple(range(2, 2 + nsp)))
    lhs_sp = [lhs.shape[d] for d in lhs_spec[2:]]
    out_sp = [ct.shape[d] for d in out_spec[2:]]
    pads = []
    for n, k, m, s, (lo, hi), ld, rd in zip(lhs_sp, ksize, out_sp, window_strides, padding,
                                            lhs_dilation, rhs_dilation, strict=True):
        extent = (k - 1) * rd + 1
        pads.append((extent - 1 - lo, extent - 1 - hi + _conv_tail(n, k, m, s, lo, hi, ld, rd)))
    w = _in_dtype_of(ct, w)
    dx = lax.conv_general_dilated(
        ct, w, window_strides=lhs_dilation, padding=pads, lhs_dilation=window_strides,
        rhs_dilation=rhs_dilation,
        dimension_numbers=lax.ConvDimensionNumbers(
            tuple(out_spec), (1, 0, *range(2, 2 + nsp)), tuple(lhs_spec)),
        feature_group_count=groups, precision=precision)
    if batch_group_count > 1:  # [N/g, g * C] -> [N, C]
        dx = _ungroup(dx, lhs_spec[1], batch_group_count, before=lhs_spec[0])
    return dx


def _conv_rhs_ct(ct, lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
                 dimension_numbers, feature_group_count, batch_group_count, precision):
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    lhs_sp = [lhs.shape[d] for d in lhs_spec[2:]]
    ksize = [rhs.shape[d] for d in rhs_spec[2:]]
    out_sp = [ct.shape[d] for d in out_spec[2:]]
    pads = [(lo, hi - _conv_tail(n, k, m, s, lo, hi, ld, rd))
            for n, k, m, s, (lo, hi), ld, rd in zip(lhs_sp, ksize, out_sp, window_strides,
                                                    padding, lhs_dilation, rhs_dilation,
                                                    strict=True)]

    def swap(spec):
        return (spec[1], spec[0], *spec[2:])

    def d_w(x, ct):
        return lax.conv_general_dilated(
            x, ct, window_strides=rhs_dilation, padding=pads, lhs_dilation=lhs_dilation,
            rhs_dilation=window_strides,
            dimension_numbers=lax.ConvDimensionNumbers(swap(lhs_spec), swap(out_spec),
                                                       swap(rhs_spec)),
            feature_group_count=batch_group_count, batch_group_count=feature_group_count,
            precision=precision)
    x = _in_dtype_of(ct, lhs)
    batch = x.shape[lhs_spec[0]]
    chunk = _batch_chunk(batch) if batch_group_count == 1 else None
    if chunk is None:
        return d_w(x, ct)
    # The batch is this convolution's contraction; XLA's CPU backend runs it 2-3x faster as a
    # sum over slices of a few samples than in one piece (see _batch_chunk for figures).
    total = None
    for start in range(0, batch, chunk):
        stop = min(batch, start + chunk)
        piece = d_w(lax.slice_in_dim(x, start, stop, axis=lhs_spec[0]),
                    lax.slice_in_dim(ct, start, stop, axis=out_spec[0]))
        total = piece if total is None else total + piece
    return total


def _batch_chunk(batch):
    """Samples per slice for the kernel's cotangent on CPU (None: one piece); see above."""
    if batch < _CHUNKED_BATCH or jax.default_backend() != "cpu":
        return None
    # Slices of 16 samples, at most 8 slices. Measured on a 2-core CPU for the benchmark CNN's
    # kernel cotangents (batch 128; 1->32 and 32->64 channels, 3x3): one piece 3.9 / 30 ms;
    # slices of 8: 2.2 / 10.1 ms; of 16: 2.9 / 10.4 ms; of 32: 2.9 / 17 ms. Slices of 16 keep
    # nearly all the gain with half the equations of slices of 8, whose compile time was
    # 1.5x jax.grad's for the whole train step.
    return max(16, -(-batch // 8))


_CHUNKED_BATCH = 64  # smaller batches run as fast in one piece


@vjp_rule(lax.conv_general_dilated_p, handles_complex=True)
def conv_general_dilated_vjp(ct, lhs, rhs, *, out, window_strides, padding, lhs_dilation,
                             rhs_dilation, dimension_numbers, feature_group_count,
                             batch_group_count, precision, preferred_element_type=None,
                             **params):
    """d conv(x, w): d x = conv(dilate(ct), rev(w)^T), d w = conv(x^T, ct) (see module doc)."""
    kw = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
              rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
              feature_group_count=feature_group_count, batch_group_count=batch_group_count,
              precision=precision)
    if 0 in np.shape(ct) or 0 in np.shape(lhs) or 0 in np.shape(rhs):  # nothing to pull back
        return (lambda: jnp.zeros(np.shape(lhs), ct.dtype),
                lambda: jnp.zeros(np.shape(rhs), ct.dtype))
    return (lambda: _conv_lhs_ct(ct, lhs, rhs, **kw), lambda: _conv_rhs_ct(ct, lhs, rhs, **kw))


# --- windowed reductions -------------------------------------------------------------------------

def _window_offsets(window_dimensions, window_dilation):
    """Start of every window element in row-major window order (the order jax selects in)."""
    ranges = [range(0, w * d, d) for w, d in zip(window_dimensions, window_dilation, strict=True)]
    return list(itertools.product(*ranges))


def _dilate_and_pad(x, value, padding, base_dilation):
    config = [(lo, hi, d - 1) for (lo, hi), d in zip(padding, base_dilation, strict=True)]
    if all(c == (0, 0, 0) for c in config):
        return x
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def _undilate_and_unpad(g, padding, base_dilation):
    """Transpose of :func:`_dilate_and_pad` (which padded with a constant)."""
    if all(p == (0, 0) for p in padding) and all(d == 1 for d in base_dilation):
        return g
    g = lax.pad(g, jnp.zeros((), g.dtype), [(-lo, -hi, 0) for lo, hi in padding])
    if any(d != 1 for d in base_dilation):
        g = lax.slice(g, (0,) * g.ndim, g.shape, tuple(base_dilation))
    return g


def _window_view(xp, start, out_shape, window_strides):
    """The elements of ``xp`` that window offset ``start`` sees, one per output position."""
    limit = [b + (m - 1) * s + 1 for b, m, s in zip(start, out_shape, window_strides, strict=True)]
    return lax.slice(xp, start, limit, window_strides)


def _scatter_window(c, start, padded_shape, window_strides):
    """Transpose of :func:`_window_view`: places ``c`` back at the positions it was read from."""
    config = [(b, p - b - (m - 1) * s - 1, s - 1)
              for b, p, m, s in zip(start, padded_shape, c.shape, window_strides, strict=True)]
    return lax.pad(c, jnp.zeros((), c.dtype), config)


def _is_tiling(window_dimensions, window_strides, base_dilation, window_dilation):
    """True when windows neither overlap nor skip: stride == window, no dilation."""
    return (all(w == s for w, s in zip(window_dimensions, window_strides, strict=True))
            and all(d == 1 for d in (*base_dilation, *window_dilation)))


def _blocks(xp, out_shape, window_dimensions):
    """Crops ``xp`` to the tiled region and reshapes it to ``(m_1, w_1, m_2, w_2, ...)``."""
    covered = [m * w for m, w in zip(out_shape, window_dimensions, strict=True)]
    if list(xp.shape) != covered:
        xp = lax.slice(xp, (0,) * xp.ndim, covered)
    return xp.reshape([d for mw in zip(out_shape, window_dimensions, strict=True) for d in mw])


def _unblock(c, padded_shape):
    """Transpose of :func:`_blocks`: ``(m_1, w_1, ...)`` blocks back to the padded shape."""
    covered = [c.shape[2 * i] * c.shape[2 * i + 1] for i in range(c.ndim // 2)]
    c = c.reshape(covered)
    if covered != list(padded_shape):
        c = lax.pad(c, jnp.zeros((), c.dtype),
                    [(0, p - n, 0) for n, p in zip(covered, padded_shape, strict=True)])
    return c


def _interleave_out(ct, ndim):
    """``(m_1, m_2, ...)`` -> ``(m_1, 1, m_2, 1, ...)``, to broadcast against blocks."""
    return ct.reshape([d for m in ct.shape for d in (m, 1)][:2 * ndim])


@vjp_rule(lax.reduce_window_sum_p, handles_complex=True)
def reduce_window_sum_vjp(ct, x, *, window_dimensions, window_strides, padding, base_dilation,
                          window_dilation, **params):
    """d window_sum(x): every element gets the sum of the cotangents of the windows holding it."""
    xp_shape = _padded_shape(np.shape(x), padding, base_dilation)
    if 0 in ct.shape or 0 in np.shape(x):
        return (jnp.zeros(np.shape(x), ct.dtype),)
    if _is_tiling(window_dimensions, window_strides, base_dilation, window_dilation):
        blocks = [d for m, w in zip(ct.shape, window_dimensions, strict=True) for d in (m, w)]
        g = _unblock(lax.broadcast_in_dim(_interleave_out(ct, ct.ndim), blocks,
                                          tuple(range(2 * ct.ndim))), xp_shape)
        return (_undilate_and_unpad(g, padding, base_dilation),)
    if np.prod(window_dimensions) <= _MANY_OFFSETS:
        # Overlapping windows, small: one strided zero-padding of the cotangent per window
        # offset, summed; XLA fuses these into one pass (~10x faster than reduce_window on CPU).
        g = None
        for start in _window_offsets(window_dimensions, window_dilation):
            piece = _scatter_window(ct, start, xp_shape, window_strides)
            g = piece if g is None else g + piece
        return (_undilate_and_unpad(g, padding, base_dilation),)
    # Large overlapping windows: dilate the cotangent by the stride, then sum every window of it
    # (as wide as the forward window) that lands on a position of the dilated, padded input.
    config = []
    for p, m, s, w, d in zip(xp_shape, ct.shape, window_strides, window_dimensions,
                             window_dilation, strict=True):
        extent = (w - 1) * d + 1
        config.append((extent - 1, p - (m - 1) * s - 1, s - 1))
    spread = lax.pad(ct, jnp.zeros((), ct.dtype), config)
    g = lax.reduce_window_sum_p.bind(
        spread, window_dimensions=tuple(window_dimensions), window_strides=(1,) * ct.ndim,
        padding=((0, 0),) * ct.ndim, base_dilation=(1,) * ct.ndim,
        window_dilation=tuple(window_dilation))
    return (_undilate_and_unpad(g, padding, base_dilation),)


def _padded_shape(shape, padding, base_dilation):
    return tuple(((n - 1) * d + 1 if n else 0) + lo + hi
                 for n, (lo, hi), d in zip(shape, padding, base_dilation, strict=True))


_MANY_OFFSETS = 16  # above this many elements per tile, max-pool uses the block form


def _chooser_vjp(ct, x, is_max, init, window_dimensions, window_strides, padding, base_dilation,
                 window_dilation):
    # Each window's cotangent goes to its FIRST extreme element in row-major window order (what
    # jax's select_and_scatter_add picks); padding and dilation holes hold ``init`` as in jax.
    # The winner is found by a running comparison over the window's offsets, never by testing
    # equality with the pooled output: under jit XLA may recompute a fused producer of x with
    # different rounding on the two sides of such a test, and then no element "equals" the max.
    shape = np.shape(x)
    if 0 in ct.shape or 0 in shape:
        return jnp.zeros(shape, ct.dtype)
    xp = _dilate_and_pad(x, init, padding, base_dilation)
    zero = jnp.zeros((), ct.dtype)
    if (_is_tiling(window_dimensions, window_strides, base_dilation, window_dilation)
            and np.prod(window_dimensions) > _MANY_OFFSETS):
        # Large tiles (global pooling): one pass over (out, window) blocks; argmax/argmin
        # return the first extreme in row-major window order. A loop would cost O(window).
        nd = ct.ndim
        blocks = _blocks(xp, ct.shape, window_dimensions)          # (m1, w1, m2, w2, ...)
        perm = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
        flat = lax.transpose(blocks, perm).reshape(ct.shape + (-1,))
        first = (jnp.argmax if is_max else jnp.argmin)(flat, axis=-1)
        take = lax.broadcasted_iota(jnp.int32, flat.shape, nd) == first[..., None]
        g = jnp.where(take, ct[..., None], zero).reshape(
            ct.shape + tuple(window_dimensions))
        g = lax.transpose(g, tuple(np.argsort(perm)))
        return _undilate_and_unpad(_unblock(g, xp.shape), padding, base_dilation)
    # One strided view of the input per window offset, in window order; `best` is the extreme
    # so far and `arg` the offset holding it (strict comparison: earlier offsets win ties).
    offsets = _window_offsets(window_dimensions, window_dilation)
    best, arg = None, None
    for k, start in enumerate(offsets):
        view = _window_view(xp, start, ct.shape, window_strides)
        if best is None:
            best, arg = view, jnp.zeros(ct.shape, jnp.int32)
            continue
        better = view > best if is_max else view < best
        best = jnp.where(better, view, best)
        arg = jnp.where(better, np.int32(k), arg)
    g = None
    for k, start in enumerate(offsets):
        piece = _scatter_window(jnp.where(arg == k, ct, zero), start, xp.shape, window_strides)
        g = piece if g is None else g + piece
    return _undilate_and_unpad(g, padding, base_dilation)


@vjp_rule(lax.reduce_window_max_p)
def reduce_window_max_vjp(ct, x, *, out, window_dimensions, window_strides, padding,
                          base_dilation, window_dilation, **params):
    """d max-pool: each window's cotangent to its first maximum (jax's choice at ties)."""
    return (_chooser_vjp(ct, x, True, -np.inf, window_dimensions, window_strides,
                         padding, base_dilation, window_dilation),)


@vjp_rule(lax.reduce_window_min_p)
def reduce_window_min_vjp(ct, x, *, out, window_dimensions, window_strides, padding,
                          base_dilation, window_dilation, **params):
    """d min-pool: each window's cotangent to its first minimum (jax's choice at ties)."""
    return (_chooser_vjp(ct, x, False, np.inf, window_dimensions, window_strides,
                         padding, base_dilation, window_dilation),)
