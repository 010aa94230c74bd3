"""Cases for funcbp's own primitives used by diagnostics: ``funcbp_tag`` (the identity)."""

import jax.numpy as jnp

from funcbp.autodiff.tag import tag
from tests.autodiff.cases import Case, args, normal

CASES = [
    Case("tag_identity", lambda x: jnp.sin(tag(x, "h")) * tag(x, "h"), args(normal(3, 4))),
]
