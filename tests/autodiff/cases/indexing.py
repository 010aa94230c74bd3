"""Cases for gather and scatter: integer indexing, take, embeddings, .at[] updates, vmap."""

import jax
import jax.numpy as jnp
import optax
from jax import lax

from tests.autodiff.cases import Case, args, normal


def ints(lo, hi, *shape):
    """Sampler helper: random int32 indices in [lo, hi) (repeats are likely on purpose)."""
    def draw(key, dtype):
        return jax.random.randint(key, shape, lo, hi)
    return draw


def fixed(*values):
    """Sampler helper: a fixed int32 index array (duplicates, out-of-bounds, ...)."""
    def draw(key, dtype):
        return jnp.array(values, jnp.int32)
    return draw


def at(x):
    """``x.at`` that also works on the numpy arrays finite-difference checks pass in."""
    return jnp.asarray(x).at


DUPS = fixed(0, 2, 0, 3, 2, 0)          # repeated rows, one row (1) never touched
OOB = fixed(1, 5, -1, 3, 4, 0, 9)       # in bounds, past the end, negative (out for fill)


def _gather_with_batching_dims(x, idx):
    # operand_batching_dims / start_indices_batching_dims written out by hand
    dnums = lax.GatherDimensionNumbers(
        offset_dims=(2,), collapsed_slice_dims=(1,), start_index_map=(1,),
        operand_batching_dims=(0,), start_indices_batching_dims=(0,))
    return lax.gather(x, idx[..., None], dnums, slice_sizes=(1, 1, 2),
                      mode=lax.GatherScatterMode.CLIP)


def _scatter_with_batching_dims(x, idx, v):
    dnums = lax.ScatterDimensionNumbers(
        update_window_dims=(2,), inserted_window_dims=(1,), scatter_dims_to_operand_dims=(1,),
        operand_batching_dims=(0,), scatter_indices_batching_dims=(0,))
    return lax.scatter(x, idx[..., None], v, dnums, mode=lax.GatherScatterMode.FILL_OR_DROP)


