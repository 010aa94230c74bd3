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
]
