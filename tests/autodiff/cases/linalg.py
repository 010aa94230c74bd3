"""Cases for dot_general: matmul, batched, odd dimension numbers, mixed precision."""

import jax.numpy as jnp
from jax import lax

from tests.autodiff.cases import Case, args, normal

CASES = [
    Case("matmul", lambda a, b: a @ b, args(normal(3, 4), normal(4, 5))),
    Case("matvec", lambda a, b: a @ b, args(normal(3, 4), normal(4))),
    Case("vecvec", lambda a, b: jnp.dot(a, b), args(normal(4), normal(4))),
    Case("batched_matmul", lambda a, b: jnp.einsum("bij,bjk->bik", a, b),
         args(normal(2, 3, 4), normal(2, 4, 5))),
    Case("einsum_transposed_contract", lambda a, b: jnp.einsum("ij,kj->ik", a, b),
         args(normal(3, 4), normal(5, 4))),
    Case("einsum_attention_scores", lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k),
         args(normal(2, 2, 3, 4), normal(2, 2, 5, 4))),
    Case("dot_general_batch_not_leading",
         lambda a, b: lax.dot_general(a, b, (((0,), (2,)), ((2,), (0,)))),
         args(normal(4, 3, 2), normal(2, 5, 4))),
    Case("dot_general_two_contract",
         lambda a, b: lax.dot_general(a, b, (((1, 2), (2, 0)), ((), ()))),
         args(normal(3, 4, 5), normal(5, 6, 4))),
    Case("dot_general_preferred_type",
         lambda a, b: lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                                      (((1,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32).astype(a.dtype),
         args(normal(3, 4), normal(4, 5)), rtol=2e-2, atol=2e-2, fd=False, dtypes=("float32",)),
]
