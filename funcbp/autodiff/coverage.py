"""How complete funcbp's rule table is, measured against jax itself rather than a list of ours.

The *scope* is every primitive that jax's public modules can put into a jaxpr and that jax can
reverse-differentiate: jax registers a JVP, linearization or transpose rule for it in its AD
tables (``jax._src.interpreters.ad``), or it is a call-like primitive (``custom_vjp_call``,
``closed_call``...) that jax's tracers differentiate by recursing into its body. jax's tables
are only *read* here, to enumerate; nothing in funcbp calls them.

Every primitive in scope must have a funcbp rule (:data:`funcbp.VJP_RULES`) or an entry in
:data:`EXCLUDED`, a short list of deliberate exclusions, each with its reason. Everything else
is *missing*. :func:`coverage_report` returns the three groups; ``funcbp check --coverage``
prints them and ``tests/autodiff/test_coverage.py`` fails on a missing primitive once
:data:`STRICT` is set.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

__all__ = ["EXCLUDED", "PUBLIC_MODULES", "STRICT", "Coverage", "coverage_report",
           "jax_differentiable_primitives"]

#: The gate: when True, ``tests/autodiff/test_coverage.py`` and ``tests/check/test_harnesses.py``
#: fail on any gap that :data:`EXCLUDED` (and ``funcbp.check.harnesses.EXCLUDED_HARNESSES``)
#: does not explain: a missing rule, a stale exclusion or a failing harness.
STRICT = True

#: The public modules whose primitives are in scope (importing them registers their rules).
PUBLIC_MODULES = (
    "jax", "jax.lax", "jax.lax.linalg", "jax.numpy", "jax.numpy.linalg", "jax.numpy.fft",
    "jax.scipy.special", "jax.scipy.linalg", "jax.scipy.signal", "jax.scipy.stats",
    "jax.scipy.fft", "jax.scipy.ndimage", "jax.scipy.sparse.linalg", "jax.nn", "jax.random",
    "jax.image", "jax.ops", "jax.sharding", "jax.ad_checkpoint", "jax.custom_derivatives",
    "jax.custom_batching", "jax.ffi", "jax.debug", "jax.ref",
)

# Modules whose primitives are not reachable from the public modules above: kernels
# (Pallas, Mosaic, Triton, cuDNN), export's shape polymorphism, jax's test utilities and
# jax.experimental (sparse, ...). A test that imports one of them must not change the scope.
_OUT_OF_SCOPE = ("experimental", "pallas", "mosaic", "triton", "tpu_custom_call", "cudnn",
                 "internal_test_util", "jax2tf", "export")

_NO_FLOAT = ("outputs are integers, booleans or PRNG keys only: no cotangent can flow back "
             "through it, and funcbp's walk asks for no rule (it evaluates the equation "
             "forward and moves on)")
_NO_OUTPUT = ("has no outputs (a side effect on the host): nothing flows back, funcbp "
              "evaluates it forward and asks for no rule")
_JAX_REFUSES = ("jax's own JVP/transpose rule raises: not reverse-differentiable in jax "
                "either (wrap it in jax.custom_vjp, which funcbp follows)")
_EXPERIMENTAL = ("emitted only by a jax.experimental API (checkify, layouts), outside the "
                 "public modules in scope")
_DISCHARGED = ("a mutable-reference primitive: funcbp discharges references into plain values "
               "when it traces the function (rules/state.py, jax's state discharge), so it never "
               "reaches the walk")
_NO_CPU = ("a collective for expert-parallel models that jax's vmap cannot batch and XLA:CPU "
           "cannot run, so no rule could be tested here; refused with the missing-rule error "
           "until it can be")
_REDUCED = ("produced only by all_gather(to='reduced') on explicit-sharding axes typed "
            "'reduced' (sharding in types), a jax feature funcbp does not support yet; "
            "refused with the missing-rule error")
_LINEAR_HALF = ("the linear half of a custom_vjp that jax.jvp/jax.linearize leave in a jaxpr: "
                "it cannot be evaluated, jax itself only transposes it inside "
                "linear_transpose; funcbp refuses it naming why (rules/calls.py)")
_JAX_0_9_ONLY = ("a jax 0.9 primitive removed in 0.10, made only by a deprecated or experimental "
                 "path (jax.pmap under jax_pmap_shmap_merge=False, jax.custom_transpose); "
                 "refused with an error naming what to use instead (shard_map, custom_vjp)")
_INTERNAL = ("internal to jax: only jax's own transformations (linearize, sharding-in-types, "
             "hijax, compiler hints) put it in a jaxpr, never the public API a user calls")

#: Primitives in scope that deliberately have no funcbp rule: primitive name -> reason.
EXCLUDED: dict[str, str] = {
    # integer / boolean / key outputs
    "eq_to": _NO_FLOAT, "le_to": _NO_FLOAT, "lt_to": _NO_FLOAT,
    "mulhi": _NO_FLOAT, "shift_left": _NO_FLOAT, "shift_right_arithmetic": _NO_FLOAT,
    "shift_right_logical": _NO_FLOAT, "reduce_or": _NO_FLOAT,
    "random_bits": _NO_FLOAT, "random_seed": _NO_FLOAT, "random_split": _NO_FLOAT,
    "random_fold_in": _NO_FLOAT, "random_wrap": _NO_FLOAT, "random_unwrap": _NO_FLOAT,
    # host side effects without outputs
    "debug_callback": _NO_OUTPUT, "debug_print": _NO_OUTPUT, "inspect_sharding": _NO_OUTPUT,
    # jax refuses to differentiate them
    "pure_callback": _JAX_REFUSES, "io_callback": _JAX_REFUSES, "ffi_call": _JAX_REFUSES,
    "composite": _JAX_REFUSES,
    # references (jax.new_ref, jax.ref.get/swap/addupdate): discharged before the walk
    "get": _DISCHARGED, "swap": _DISCHARGED, "addupdate": _DISCHARGED, "new_ref": _DISCHARGED,
    "empty_ref": _DISCHARGED, "freeze": _DISCHARGED, "free_ref": _DISCHARGED,
    # experimental APIs
    "check": _EXPERIMENTAL, "layout_constraint": _EXPERIMENTAL,
    # jax internals
    "tie": _INTERNAL, "dce_sink": _INTERNAL, "stage": _INTERNAL,
    "eval_jaxpr": _INTERNAL,
    "call_hi_primitive_linearized": _INTERNAL, "accum_grad_in_ref": _INTERNAL,
    "box_get": _INTERNAL, "box_set": _INTERNAL, "new_box": _INTERNAL,
    "log_extend": _INTERNAL, "log_read": _INTERNAL, "new_log": _INTERNAL,
    "to_edtype": _INTERNAL, "from_edtype": _INTERNAL,
    "reduced_vary_cast_p": _INTERNAL, "vary_unreduced_cast_p": _INTERNAL,
    "unreduced_psum": _INTERNAL, "unreduced_reduce_scatter": _INTERNAL, "preduced": _INTERNAL,
    # not supported, each refused with a clear error
    "ragged_all_to_all": _NO_CPU, "all_gather_reduced": _REDUCED, "custom_lin": _LINEAR_HALF,
    "xla_pmap": _JAX_0_9_ONLY, "custom_transpose_call": _JAX_0_9_ONLY,
}


class Coverage(NamedTuple):
    """funcbp's rules against jax's differentiable primitives (names, sorted).

    Attributes:
      covered: primitives in scope with a funcbp rule.
      excluded: primitives in scope without a rule, listed in :data:`EXCLUDED` (name -> reason).
      missing: primitives in scope with neither: the gaps.
    """

    covered: list[str]
    excluded: dict[str, str]
    missing: list[str]

    def stale(self) -> list[str]:
        """Exclusions that no longer hold: the primitive now has a rule, or left jax's scope
        (a primitive only part of the supported jax range has, ``compat.NOT_IN_EVERY_VERSION``,
        may be absent from the installed jax)."""
        from funcbp.autodiff.compat import NOT_IN_EVERY_VERSION

        scope = {*self.covered, *self.excluded, *self.missing, *NOT_IN_EVERY_VERSION}
        return sorted(n for n in EXCLUDED if n in self.covered or n not in scope)

    def summary(self) -> str:
        """One line of counts."""
        total = len(self.covered) + len(self.excluded) + len(self.missing)
        return (f"coverage against jax: {total} differentiable primitives in jax's public "
                f"modules: {len(self.covered)} with a funcbp rule, {len(self.excluded)} "
                f"excluded, {len(self.missing)} missing")

    def __str__(self) -> str:
        from funcbp.autodiff.rules import _suggest_module

        lines = [self.summary()]
        if self.missing:
            lines.append("missing (primitive: where its rule belongs):")
            lines += [f"  {n}: {_suggest_module(n)}" for n in self.missing]
        if self.excluded:
            lines.append("excluded (primitive: reason):")
            by_reason: dict[str, list[str]] = {}
            for n, reason in self.excluded.items():
                by_reason.setdefault(reason, []).append(n)
            lines += [f"  {', '.join(names)}: {reason}" for reason, names in by_reason.items()]
        stale = self.stale()
        if stale:
            lines.append(f"stale exclusions (remove from EXCLUDED): {', '.join(stale)}")
        return "\n".join(lines)


def _in_scope(module_name: str) -> bool:
    parts = module_name.split(".")
    return parts[0] == "jax" and not any(part in _OUT_OF_SCOPE for part in parts)


def jax_differentiable_primitives() -> dict[str, object]:
    """Every primitive jax's public modules can emit and jax can reverse-differentiate.

    Imports :data:`PUBLIC_MODULES`, collects the ``Primitive`` objects that jax's modules hold,
    and keeps those in jax's AD tables (a JVP, linearization or transpose rule) or of a
    call-like class jax's tracers differentiate (``custom_vjp_call``, ``closed_call``...).

    Returns:
      ``{name: primitive}``, sorted by name.

    Examples:
      >>> from funcbp.autodiff.coverage import jax_differentiable_primitives
      >>> prims = jax_differentiable_primitives()
      >>> "tanh" in prims and "iota" not in prims   # iota has no input to differentiate
      True
    """
    for name in PUBLIC_MODULES:
        importlib.import_module(name)
    from jax._src import core as jcore
    from jax._src import custom_derivatives
    from jax._src.interpreters import ad

    tables = [getattr(ad, t, {}) for t in ("primitive_jvps", "primitive_linearizations",
                                           "primitive_transposes", "fancy_transposes",
                                           "reducing_transposes")]
    call_like = tuple(c for c in (getattr(jcore, "CallPrimitive", None),
                                  getattr(jcore, "MapPrimitive", None),
                                  getattr(custom_derivatives, "CustomJVPCallPrimitive", None),
                                  getattr(custom_derivatives, "CustomVJPCallPrimitive", None))
                      if c is not None)
    found: dict[str, object] = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not _in_scope(module_name):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, jcore.Primitive) and (
                    any(value in t for t in tables) or isinstance(value, call_like)):
                found.setdefault(value.name, value)
    return dict(sorted(found.items()))


def coverage_report() -> Coverage:
    """Splits jax's differentiable primitives into covered, excluded and missing.

    Returns:
      A :class:`Coverage`; ``print`` it for the list of gaps with the rule module each
      belongs in.

    Examples:
      >>> from funcbp.autodiff.coverage import coverage_report
      >>> covered, excluded, missing = coverage_report()
      >>> "tanh" in covered, "random_bits" in excluded
      (True, True)
    """
    from funcbp.autodiff.rules import VJP_RULES

    ours = {p.name for p in VJP_RULES}
    covered, excluded, missing = [], {}, []
    for name in jax_differentiable_primitives():
        if name in ours:
            covered.append(name)
        elif name in EXCLUDED:
            excluded[name] = EXCLUDED[name]
        else:
            missing.append(name)
    return Coverage(covered, excluded, missing)