CASES = [
    # --- gather ---
    Case("gather_negative_int_array", lambda x, i: x[i], args(normal(4, 3), ints(-4, 4, 7))),
    Case("gather_columns", lambda x, i: x[:, i], args(normal(3, 4), ints(0, 4, 6))),
    Case("gather_two_index_arrays", lambda x, i, j: x[i, j],
         args(normal(4, 5, 2), ints(0, 4, 2, 3), ints(0, 5, 2, 3))),
    Case("gather_traced_scalar_index", lambda x, i: x[i] * x[i, 0],
         args(normal(4, 3), lambda k, d: jax.random.randint(k, (), -4, 4))),
    Case("take_along_axis", lambda x, i: jnp.take_along_axis(x, i, axis=1),
         args(normal(3, 5), ints(0, 5, 3, 4))),
    Case("embedding_lookup_repeated_tokens", lambda table, tokens: table[tokens],
         args(normal(4, 6), fixed(0, 3, 3, 1, 0, 3, 2, 2))),
    Case("take_fill_rows_out_of_bounds",
         lambda x, i: jnp.take(x, i, axis=0, mode="fill", fill_value=-1.0),
         args(normal(5, 2), OOB)),
    Case("take_clip_out_of_bounds", lambda x, i: jnp.take(x, i, axis=1, mode="clip"),
         args(normal(2, 5), OOB)),
    Case("gather_window_slices", lambda x, i: jax.vmap(
        lambda s: lax.dynamic_slice_in_dim(x, s, 3))(i), args(normal(6, 2), ints(0, 6, 4))),
    Case("gather_vmap_batched", jax.vmap(lambda row, i: row[i]),
         args(normal(3, 5), ints(0, 5, 3, 4))),
    Case("gather_vmap_both_batched_2d", jax.vmap(lambda m, i, j: m[i, j]),
         args(normal(2, 3, 4), ints(0, 3, 2, 5), ints(0, 3, 2, 5))),
    Case("gather_batching_dims_clip", _gather_with_batching_dims,
         args(normal(2, 5, 3), lambda k, d: jnp.array([[1, 7, 0], [4, -2, 3]], jnp.int32))),
    Case("softmax_cross_entropy_integer_labels",
         lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(logits, labels),
         args(normal(4, 5), ints(0, 5, 4))),
    # --- scatter-add / subtract ---
    Case("scatter_add_duplicates", lambda x, i, v: at(x)[i].add(v),
         args(normal(4, 3), DUPS, normal(6, 3))),
    Case("scatter_add_clip", lambda x, i, v: at(x)[i].add(v, mode="clip"),
         args(normal(5), OOB, normal(7))),
    Case("scatter_subtract", lambda x, i, v: at(x)[i].subtract(v),
         args(normal(4, 3), DUPS, normal(6, 3))),
    Case("scatter_add_vmap", jax.vmap(lambda r, i, v: r.at[i].add(v)),
         args(normal(2, 5), ints(0, 5, 2, 4), normal(2, 4))),
    # --- scatter (overwrite) ---
    Case("scatter_set_unique", lambda x, i, v: at(x)[i].set(v),
         args(normal(5, 2), fixed(3, 0, 4), normal(3, 2))),
    Case("scatter_set_duplicates", lambda x, i, v: at(x)[i].set(v),
         args(normal(4, 3), DUPS, normal(6, 3))),
    Case("scatter_set_promised_unique", lambda x, i, v: at(x)[i].set(v, unique_indices=True),
         args(normal(5, 2), fixed(3, 0, 4), normal(3, 2))),
    Case("scatter_set_drop_out_of_bounds", lambda x, i, v: at(x)[i].set(v, mode="drop"),
         args(normal(5), OOB, normal(7))),
    Case("scatter_set_clip_out_of_bounds", lambda x, i, v: at(x)[i].set(v, mode="clip"),
         args(normal(5), OOB, normal(7))),
    Case("scatter_set_columns_duplicates", lambda x, i, v: at(x)[:, i].set(v),
         args(normal(3, 4), fixed(1, 1, 3), normal(3, 3))),
    Case("scatter_set_vmap_duplicates", jax.vmap(lambda r, i, v: r.at[i].set(v)),
         args(normal(2, 5), ints(0, 3, 2, 4), normal(2, 4))),
    Case("scatter_batching_dims_drop", _scatter_with_batching_dims,
         args(normal(2, 5, 3), lambda k, d: jnp.array([[1, 7, 1], [4, -2, 3]], jnp.int32),
              normal(2, 3, 3))),
    # --- scatter-mul ---
    Case("scatter_multiply_unique", lambda x, i, v: at(x)[i].multiply(v, unique_indices=True),
         args(normal(5, 2), fixed(3, 0, 4), normal(3, 2))),
    Case("scatter_multiply_duplicates_operand", lambda x, i: at(x)[i].multiply(
        jnp.arange(-3.0, 3.0, dtype=x.dtype)[:, None] + 0.5),
         args(normal(4, 3), DUPS)),
]


def _grid(*shape):
    """Values in {-2, ..., 2}: the operand and repeated updates tie often."""
    def draw(key, dtype):
        return jax.random.randint(key, shape, -2, 3).astype(dtype)
    return draw


CASES += [
    # --- scatter-max / scatter-min: repeated indices, ties between updates and with the operand
    Case("scatter_max_duplicates_ties", lambda x, i, v: at(x)[i].max(v),
         args(_grid(4, 3), DUPS, _grid(6, 3)), fd=False),
    Case("scatter_min_duplicates_ties", lambda x, i, v: at(x)[i].min(v),
         args(_grid(4, 3), DUPS, _grid(6, 3)), fd=False),
    Case("scatter_max_duplicates", lambda x, i, v: at(x)[i].max(v),
         args(normal(4, 3), DUPS, normal(6, 3))),
    Case("scatter_min_unique_columns", lambda x, i, v: at(x)[:, i].min(v),
         args(normal(3, 5), fixed(4, 0, 2), normal(3, 3))),
    Case("scatter_max_drop_out_of_bounds", lambda x, i, v: at(x)[i].max(v, mode="drop"),
         args(normal(5), OOB, normal(7))),
    Case("scatter_max_vmap_duplicates", jax.vmap(lambda r, i, v: r.at[i].max(v)),
         args(_grid(2, 5), ints(0, 3, 2, 4), _grid(2, 4)), fd=False),
]
