"""Embedding: integer ids to learned vectors."""

from __future__ import annotations

import jax.numpy as jnp

from funcbp.nn import initializers as init_lib
from funcbp.nn.initializers import Initializer
from funcbp.nn.layer import DTypeError, Layer, ShapeError, check_keys

__all__ = ["Embedding"]


def Embedding(num_embeddings: int, features: int, table_init: Initializer | None = None
              ) -> Layer:
    """Look up rows of a table: ``y[..., :] = table[ids[...], :]``, ``table: (num, features)``.

    Ids outside ``[0, num_embeddings)`` are not checked (values are not known at trace time)
    and give NaN rows, as ``jnp.take``'s default ``mode="fill"`` does.

    Args:
      num_embeddings: vocabulary size.
      features: length of each vector.
      table_init: initializer of the table; default ``normal(1.0)``.

    Returns:
      A :class:`~funcbp.nn.Layer` named ``"embedding"``, params ``{"table"}``; input integer
      ids of any shape, output ``ids.shape + (features,)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> emb = nn.Embedding(10, 4)
      >>> _, params = emb.init(jax.random.key(0), (2, 5))
      >>> emb.apply(params, jnp.zeros((2, 5), jnp.int32)).shape
      (2, 5, 4)
    """
    table_init = table_init or init_lib.normal(1.0)

    def init(key, in_shape):
        return tuple(in_shape) + (features,), {"table": table_init(key, (num_embeddings,
                                                                         features))}

    def apply(params, x, *, key=None, train=False):
        check_keys(params, ["table"], "")
        ids = jnp.asarray(x)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise DTypeError("", f"input ids have dtype {ids.dtype}, but Embedding needs "
                                 f"integer ids; cast with ids.astype(jnp.int32)")
        table = params["table"]
        if table.shape != (num_embeddings, features):
            raise ShapeError("", f"{{param}} has shape {table.shape}, but this Embedding was "
                                 f"built for ({num_embeddings}, {features})", "table")
        return jnp.take(table, ids, axis=0)

    return Layer(init, apply, "embedding")
