"""funcbp's reverse-mode autodiff: api (jax's signatures), trace, interpreter, rules."""

from funcbp.autodiff.api import grad, value_and_grad, vjp  # noqa: E402
from funcbp.autodiff.rules import (
    FORWARD_RULES,
    VJP_RULES,
    UnsupportedPrimitiveError,
    register_vjp_rule,
    vjp_rule,
)

__all__ = [
    "FORWARD_RULES",
    "UnsupportedPrimitiveError",
    "VJP_RULES",
    "grad",
    "register_vjp_rule",
    "value_and_grad",
    "vjp",
    "vjp_rule",
]
