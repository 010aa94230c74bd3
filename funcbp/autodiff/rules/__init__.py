"""The VJP rule table: one entry per JAX primitive.

A rule receives the output cotangent(s), the primitive's input values, the forward output(s)
as ``out``, a tuple ``needs`` saying which inputs want a cotangent, and the equation's params;
it returns one cotangent per input (``None`` for "no gradient"). Rules are written with ops that
funcbp can differentiate again, so gradients of gradients work.

Primitives whose forward must keep more than inputs and outputs (calls into sub-jaxprs, custom
derivatives, control flow) also register a *forward* rule that returns ``(outputs, residuals)``;
their VJP rule then receives ``res=residuals``.

Adding a rule for a new primitive is the public extension point::

    from jax import lax
    import funcbp

    @funcbp.vjp_rule(lax.cbrt_p)
    def cbrt_vjp(ct, x, *, out, **params):
        \"\"\"d cbrt(x) = 1 / (3 cbrt(x)^2).\"\"\"
        return (ct / (3 * out * out),)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from jax.extend.core import Primitive

__all__ = [
    "COMPLEX_RULES",
    "EAGER_RULES",
    "FORWARD_RULES",
    "VJP_RULES",
    "UnsupportedPrimitiveError",
    "ZERO_GRADIENT",
    "forward_rule",
    "register_vjp_rule",
    "replaced_rule",
    "rule_for",
    "vjp_rule",
]

VjpRule = Callable[..., Any]
ForwardRule = Callable[..., Any]

#: primitive -> VJP rule. Populated by the modules in this package at import time.
VJP_RULES: dict[Primitive, VjpRule] = {}
#: primitive -> forward rule, for primitives whose VJP needs more than inputs and outputs.
FORWARD_RULES: dict[Primitive, ForwardRule] = {}
#: primitive -> the module that holds its rule (for error messages and reports).
RULE_MODULES: dict[Primitive, str] = {}
#: primitives whose rule is written for complex values too (jax's convention: the cotangent
#: map is the transpose of the real-linear JVP, see docs/autodiff.md). The walk refuses a
#: complex value reaching any other rule instead of returning a wrong number.
COMPLEX_RULES: set[Primitive] = set()
#: primitives whose outputs never carry a gradient (stop_gradient, floor, sign...): the forward
#: walk keeps their outputs inactive, so whatever depends only on them is never differentiated.
ZERO_GRADIENT: set[Primitive] = set()
#: primitive -> ``evaluate(eqn, invals) -> outs`` for call-like primitives without a forward
#: rule (``cond``, ``while``): used only by debugging walks (``interpreter.Hooks.inline``) to
#: evaluate their sub-jaxprs through the interpreter, eagerly, so hooks see inside them.
EAGER_RULES: dict[Primitive, Callable[..., list]] = {}
#: primitive name -> why it has no rule and what to do instead (e.g. a callback: wrap it in
#: jax.custom_vjp); the missing-rule error says this instead of "add a rule".
NO_RULE_HINTS: dict[str, str] = {}


class UnsupportedPrimitiveError(NotImplementedError):
    """Raised when reverse mode meets a primitive that has no VJP rule in funcbp's table."""


