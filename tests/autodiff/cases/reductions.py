"""Cases for reductions."""

import jax
import jax.numpy as jnp
from jax import lax

from tests.autodiff.cases import Case, args, normal, uniform
from tests.autodiff.cases.elementwise import ties

CASES = [
    Case("reduce_sum", lambda x: jnp.sum(x, axis=1), args(normal(3, 4))),
    Case("reduce_sum_all", lambda x: jnp.sum(x), args(normal(3, 4))),
    Case("mean_keepdims", lambda x: x - jnp.mean(x, axis=0, keepdims=True), args(normal(3, 4))),
    Case("reduce_max", lambda x: jnp.max(x, axis=0), args(normal(3, 4))),
    Case("reduce_max_ties", lambda x: jnp.max(x, axis=1), args(ties(3, 6)), fd=False),
    Case("reduce_min_ties", lambda x: jnp.min(x, axis=(0, 1)), args(ties(3, 4)), fd=False),
    Case("logsumexp", lambda x: jax.nn.logsumexp(x, axis=-1), args(normal(3, 4))),
    Case("softmax", lambda x: jax.nn.softmax(x, axis=-1), args(normal(3, 4))),
]


def _rows_with_zeros(key, dtype):
    """A (3, 4) matrix whose rows hold no zero, one zero and two zeros."""
    x = jax.random.uniform(key, (3, 4), dtype, 0.5, 1.5) * jnp.array([1, -1, 1, -1], dtype)
    return x.at[1, 2].set(0).at[2, 0].set(0).at[2, 3].set(0)


def _zeros_in_sequence(key, dtype):
    """Rows for cumprod: no zero, a zero in the middle, two zeros."""
    return (_rows_with_zeros(key, dtype),)


def _sort_two(keys, values):
    return lax.sort((keys, values), dimension=1, num_keys=1)


def _sort_two_keys(k1, k2, values):
    return lax.sort((k1, k2, values), dimension=0, num_keys=2)


CASES += [
    # --- products ---
    Case("prod_rows_zero_one_two_zeros", lambda x: jnp.prod(x, axis=1), _zeros_in_sequence),
    Case("prod_columns_with_zeros", lambda x: jnp.prod(x, axis=0), _zeros_in_sequence),
    Case("prod_all_3d", lambda x: jnp.prod(x, axis=(0, 2)), args(uniform(0.5, 1.5, 2, 3, 2))),
    # --- cumulative ---
    Case("cumsum", lambda x: jnp.cumsum(x, axis=1), args(normal(3, 4))),
    Case("cumsum_reverse", lambda x: lax.cumsum(x, axis=0, reverse=True), args(normal(3, 4))),
    Case("cumprod_with_zeros", lambda x: jnp.cumprod(x, axis=1), _zeros_in_sequence),
    Case("cumprod_reverse_with_zeros", lambda x: lax.cumprod(x, axis=1, reverse=True),
         _zeros_in_sequence),
    Case("cummax_ties", lambda x: lax.cummax(x, axis=1), args(ties(3, 7)), fd=False),
    Case("cummin_ties_reverse", lambda x: lax.cummin(x, axis=0, reverse=True), args(ties(5, 3)),
         fd=False),
    Case("cumlogsumexp", lambda x: lax.cumlogsumexp(x, axis=1), args(normal(3, 5))),
    # --- sorting ---
    Case("sort", lambda x: jnp.sort(x, axis=-1), args(normal(3, 5))),
    Case("sort_axis0_ties", lambda x: jnp.sort(x, axis=0) * jnp.arange(1.0, 5.0)[:, None],
         args(ties(4, 3)), fd=False),
    Case("argsort_then_take", lambda x: jnp.take_along_axis(x, jnp.argsort(x, axis=1), axis=1)
         * x[:, :1], args(normal(3, 5))),
    Case("lax_sort_two_operands_one_key", _sort_two, args(normal(2, 5), normal(2, 5))),
    Case("lax_sort_three_operands_two_keys", _sort_two_keys,
         args(ties(6, 2), ties(6, 2), normal(6, 2)), fd=False),
    Case("top_k", lambda x: lax.top_k(x, 3)[0], args(normal(2, 6))),
]


# --- lax.reduce with a custom reducer (jax differentiates it through a pairwise tree) ---

def _argmax_reducer(a, b):
    (va, ia), (vb, ib) = a, b
    pick = (va > vb) | ((va == vb) & (ia < ib))
    return lax.select(pick, va, vb), lax.select(pick, ia, ib)


def _reduce_argmax(x):
    # the index operand is a float function of x (jax's tree JVP needs a tangent for it)
    idx = lax.broadcasted_iota(x.dtype, x.shape, 0) + 0.0 * x
    value, where = lax.reduce((x, idx), (-jnp.inf, jnp.inf), _argmax_reducer, (0,))
    return value * where


def _first_max(a, b):
    return lax.select(a >= b, a, b)


CASES += [
    Case("laxreduce_variadic_argmax_ties", _reduce_argmax, args(ties(5, 3, 2)), fd=False),
    Case("laxreduce_select_ties", lambda x: lax.reduce(x, -jnp.inf, _first_max, (0, 2)),
         args(ties(5, 3, 3)), fd=False),
    Case("laxreduce_max_not_identity_init", lambda x: lax.reduce(x, -1.0, lax.max, (1,)),
         args(ties(3, 7)), fd=False),
    # odd sizes: the tree pads the second half with the init value
    Case("laxreduce_smooth", lambda x: lax.reduce(0.3 * x, 0.0, lambda a, b: a * b + a + b,
                                                      (0, 2)), args(normal(5, 2, 3))),
    Case("laxreduce_two_outputs", lambda x, y: lax.reduce(
        (x, y), (0.0, 1.0), lambda a, b: (a[0] + b[0] * a[1], a[1] * b[1]), (1,)),
         args(normal(2, 5), uniform(0.5, 1.5, 2, 5))),
    Case("laxreduce_size1_and_empty", lambda x, y: (
        lax.reduce(x, 1.0, lambda a, b: a * b + 0.0 * a, (1,)),
        lax.reduce(y, 1.0, lambda a, b: a * b + 0.0 * a, (0,))),
         args(normal(3, 1), normal(0, 2))),
    # --- approx_max_k / approx_min_k (exact on CPU; the rule reads the returned indices)
    Case("approx_max_k", lambda x: lax.approx_max_k(x, 2)[0], args(normal(3, 6))),
    Case("approx_min_k_dim0_ties", lambda x: lax.approx_min_k(x, 3, reduction_dimension=0)[0],
         args(ties(6, 2)), fd=False),
]
