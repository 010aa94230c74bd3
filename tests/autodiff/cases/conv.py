"""Cases for convolutions and windowed reductions (pooling).

Convolutions are bilinear, so finite differences are exact up to rounding; max/min pooling runs
on integer-valued inputs (many ties inside every window) to pin jax's first-maximum choice.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from tests.autodiff.cases import Case, args, normal
from tests.autodiff.cases.elementwise import ties

NHWC = ("NHWC", "HWIO", "NHWC")


def conv_case(name, lhs_shape, rhs_shape, fd=False, **params):
    """A convolution case; ``fd=True`` also checks it against finite differences."""
    fun = partial(lax.conv_general_dilated, **params)
    return Case(f"conv_{name}", fun, args(normal(*lhs_shape), normal(*rhs_shape)),
                rtol=1e-4, atol=1e-5, fd=fd)


def _pool(kind, x, **params):
    init, op = {"max": (-jnp.inf, lax.max), "min": (jnp.inf, lax.min), "sum": (0.0, lax.add)}[kind]
    return lax.reduce_window(x, init, op, **params)


def pool_case(kind, name, shape, window, strides, padding="VALID", sampler=normal, fd=False,
              **params):
    """A pooling case; ``fd=True`` (never with ties) also checks finite differences."""
    fun = partial(_pool, kind, window_dimensions=window, window_strides=strides, padding=padding,
                  **params)
    return Case(f"{kind}_pool_{name}", fun, args(sampler(*shape)), fd=fd and sampler is not ties)


CONV_CASES = [
    conv_case("stride2_same", (2, 3, 7, 8), (4, 3, 3, 3), window_strides=(2, 2), padding="SAME"),
    conv_case("stride3_asym_negative_pad", (2, 3, 9, 8), (4, 3, 3, 2), window_strides=(3, 2),
              padding=((2, 0), (-1, 3)), fd=True),
    conv_case("stride_not_dividing_valid", (2, 2, 10, 9), (3, 2, 3, 3), window_strides=(4, 3),
              padding="VALID"),
    conv_case("rhs_dilation2", (2, 3, 9, 8), (4, 3, 3, 2), window_strides=(1, 2),
              padding=((1, 1), (0, 1)), rhs_dilation=(2, 2)),
    conv_case("lhs_dilation2_transposed", (2, 3, 5, 4), (4, 3, 3, 3), window_strides=(2, 1),
              padding=((2, 1), (1, 2)), lhs_dilation=(2, 2), rhs_dilation=(1, 2), fd=True),
    conv_case("feature_groups2", (2, 4, 6, 6), (6, 2, 3, 3), window_strides=(2, 1),
              padding="SAME", feature_group_count=2),
    conv_case("depthwise", (2, 4, 6, 6), (8, 1, 3, 3), window_strides=(1, 1), padding="SAME",
              feature_group_count=4),
    conv_case("batch_groups2", (4, 3, 6, 6), (6, 3, 3, 3), window_strides=(1, 2),
              padding=((1, 0), (2, 1)), batch_group_count=2, fd=True),
    conv_case("nhwc_stride2_same", (2, 7, 6, 3), (3, 3, 3, 5), window_strides=(2, 2),
              padding="SAME", dimension_numbers=NHWC),
    conv_case("nhwc_batch_groups2", (4, 7, 6, 3), (3, 3, 3, 6), window_strides=(1, 1),
              padding="VALID", dimension_numbers=NHWC, batch_group_count=2),
    conv_case("mixed_layouts_feature_groups", (2, 7, 6, 4), (6, 2, 2, 3), window_strides=(2, 2),
              padding="SAME", dimension_numbers=("NHWC", "OIHW", "NCHW"), feature_group_count=2,
              fd=True),
    conv_case("1d_nwc", (2, 11, 3), (3, 3, 4), window_strides=(2,), padding=((2, 1),),
              rhs_dilation=(3,), dimension_numbers=("NWC", "WIO", "NWC"), fd=True),
    conv_case("3d", (2, 2, 5, 4, 6), (3, 2, 2, 3, 3), window_strides=(1, 2, 2), padding="SAME",
              rhs_dilation=(2, 1, 1), fd=True),
    conv_case("size1_spatial", (2, 3, 1, 5), (4, 3, 3, 3), window_strides=(1, 2),
              padding="SAME"),
    # batches of 64 and more: on CPU the kernel's cotangent is summed over slices of the batch
    conv_case("batch70_sliced_nhwc", (70, 5, 4, 2), (3, 3, 2, 3), window_strides=(2, 1),
              padding="SAME", dimension_numbers=NHWC),
    conv_case("batch64_sliced_feature_groups", (64, 4, 3, 5), (4, 2, 3, 2), window_strides=(1, 1),
              padding="VALID", feature_group_count=2),
    Case("conv_precision_preferred_type",
         partial(lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                 precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32),
         args(normal(2, 3, 6, 5), normal(4, 3, 3, 3)), rtol=1e-4, atol=1e-5, fd=False,
         dtypes=("float32",)),
    Case("conv_variable_used_twice",
         lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME") * x[:, :1],
         args(normal(2, 3, 5, 5), normal(3, 3, 3, 3)), rtol=1e-4, atol=1e-5),
]

NHWC_2x2 = dict(window=(1, 2, 2, 1), strides=(1, 2, 2, 1))
NHWC_3x3_1 = dict(window=(1, 3, 3, 1), strides=(1, 1, 1, 1))
NHWC_3x3_2 = dict(window=(1, 3, 3, 1), strides=(1, 2, 2, 1))

POOL_CASES = [
    pool_case("max", "2x2s2_crop_ties", (2, 7, 5, 3), **NHWC_2x2, sampler=ties),
    pool_case("max", "2x2s2_same_ties", (2, 7, 5, 3), **NHWC_2x2, padding="SAME", sampler=ties),
    pool_case("max", "2x2s2_nchw", (2, 3, 6, 4), (1, 1, 2, 2), (1, 1, 2, 2), fd=True),
    pool_case("max", "3x3s1_ties", (2, 6, 6, 3), **NHWC_3x3_1, sampler=ties),
    pool_case("max", "3x3s1_same_ties", (2, 6, 5, 3), **NHWC_3x3_1, padding="SAME", sampler=ties),
    pool_case("max", "3x3s2_same_ties", (2, 7, 8, 3), **NHWC_3x3_2, padding="SAME", sampler=ties),
    pool_case("max", "3x3s2", (2, 7, 8, 3), **NHWC_3x3_2, padding="SAME", fd=True),
    pool_case("max", "asym_pad_ties", (2, 7, 8), (1, 3, 2), (1, 2, 3),
              padding=((0, 0), (2, 0), (0, 1)), sampler=ties),
    pool_case("max", "base_dilation_ties", (2, 5, 4), (1, 3, 2), (1, 2, 1),
              padding=((0, 0), (1, 1), (0, 1)), base_dilation=(1, 2, 2), sampler=ties),
    pool_case("max", "global_ties", (2, 4, 4, 3), (1, 4, 4, 1), (1, 4, 4, 1), sampler=ties),
    # tiles of more than 16 elements take the block form instead of one view per offset
    pool_case("max", "5x5s5_same_ties", (2, 11, 7, 3), (1, 5, 5, 1), (1, 5, 5, 1),
              padding="SAME", sampler=ties),
    pool_case("max", "1d_size1", (2, 1, 9), (1, 1, 3), (1, 1, 2), padding="SAME", sampler=ties),
    pool_case("min", "2x2s2_crop_ties", (2, 7, 5, 3), **NHWC_2x2, sampler=ties),
    pool_case("min", "3x3s2_same_ties", (2, 7, 8, 3), **NHWC_3x3_2, padding="SAME", sampler=ties),
    pool_case("min", "5x5s5_same_ties", (2, 11, 7, 3), (1, 5, 5, 1), (1, 5, 5, 1),
              padding="SAME", sampler=ties),
    pool_case("sum", "2x2s2", (2, 6, 8, 3), **NHWC_2x2),
    pool_case("sum", "2x2s2_odd_same", (2, 7, 5, 3), **NHWC_2x2, padding="SAME"),
    pool_case("sum", "3x3s1_same", (2, 6, 5, 3), **NHWC_3x3_1, padding="SAME"),
    pool_case("sum", "3x3s2_asym", (2, 7, 8, 3), **NHWC_3x3_2,
              padding=((0, 0), (2, 0), (0, 1), (0, 0)), fd=True),
    pool_case("sum", "window_dilation", (2, 9, 8), (1, 3, 2), (1, 1, 2),
              window_dilation=(1, 2, 2), fd=True),
    pool_case("sum", "base_dilation", (2, 5, 4), (1, 3, 2), (1, 2, 1),
              padding=((0, 0), (1, 1), (0, 1)), base_dilation=(1, 2, 2), fd=True),
    pool_case("sum", "1d", (2, 3, 11), (1, 1, 3), (1, 1, 2), padding="SAME"),
    # overlapping windows of more than 16 elements go through pad + reduce_window_sum
    pool_case("sum", "5x4_overlapping", (2, 9, 8), (1, 5, 4), (1, 2, 1), padding="SAME",
              fd=True),
    Case("avg_pool_nhwc", lambda x: _pool("sum", x, window_dimensions=(1, 2, 2, 1),
                                          window_strides=(1, 2, 2, 1), padding="SAME") / 4.0,
         args(normal(2, 5, 6, 3))),
]

# --- the windowed primitives jax's own derivatives emit, and generic reduce_window -------------

def _pool_grad(kind, window, strides, padding):
    """jax.grad of a pooled loss: emits select_and_scatter_add(ct(x), x) (ge for max, le min)."""
    def loss(x):
        return jnp.sum(jnp.tanh(_pool(kind, x, window_dimensions=window, window_strides=strides,
                                      padding=padding)) ** 2)
    return jax.grad(loss)


def _pool_jvp(kind, window, strides, padding, **params):
    """jax.jvp of a pool: emits select_and_gather_add(t, x)."""
    def pool(x):
        return _pool(kind, x, window_dimensions=window, window_strides=strides, padding=padding,
                     **params)
    return lambda x, t: jax.jvp(pool, (x,), (t,))[1] * pool(x)


def _first_max(a, b):
    return lax.select(a >= b, a, b)


def _argmax_reducer(a, b):
    (va, ia), (vb, ib) = a, b
    pick = (va > vb) | ((va == vb) & (ia < ib))
    return lax.select(pick, va, vb), lax.select(pick, ia, ib)


def _window_argmax(x):
    idx = lax.broadcasted_iota(x.dtype, x.shape, 2) + 0.0 * x
    value, where = lax.reduce_window((x, idx), (-jnp.inf, jnp.inf), _argmax_reducer,
                                     (1, 3, 3, 1), (1, 1, 2, 1), "VALID")
    return value * where


def reduce_window_case(name, fun, shape, sampler=normal, fd=True):
    """A generic reduce_window case: jax reverses none, so the reference is jax.jvp's Jacobian.

    Named ``window_*``: a family of its own for the one finite-difference check per family."""
    return Case(f"window_{name}", fun, args(sampler(*shape)),
                fd=fd and sampler is not ties, reference="jvp")


WINDOW_CASES = [
    # ties only where jax is consistent with itself: with padding, jax's transpose of
    # select_and_scatter_add (select_and_gather_add) breaks ties in another order than the
    # select_and_scatter_add it transposes; tests/autodiff/test_windows.py covers that case
    Case("select_and_scatter_add_max_ties", _pool_grad("max", (1, 3, 3, 1), (1, 2, 2, 1),
                                                       "VALID"),
         args(ties(2, 7, 6, 3)), fd=False),
    Case("select_and_scatter_add_max_same", _pool_grad("max", (1, 3, 3, 1), (1, 2, 2, 1),
                                                       "SAME"), args(normal(2, 7, 6, 3))),
    Case("select_and_scatter_add_min_overlap_ties",
         _pool_grad("min", (1, 3, 2, 1), (1, 1, 1, 1), "VALID"), args(ties(2, 5, 6, 2)),
         fd=False),
    Case("select_and_scatter_add_min_padded",
         _pool_grad("min", (1, 3, 2, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (0, 1), (0, 0))),
         args(normal(2, 5, 6, 2))),
    Case("select_and_gather_add_max_ties", _pool_jvp("max", (1, 3, 3, 1), (1, 2, 2, 1), "SAME"),
         args(ties(2, 7, 6, 3), normal(2, 7, 6, 3)), fd=False),
    Case("select_and_gather_add_min_base_dilation_ties",
         _pool_jvp("min", (1, 3, 2), (1, 2, 1), ((0, 0), (1, 1), (0, 1)),
                   base_dilation=(1, 2, 2)), args(ties(2, 5, 4), normal(2, 5, 4)), fd=False),
    reduce_window_case("product_same", lambda x: lax.reduce_window(
        x, 1.0, lax.mul, (1, 3, 2, 1), (1, 2, 1, 1), "SAME"), (2, 5, 4, 2)),
    reduce_window_case("product_dilations_negative_pad", lambda x: lax.reduce_window(
        x, 1.0, lax.mul, (1, 2, 2), (1, 1, 2), ((0, 0), (1, -1), (2, 1)),
        base_dilation=(1, 2, 1), window_dilation=(1, 1, 2)), (2, 4, 5)),
    reduce_window_case("select_first_max_ties", lambda x: lax.reduce_window(
        x, -jnp.inf, _first_max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID"), (2, 7, 6, 2), ties),
    reduce_window_case("variadic_argmax_ties", _window_argmax, (2, 6, 5, 2), ties),
    reduce_window_case("empty_output", lambda x: lax.reduce_window(
        x, 1.0, lax.mul, (1, 4), (1, 1), "VALID") + 0.0, (2, 3)),
]

CASES = CONV_CASES + POOL_CASES + WINDOW_CASES
