"""funcbp: a functional JAX training toolkit with its own reverse-mode autodiff.

``funcbp.vjp``, ``funcbp.grad`` and ``funcbp.value_and_grad`` take the same arguments and
return the same things as their ``jax`` namesakes, but compute gradients with funcbp's own
hand-written rules: the function is traced to a jaxpr, evaluated forward keeping what the
rules need, then walked backward applying one VJP rule per primitive.

Subpackages (imported on first use): ``funcbp.nn``, ``funcbp.losses``, ``funcbp.optim``,
``funcbp.data``, ``funcbp.train``, ``funcbp.check``, ``funcbp.diagnostics``.
"""

from __future__ import annotations

import importlib

from funcbp.autodiff import (
    VJP_RULES,
    UnsupportedPrimitiveError,
    grad,
    register_vjp_rule,
    value_and_grad,
    vjp,
    vjp_rule,
)
from funcbp.autodiff.tag import tag  # noqa: E402
from funcbp.debug import find_nonfinite  # noqa: E402
from funcbp.explain import explain  # noqa: E402
from funcbp.loops import bounded_while_loop  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "UnsupportedPrimitiveError",
    "VJP_RULES",
    "bounded_while_loop",
    "explain",
    "find_nonfinite",
    "grad",
    "register_vjp_rule",
    "tag",
    "value_and_grad",
    "vjp",
    "vjp_rule",
]

_SUBMODULES = {"nn", "losses", "optim", "data", "train", "check", "diagnostics", "cli",
               "quantities"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"funcbp.{name}")
    raise AttributeError(f"module 'funcbp' has no attribute {name!r}")
