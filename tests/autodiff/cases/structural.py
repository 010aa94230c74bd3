"""Cases for structural rules: broadcast, reshape, transpose, slicing, padding, concatenation."""

import jax.numpy as jnp
from jax import lax

from tests.autodiff.cases import Case, args, normal

CASES = [
    Case("broadcast_in_dim", lambda x: lax.broadcast_in_dim(x, (2, 3, 4), (1, 2)),
         args(normal(3, 4))),
    Case("broadcast_size_one", lambda x: lax.broadcast_in_dim(x, (3, 4), (0, 1)),
         args(normal(1, 4))),
    Case("broadcast_to_keepdims", lambda x: jnp.broadcast_to(x[:, None, :], (3, 5, 4)),
         args(normal(3, 4))),
    Case("reshape", lambda x: x.reshape(4, 3) * jnp.arange(12.0).reshape(4, 3),
         args(normal(3, 4))),
    Case("squeeze_expand_dims", lambda x: jnp.expand_dims(jnp.squeeze(x, 1), 0),
         args(normal(3, 1, 4))),
    Case("transpose", lambda x: jnp.transpose(x, (2, 0, 1)), args(normal(2, 3, 4))),
    Case("rev", lambda x: x[::-1, ::-1] * jnp.arange(12.0).reshape(3, 4), args(normal(3, 4))),
    Case("slice", lambda x: x[1:3, :2], args(normal(4, 5))),
    Case("slice_strided", lambda x: lax.slice(x, (0, 1), (4, 5), (2, 3)), args(normal(4, 5))),
    Case("slice_empty", lambda x: jnp.sum(x[2:2]) + jnp.sum(x), args(normal(4, 5))),
    Case("pad", lambda x, v: lax.pad(x, v, [(1, 2, 0), (0, 1, 1)]), args(normal(3, 4), normal())),
    Case("pad_negative", lambda x: lax.pad(x, 0.0, [(-1, 2, 1), (1, -2, 0)]), args(normal(3, 4))),
    Case("concatenate", lambda x, y: jnp.concatenate([x, y, x], axis=1),
         args(normal(3, 2), normal(3, 4))),
    Case("split", lambda x: jnp.split(x, [1, 3], axis=1)[1] * 2.0, args(normal(3, 5))),
    Case("split_all_used", lambda x: sum(p.sum() for p in jnp.split(x, 2, axis=0)),
         args(normal(4, 3))),
    Case("dynamic_slice", lambda x: lax.dynamic_slice(x, (jnp.int32(1), jnp.int32(5)), (2, 3)),
         args(normal(4, 5))),
    Case("dynamic_update_slice",
         lambda x, u: lax.dynamic_update_slice(x, u, (jnp.int32(1), jnp.int32(1))),
         args(normal(4, 5), normal(2, 3))),
    # the primitives clamp a negative start to 0 (lax.dynamic_slice would wrap it first)
    Case("dynamic_slice_negative_start", lambda x: lax.dynamic_slice_p.bind(
        x, jnp.int32(-1), jnp.int32(-7), slice_sizes=(2, 3)), args(normal(4, 5))),
    Case("dynamic_update_slice_negative_start", lambda x, u: lax.dynamic_update_slice_p.bind(
        x, u, jnp.int32(-2), jnp.int32(3)), args(normal(4, 5), normal(2, 3))),
]

W24 = jnp.arange(24.0).reshape(4, 6)  # distinct weights: a permuted cotangent cannot pass

CASES += [
    # reshape with `dimensions` (order="F"): the cotangent must be un-transposed, not reshaped
    Case("reshape_ravel_order_f", lambda x: jnp.arange(12.0) * jnp.ravel(x, order="F"),
         args(normal(3, 4))),
    Case("reshape_order_f", lambda x: W24 * jnp.reshape(x, (4, 6), order="F"),
         args(normal(2, 3, 4))),
    Case("reshape_lax_dimensions", lambda x: W24 * lax.reshape(x, (4, 6), (2, 0, 1)),
         args(normal(2, 3, 4))),
    Case("reshape_dimensions_size1_empty", lambda x, y: (
        lax.reshape(x, (3, 1, 2), (1, 0, 2)), lax.reshape(y, (0, 2), (1, 0))),
         args(normal(1, 3, 2), normal(2, 0))),
    # stack / unstack / tile (primitives since jax 0.10)
    Case("stack", lambda x, y: jnp.stack([x, y * x, x], axis=1), args(normal(3, 4), normal(3, 4))),
    Case("stack_last_axis_single", lambda x: jnp.stack([x], axis=-1) * 2.0, args(normal(3, 2))),
    Case("stack_empty", lambda x, y: jnp.stack([x, y]), args(normal(0, 3), normal(0, 3))),
    Case("unstack_some_unused", lambda x: (lambda p: p[2] * p[0])(jnp.unstack(x, axis=1)),
         args(normal(3, 4))),
    Case("unstack_size1", lambda x: jnp.unstack(x, axis=0)[0] * 3.0, args(normal(1, 4))),
    Case("tile", lambda x: jnp.tile(x, (2, 1, 3)) * jnp.arange(36.0).reshape(2, 2, 9),
         args(normal(2, 3))),
    Case("tile_size1_and_zero_reps", lambda x, y: (jnp.tile(x, (3, 2)), jnp.tile(y, (0, 2))),
         args(normal(1, 2), normal(2, 3))),
]
