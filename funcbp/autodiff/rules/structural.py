"""VJP rules for primitives that move values around: broadcast, reshape, slice, pad, concat.

These are linear, so each rule is the transpose of its primitive: a broadcast's cotangent is a
sum, a slice's is a zero-padding, a pad's is a (strided) slice, a concatenation's is a split.
Gather and scatter live in :mod:`.indexing`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcbp.autodiff.rules import vjp_rule

__all__: list[str] = []


def _refuse_dynamic_shape(name, dyn_shape):
    # Older jax versions can pass dimension sizes as traced operands (jax_dynamic_shapes); the
    # rules here read every size from static shapes, so they refuse rather than guess.
    if dyn_shape:
        raise NotImplementedError(
            f"funcbp: the '{name}' rule does not support dynamic shapes (the primitive received "
            f"{len(dyn_shape)} traced dimension size(s)); use static shapes.")


# ``sharding`` / ``out_sharding`` parameters say where values live, never what they are, so the
# rules of this module ignore them on purpose; every other parameter is honoured or refused.


@vjp_rule(lax.broadcast_in_dim_p, handles_complex=True)
def broadcast_in_dim_vjp(ct, x, *dyn_shape, shape, broadcast_dimensions, **params):
    """Broadcasting copies values, so its cotangent sums over the copies."""
    _refuse_dynamic_shape("broadcast_in_dim", dyn_shape)
    x_shape = np.shape(x)
    summed = [d for d in range(len(shape)) if d not in broadcast_dimensions]
    summed += [broadcast_dimensions[i] for i, n in enumerate(x_shape)
               if n == 1 and shape[broadcast_dimensions[i]] != 1]
    r = lax.reduce_sum(ct, tuple(sorted(summed))) if summed else ct
    return (r.reshape(x_shape) if r.shape != x_shape else r, *[None] * len(dyn_shape))


@vjp_rule(lax.reshape_p, handles_complex=True)
def reshape_vjp(ct, x, *dyn_shape, dimensions=None, **params):
    """A reshape's cotangent is reshaped back (and un-transposed when ``dimensions`` is given).

    ``reshape(x, sizes, dimensions)`` is ``reshape(transpose(x, dimensions), sizes)`` (this is
    how ``order="F"`` reaches jax), so its transpose is the reshape to the transposed shape
    followed by the inverse permutation.
    """
    _refuse_dynamic_shape("reshape", dyn_shape)
    shape = np.shape(x)
    if dimensions is None or tuple(dimensions) == tuple(range(len(shape))):
        return (ct.reshape(shape),)
    moved = lax.reshape(ct, tuple(shape[d] for d in dimensions))
    return (lax.transpose(moved, tuple(int(d) for d in np.argsort(dimensions))),)


@vjp_rule(lax.squeeze_p, handles_complex=True)
def squeeze_vjp(ct, x, *, dimensions, **params):
    """Squeezing drops size-1 dims; the cotangent gets them back."""
    return (ct.reshape(np.shape(x)),)


@vjp_rule(lax.transpose_p, handles_complex=True)
def transpose_vjp(ct, x, *, permutation, **params):
    """The cotangent is transposed by the inverse permutation."""
    return (lax.transpose(ct, tuple(np.argsort(permutation))),)


@vjp_rule(lax.rev_p, handles_complex=True)
def rev_vjp(ct, x, *, dimensions, **params):
    """Reversal is its own transpose."""
    return (lax.rev(ct, dimensions),)


@vjp_rule(lax.slice_p, handles_complex=True)
def slice_vjp(ct, x, *, start_indices, limit_indices, strides, **params):
    """A (strided) slice's cotangent is zero-padded back to the input's shape."""
    shape = np.shape(x)
    strides = strides or (1,) * len(shape)
    config = []
    for n, start, stride, m in zip(shape, start_indices, strides, ct.shape, strict=True):
        if m == 0:
            config.append((start, n - start, 0))
        else:
            config.append((start, n - (start + (m - 1) * stride + 1), stride - 1))
    return (lax.pad(ct, jnp.zeros((), ct.dtype), config),)


@vjp_rule(lax.pad_p, handles_complex=True)
def pad_vjp(ct, x, padding_value, *, padding_config, **params):
    """pad's cotangent: crop the edges, then take every (interior+1)-th element.

    The padding value receives the sum of the cotangent over every padded position.
    """
    shape = np.shape(x)

    def d_x():
        if 0 in shape:
            return jnp.zeros(shape, ct.dtype)
        crop = [(-lo, -hi, 0) for lo, hi, _ in padding_config]
        unpadded = lax.pad(ct, jnp.zeros((), ct.dtype), crop)
        return lax.slice(unpadded, (0,) * len(shape), unpadded.shape,
                         tuple(interior + 1 for _, _, interior in padding_config))

    def d_value():
        total = lax.reduce_sum(ct, tuple(range(ct.ndim)))
        return total - lax.reduce_sum(d_x(), tuple(range(len(shape))))
    return (d_x, d_value)


@vjp_rule(lax.concatenate_p, handles_complex=True)
def concatenate_vjp(ct, *operands, dimension, **params):
    """A concatenation's cotangent is split back into the pieces."""
    cts, start = [], 0
    for x in operands:
        size = np.shape(x)[dimension]
        cts.append(lax.slice_in_dim(ct, start, start + size, axis=dimension))
        start += size
    return tuple(cts)


