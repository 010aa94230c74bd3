"""Cases for reductions."""

import jax
import jax.numpy as jnp

from tests.autodiff.cases import Case, args, normal
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