def register_vjp_rule(primitive: Primitive, rule: VjpRule, *, forward: ForwardRule | None = None,
                      override: bool = False, handles_complex: bool = False) -> VjpRule:
    """Registers ``rule`` as the VJP rule of ``primitive`` (and optionally its forward rule).

    Args:
      primitive: a ``jax.extend.core.Primitive`` such as ``jax.lax.tanh_p``.
      rule: ``rule(ct, *inputs, out, needs, **params) -> tuple`` of one cotangent (or None) per
        input. For primitives with ``multiple_results``, ``ct`` and ``out`` are lists.
      forward: optional ``forward(*inputs, needs, **params) -> (outputs, residuals)``; when
        given, ``rule`` also receives ``res=residuals``.
      override: replace an existing rule (otherwise registering twice is an error, so two
        modules cannot silently fight over a primitive).
      handles_complex: the rule is correct for complex inputs and outputs too; without it a
        complex value reaching this primitive is refused with an error naming it.

    Returns:
      ``rule``, so this can be used as a decorator through :func:`vjp_rule`.
    """
    if not isinstance(primitive, Primitive):
        raise TypeError(f"expected a jax Primitive (e.g. jax.lax.tanh_p), got {primitive!r}")
    if primitive in VJP_RULES and not override:
        raise ValueError(
            f"a VJP rule for '{primitive.name}' is already registered (in "
            f"{RULE_MODULES.get(primitive, '?')}); pass override=True to replace it")
    VJP_RULES[primitive] = rule
    RULE_MODULES[primitive] = getattr(rule, "__module__", "?")
    if forward is not None:
        FORWARD_RULES[primitive] = forward
    elif override:
        FORWARD_RULES.pop(primitive, None)
    if handles_complex:
        COMPLEX_RULES.add(primitive)
    else:
        COMPLEX_RULES.discard(primitive)
    return rule


def vjp_rule(primitive: Primitive, *, forward: ForwardRule | None = None,
             override: bool = False, handles_complex: bool = False
             ) -> Callable[[VjpRule], VjpRule]:
    """Decorator form of :func:`register_vjp_rule`.

    Example::

        @vjp_rule(lax.tanh_p)
        def tanh_vjp(ct, x, *, out, **params):
            return (ct * (1 - out * out),)
    """
    def register(rule: VjpRule) -> VjpRule:
        return register_vjp_rule(primitive, rule, forward=forward, override=override,
                                 handles_complex=handles_complex)
    return register


@contextlib.contextmanager
def replaced_rule(primitive: Primitive, rule: VjpRule, **kwargs: Any) -> Iterator[None]:
    """Uses ``rule`` for ``primitive`` inside the block, then restores everything registered
    for it (rule, forward rule, module, complex and zero-gradient flags).

    For experiments and for tests that plant a wrong rule to show a check catches it.

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> from jax import lax
      >>> from funcbp.autodiff.rules import replaced_rule
      >>> with replaced_rule(lax.sin_p, lambda ct, x, **p: (2 * ct * lax.cos(x),)):
      ...     wrong = funcbp.grad(jnp.sin)(0.0)
      >>> float(wrong), float(funcbp.grad(jnp.sin)(0.0))
      (2.0, 1.0)
    """
    saved = (VJP_RULES.get(primitive), FORWARD_RULES.get(primitive),
             RULE_MODULES.get(primitive), primitive in COMPLEX_RULES,
             primitive in ZERO_GRADIENT)
    register_vjp_rule(primitive, rule, override=True, **kwargs)
    ZERO_GRADIENT.discard(primitive)
    try:
        yield
    finally:
        old_rule, old_forward, old_module, was_complex, was_zero = saved
        if old_rule is None:
            VJP_RULES.pop(primitive, None)
            FORWARD_RULES.pop(primitive, None)
            RULE_MODULES.pop(primitive, None)
            COMPLEX_RULES.discard(primitive)
        else:
            register_vjp_rule(primitive, old_rule, override=True, forward=old_forward,
                              handles_complex=was_complex)
            RULE_MODULES[primitive] = old_module
        if was_zero:
            ZERO_GRADIENT.add(primitive)


def forward_rule(primitive: Primitive) -> Callable[[ForwardRule], ForwardRule]:
    """Decorator registering the forward half of a primitive whose VJP needs residuals."""
    def register(fwd: ForwardRule) -> ForwardRule:
        FORWARD_RULES[primitive] = fwd
        return fwd
    return register


_RULES_DIR = "funcbp/autodiff/rules"