if hasattr(lax, "split_p"):
    @vjp_rule(lax.split_p, handles_complex=True)
    def split_vjp(cts, x, *, sizes, axis, **params):
        """split's cotangent concatenates the pieces' cotangents (zeros where none flowed)."""
        shape = list(np.shape(x))
        pieces = []
        for ct, size in zip(cts, sizes, strict=True):
            if ct is None:
                shape[axis] = size
                ct = jnp.zeros(shape, jnp.result_type(x))
            pieces.append(ct)
        return (lax.concatenate(pieces, axis),)


def _clamped(starts, shape, sizes):
    """The start indices the primitives use: clamped into ``[0, dim - size]``.

    The primitives clamp a start of -1 to 0, whereas ``lax.dynamic_slice`` and
    ``lax.dynamic_update_slice`` first wrap a negative start around (-1 becomes dim - 1); the
    rules clamp first so the cotangent lands where the forward read or wrote.
    """
    return [lax.clamp(jnp.zeros((), s.dtype), s, jnp.asarray(d - n, s.dtype))
            for s, d, n in zip((jnp.asarray(s) for s in starts), shape, sizes, strict=True)]


@vjp_rule(lax.dynamic_slice_p, handles_complex=True)
def dynamic_slice_vjp(ct, x, *starts, slice_sizes, **params):
    """The slice's cotangent is written into zeros at the (clamped) start indices."""
    zeros = jnp.zeros(np.shape(x), ct.dtype)
    at = _clamped(starts, np.shape(x), slice_sizes)
    return (lax.dynamic_update_slice(zeros, ct, at), *[None] * len(starts))


@vjp_rule(lax.dynamic_update_slice_p, handles_complex=True)
def dynamic_update_slice_vjp(ct, x, update, *starts, **params):
    """The operand's cotangent has a hole where the update went; the update's is that slice."""
    at = _clamped(starts, np.shape(x), np.shape(update))

    def d_x():
        return lax.dynamic_update_slice(ct, jnp.zeros(np.shape(update), ct.dtype), at)

    def d_update():
        return lax.dynamic_slice(ct, at, np.shape(update))
    return (d_x, d_update, *[None] * len(starts))


# stack, unstack and tile are primitives since jax 0.10 (jnp.stack, jnp.unstack, jnp.tile).

if hasattr(lax, "stack_p"):
    @vjp_rule(lax.stack_p, handles_complex=True)
    def stack_vjp(ct, *operands, axis, **params):
        """stack's cotangent is unstacked: operand i gets ``ct`` at index i along ``axis``."""
        return tuple(lax.unstack_p.bind(ct, axis=axis))

    @vjp_rule(lax.unstack_p, handles_complex=True)
    def unstack_vjp(cts, x, *, axis, **params):
        """unstack's cotangent stacks the pieces' cotangents (zeros where none flowed)."""
        shape = np.shape(x)
        piece = shape[:axis] + shape[axis + 1:]
        dtype = next(ct.dtype for ct in cts if ct is not None)
        pieces = [jnp.zeros(piece, dtype) if ct is None else ct for ct in cts]
        return (lax.stack_p.bind(*pieces, axis=axis),)

if hasattr(lax, "tile_p"):
    @vjp_rule(lax.tile_p, handles_complex=True)
    def tile_vjp(ct, x, *, reps, **params):
        """tile copies ``x`` ``reps[d]`` times along each dim d; the copies' cotangents add up.

        ``out[r * n + i] = x[i]`` along a dim of size ``n``, so ``ct`` reshaped to
        ``(reps_0, n_0, reps_1, n_1, ...)`` is summed over the ``reps`` axes.
        """
        shape = np.shape(x)
        blocks = lax.reshape(ct, tuple(k for r, n in zip(reps, shape, strict=True)
                                       for k in (r, n)))
        return (lax.reduce_sum(blocks, tuple(range(0, 2 * len(shape), 2))),)
