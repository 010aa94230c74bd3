"""Gradient verification: ``check_grads`` for any function, and every registered rule at once.

- :func:`check_grads` compares funcbp's gradients of a function with ``jax.vjp``'s and with
  float64 central finite differences, leaf by leaf (see ``docs/verify.md``).
- :func:`verify_rules` runs every registered VJP rule on random and edge-case inputs against
  ``jax.vjp`` (the ``funcbp check`` command prints its table).
"""

from funcbp.check.grads import (
    Comparison,
    GradCheckError,
    GradCheckReport,
    LeafCheck,
    check_grads,
    default_tolerances,
)
from funcbp.check.rules import RulesReport, verify_rules

__all__ = [
    "Comparison",
    "GradCheckError",
    "GradCheckReport",
    "LeafCheck",
    "RulesReport",
    "check_grads",
    "default_tolerances",
    "verify_rules",
]
