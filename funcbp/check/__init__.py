"""Gradient verification: ``check_grads`` for any function, and every registered rule at once.

- :func:`check_grads` compares the gradients of a function (funcbp's, jax's, any) with
  ``jax.vjp``'s, float64 central finite differences and reference functions, leaf by leaf; to
  second order, in forward mode, batched and bit for bit (see ``docs/verify.md``).
- :func:`distributed_grad_check` compares a data-parallel gradient on N devices with the
  one-device gradient, naming the mean-vs-sum mistake.
- :func:`verify_rules` runs every registered VJP rule on random and edge-case inputs against
  ``jax.vjp`` (the ``funcbp check`` command prints its table).
"""

from funcbp.check.distributed import DistributedGradReport, distributed_grad_check
from funcbp.check.grads import (
    Comparison,
    ExtraCheck,
    GradCheckError,
    GradCheckReport,
    GradCheckWarning,
    LeafCheck,
    check_grads,
    default_tolerances,
)
from funcbp.check.rules import RulesReport, verify_rules

__all__ = [
    "Comparison",
    "DistributedGradReport",
    "ExtraCheck",
    "GradCheckError",
    "GradCheckReport",
    "GradCheckWarning",
    "LeafCheck",
    "RulesReport",
    "check_grads",
    "default_tolerances",
    "distributed_grad_check",
    "verify_rules",
]
