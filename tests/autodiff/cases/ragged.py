"""Cases for ragged_dot_general (``lax.ragged_dot``): its three modes, empty groups included.

jax reverses only the ragged non-contracting mode; for the ragged-contracting and ragged-batch
modes the reference is the same product written densely (a per-group mask and ``einsum``).
"""

import jax
import jax.numpy as jnp
from jax import lax

from tests.autodiff.cases import Case, args, normal

SIZES = jnp.array([2, 0, 4, 1], jnp.int32)  # one empty group
_GROUP = jnp.repeat(jnp.arange(4), SIZES, total_repeat_length=7)  # the group of each row


def _contracting(lhs, rhs):
    dnums = lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(((0,), (0,)), ((), ())),
                                          lhs_ragged_dimensions=(0,), rhs_group_dimensions=())
    return lax.ragged_dot_general(lhs, rhs, SIZES, dnums)


def _contracting_dense(lhs, rhs):
    mask = (jnp.arange(4)[:, None] == _GROUP[None, :]).astype(lhs.dtype)
    return jnp.einsum("gi,ik,in->gkn", mask, lhs, rhs)


def _batch(lhs, rhs):
    dnums = lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(((2,), (1,)), ((0,), (0,))),
                                          lhs_ragged_dimensions=(0,), rhs_group_dimensions=())
    return lax.ragged_dot_general(lhs, rhs, SIZES, dnums)


CASES = [
    Case("ragged_dot", lambda lhs, rhs: lax.ragged_dot(lhs, rhs, SIZES),
         args(normal(7, 3), normal(4, 3, 5)), rtol=1e-4, atol=1e-5),
    Case("ragged_dot_used_twice", lambda lhs, rhs: jnp.tanh(lax.ragged_dot(lhs, rhs, SIZES))
         * lhs[:, :1], args(normal(7, 3), normal(4, 3, 3)), rtol=1e-4, atol=1e-5),
    Case("ragged_dot_contracting", _contracting, args(normal(7, 3), normal(7, 5)),
         rtol=1e-4, atol=1e-5, reference=_contracting_dense),
    Case("ragged_dot_batch", _batch, args(normal(7, 2, 3), normal(7, 3, 4)), rtol=1e-4,
         atol=1e-5, reference=lambda lhs, rhs: jnp.einsum("bmk,bkn->bmn", lhs, rhs)),
    Case("ragged_dot_grad_of_jax_grad", lambda lhs, rhs: jax.grad(
        lambda a, b: jnp.sum(jnp.tanh(lax.ragged_dot(a, b, SIZES)) ** 2), (0, 1))(lhs, rhs)[0],
         args(normal(7, 3), normal(4, 3, 5)), rtol=1e-4, atol=1e-5,
         reference=lambda lhs, rhs: jax.grad(lambda a, b: jnp.sum(jnp.tanh(jnp.einsum(
             "ik,ikn->in", a, b[_GROUP])) ** 2), (0, 1))(lhs, rhs)[0]),
]