#: rule family -> the primitives (or name prefixes, ending in "*") whose rules live there.
_FAMILIES: dict[str, tuple[str, ...]] = {
    "elementwise": ("reduce_precision",),
    "windows": ("reduce_window", "select_and*"),
    "conv": ("reduce_window_*", "conv_general_dilated"),
    "reductions": ("reduce", "reduce_*", "cum*", "arg*", "sort", "top_k", "approx_top_k"),
    "control": ("scan", "cond", "while"),
    "decompositions": ("lu", "lu_pivots_to_permutation", "triangular_solve", "cholesky*", "qr",
                       "householder_product", "geqrf", "geqp3", "ormqr", "tridiagonal*",
                       "custom_linear_solve", "symmetric_product"),
    "spectral": ("svd", "eig", "eigh", "schur", "hessenberg"),
    "linalg": ("dot*",),
    "ragged": ("ragged_dot*",),
    "fft": ("fft",),
    "special": ("digamma", "polygamma", "igamma*", "igammac", "random_gamma*", "lgamma",
                "regularized_incomplete_beta", "bessel*", "zeta", "erf_inv"),
    "indexing": ("gather", "scatter*"),
    "collectives": ("psum*", "pmax", "pmin", "pmean", "all_gather*", "ppermute", "all_to_all",
                    "axis_index", "pvary", "pbroadcast", "reduce_scatter", "shard_map",
                    "ragged_all_to_all"),
    "state": ("get", "swap", "addupdate", "run_state"),
    "structural": ("broadcast_in_dim", "reshape", "squeeze", "transpose", "rev", "slice", "pad",
                   "concatenate", "dynamic_slice", "dynamic_update_slice", "split", "stack",
                   "unstack", "tile", "expand_dims"),
    "calls": ("jit", "pjit", "closed_call", "core_call", "custom_*", "remat*", "checkpoint",
              "name", "linear_call", "call_hi_primitive", "device_put", "optimization_barrier",
              "pure_callback", "io_callback"),
}


def _suggest_module(name: str) -> str:
    """The rule module a primitive's rule belongs in (for the missing-rule message)."""
    for exact in (True, False):  # an exact name wins over a prefix ("reduce_scatter")
        for family, patterns in _FAMILIES.items():
            for pattern in patterns:
                if (name == pattern if exact else
                        pattern.endswith("*") and name.startswith(pattern[:-1])):
                    return f"{_RULES_DIR}/{family}.py"
    return f"{_RULES_DIR}/elementwise.py"


def check_complex(primitive: Primitive, avals: Any, where: str | None = None) -> None:
    """Refuses a complex value at a primitive whose rule is written for real values only."""
    if primitive in COMPLEX_RULES:
        return
    for aval in avals:
        dtype = getattr(aval, "dtype", None)
        if dtype is not None and getattr(dtype, "kind", None) == "c":  # keys have no kind
            loc = f" ({where})" if where else ""
            raise UnsupportedPrimitiveError(
                f"the VJP rule for '{primitive.name}' does not handle complex numbers{loc}: a "
                f"{dtype.name} value reaches it. Make the rule complex-aware in "
                f"{_suggest_module(primitive.name)} and register it with "
                "handles_complex=True, or keep this part of the computation real.")


def rule_for(primitive: Primitive, where: str | None = None) -> VjpRule:
    """Looks up the VJP rule of ``primitive``, raising a helpful error if there is none."""
    try:
        return VJP_RULES[primitive]
    except KeyError:
        name = primitive.name
        loc = f" ({where})" if where else ""
        if name in NO_RULE_HINTS:
            raise UnsupportedPrimitiveError(
                f"no VJP rule for '{name}'{loc}: {NO_RULE_HINTS[name]}") from None
        raise UnsupportedPrimitiveError(
            f"no VJP rule for '{name}'{loc}.\n"
            f"Add one in {_suggest_module(name)} with @vjp_rule(<the {name} primitive>), or "
            f"from your own code with funcbp.register_vjp_rule(primitive, rule); "
            f"see funcbp/autodiff/README.md, 'Adding a rule'.") from None


def _import_families() -> None:
    """Imports every module of this package: each rule family registers itself on import."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")


_import_families()
