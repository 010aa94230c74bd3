"""jax's own primitive test harnesses, run through ``funcbp.vjp`` against ``jax.vjp``.

jax's wheel ships ``jax._src.internal_test_util.test_harnesses``: several thousand small
programs, one or more per primitive, written by jax's authors to exercise each primitive's
parameters (dimension numbers, strides, paddings, batch dimensions, dtypes...). Nobody here
wrote them, so they measure funcbp against jax rather than against our own idea of a case.

:func:`run_harnesses` takes every harness whose dtype is float or complex (32 or 64 bits) and
that jax implements on this platform, and for each of its precisions (the harness's own
``float32``/``complex64``, and the same inputs cast to ``float64``/``complex128`` under
``jax.enable_x64``):

1. builds the inputs with the harness's own generator (seeded) and differentiates with respect
   to every float or complex input (integer inputs such as indices stay fixed);
2. pulls a random output cotangent back with ``jax.vjp``; if jax raises, jax itself cannot
   reverse-differentiate the harness: it is counted as ``jax cannot``, not as a funcbp failure;
3. pulls the same cotangent back with ``funcbp.vjp`` (both compiled with ``jax.jit``) and
   compares with :func:`funcbp.check.default_tolerances` for the precision the harness
   computes in (float64: rtol 1e-9).

A complex harness that funcbp refuses with its clear "does not handle complex numbers" error
is counted as ``complex refused`` (funcbp does not claim that support; a *wrong* complex
gradient is a failure). ``jax.vjp`` is only the reference here; it never computes a funcbp
gradient.

Command line: ``funcbp check --harnesses`` (``--quick`` for the fast subset, ``--only`` to
pick primitives, ``--json``).
"""

from __future__ import annotations

import collections
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["EXCLUDED_HARNESSES", "HarnessReport", "HarnessResult", "harness_family",
           "run_harnesses", "select_harnesses"]

#: Harnesses whose comparison with jax is not meaningful: fnmatch-style pattern on the
#: harness's full name -> reason. Counted as ``excluded``, never as passed.
EXCLUDED_HARNESSES: dict[str, str] = {}

#: Statuses, in the order the tables show them.
STATUSES = ("pass", "FAIL", "complex refused", "jax cannot", "excluded", "skip")

# Harness group names are sanitized primitive names; these differ from the primitive's name.
_GROUP_PRIMITIVE = {
    "scatter_add": "scatter-add", "scatter_mul": "scatter-mul", "scatter_min": "scatter-min",
    "scatter_max": "scatter-max", "scatter_sub": "scatter-sub",
    "reduce_window_add": "reduce_window_sum", "reduce_window_mul": "reduce_window",
    "reduce": "reduce", "random_categorical": "random", "random_uniform": "random",
    "random_randint": "random", "random_split": "random",
}

_NO_RULE = re.compile(r"no VJP rule for '([^']+)'")
_NO_COMPLEX = re.compile(r"the VJP rule for '([^']+)' does not handle complex numbers")
_LOCATION = re.compile(r"\s*\((?:[^()]|\([^()]*\))*:\d+(?:[^()]|\([^()]*\))*\)")


@dataclass
class HarnessResult:
    """The verdict on one harness in one precision.

    Attributes:
      name: the harness's full name (jax's ``Harness.fullname``).
      group: jax's group name, usually the primitive's name.
      family: the funcbp rule family of that primitive (``indexing``, ``decompositions``...).
      dtype: the precision it ran in (``float32``, ``float64``, ``complex64``, ``complex128``).
      status: one of :data:`STATUSES`.
      cause: for a failure, a short grouping key (``missing rule 'svd'``, ``wrong values in
        'gather'``); for a skip, why.
      message: the detail (first line of the error, or the worst mismatch).
      seconds: wall time of this harness.
    """

    name: str
    group: str
    family: str
    dtype: str
    status: str
    cause: str = ""
    message: str = ""
    seconds: float = 0.0


@dataclass
class HarnessReport:
    """The result of :func:`run_harnesses`; ``print(report)`` shows the table by family."""

    results: list[HarnessResult]
    seconds: float = 0.0
    subset: str = "all"

    @property
    def passed(self) -> bool:
        """True when no harness that jax can reverse-differentiate fails under funcbp."""
        return not self.failures()

    def failures(self) -> list[HarnessResult]:
        return [r for r in self.results if r.status == "FAIL"]

    def counts(self) -> dict[str, int]:
        """Harnesses per status over all families."""
        c = collections.Counter(r.status for r in self.results)
        return {s: c.get(s, 0) for s in STATUSES}

    def by_family(self) -> dict[str, dict[str, int]]:
        """``{family: {status: count}}``, families sorted by name."""
        out: dict[str, dict[str, int]] = {}
        for r in sorted(self.results, key=lambda r: r.family):
            out.setdefault(r.family, dict.fromkeys(STATUSES, 0))[r.status] += 1
        return out

    def causes(self) -> list[tuple[str, int]]:
        """Failure causes with the number of harnesses each accounts for, most first."""
        return collections.Counter(r.cause for r in self.failures()).most_common()

    def pass_rate(self) -> float:
        """Passed / (passed + failed): the share of what jax differentiates that funcbp does."""
        c = self.counts()
        judged = c["pass"] + c["FAIL"]
        return c["pass"] / judged if judged else 1.0

    def table(self, markdown: bool = False) -> str:
        from funcbp.check.grads import format_table

        cols = ["family", *STATUSES, "pass rate"]
        rows = []
        for fam, c in [*self.by_family().items(), ("all", self.counts())]:
            judged = c["pass"] + c["FAIL"]
            rows.append([fam, *(str(c[s]) for s in STATUSES),
                         f"{100 * c['pass'] / judged:.1f}%" if judged else "-"])
        if markdown:
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
        return format_table(cols, rows)

    def summary(self) -> str:
        c = self.counts()
        return (f"funcbp check --harnesses ({self.subset}): {len(self.results)} runs of jax's "
                f"primitive harnesses: {c['pass']} pass, {c['FAIL']} FAIL "
                f"({100 * self.pass_rate():.1f}% of what jax differentiates), "
                f"{c['complex refused']} complex refused, {c['jax cannot']} jax cannot, "
                f"{c['excluded']} excluded, {c['skip']} skipped ({self.seconds:.0f} s)")

    def __str__(self) -> str:
        lines = [self.table(), "", self.summary()]
        causes = self.causes()
        if causes:
            lines += ["", "failure causes (harness runs):"]
            lines += [f"  {n:5d}  {cause}" for cause, n in causes]
            lines += ["", "failures:"]
            lines += [f"  {r.name} [{r.dtype}]: {r.message}" for r in self.failures()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "subset": self.subset, "seconds": self.seconds,
                "counts": self.counts(), "pass_rate": self.pass_rate(),
                "by_family": self.by_family(), "causes": dict(self.causes()),
                "results": [vars(r).copy() for r in self.results]}


def harness_primitive(group: str) -> str:
    """The primitive name a harness group exercises (``scatter_add`` -> ``scatter-add``)."""
    return _GROUP_PRIMITIVE.get(group, group)


def harness_family(group: str) -> str:
    """The funcbp rule family of a harness group: where its primitive's rule lives (or would)."""
    from funcbp.autodiff.rules import RULE_MODULES, _suggest_module

    name = harness_primitive(group)
    for prim, module in RULE_MODULES.items():
        if prim.name == name:
            return module.rsplit(".", 1)[-1]
    if name == "random" or name.startswith("random_"):
        return "random"
    return _suggest_module(name).rsplit("/", 1)[-1].removesuffix(".py")


def _all_harnesses() -> list:
    from jax._src.internal_test_util import test_harnesses

    return list(test_harnesses.all_harnesses)


def _kind(dtype: Any) -> str | None:
    d = np.dtype(dtype)
    if d.kind in "fc" and d.itemsize >= (4 if d.kind == "f" else 8):
        return {"f4": "float32", "f8": "float64", "c8": "complex64", "c16": "complex128"}[
            f"{d.kind}{d.itemsize}"]
    return None


_WIDE = {"float32": "float64", "complex64": "complex128"}


def select_harnesses(subset: str = "all", only: Sequence[str] | None = None
                     ) -> list[tuple[Any, str]]:
    """The ``(harness, precision)`` pairs a run covers.

    Args:
      subset: ``"all"``: every float/complex harness jax implements here, in its own precision
        and widened to 64 bits. ``"fast"``: one harness per (group, real or complex), picked
        by a hash of the group's name so the choice is stable and spread over the list, in
        the 64-bit precision only (the strict tolerance).
      only: harness groups or primitive names to keep (``scatter_add`` or ``scatter-add``).

    Returns:
      A list of ``(harness, dtype name)``.
    """
    if subset not in ("all", "fast"):
        raise ValueError(f"subset must be 'all' or 'fast', got {subset!r}")
    platform = jax.default_backend()
    wanted = None if only is None else {*only, *(n.replace("-", "_") for n in only)}
    chosen = []
    for h in _all_harnesses():
        kind = _kind(h.dtype) if h.dtype is not None else None
        if kind is None or not h.filter(platform):
            continue
        if wanted is not None and h.group_name not in wanted and (
                harness_primitive(h.group_name) not in wanted):
            continue
        chosen.append((h, kind))
    if subset == "fast":
        groups: dict[tuple[str, bool], list] = {}
        for h, kind in chosen:
            groups.setdefault((h.group_name, kind.startswith("complex")), []).append((h, kind))
        picked = []
        for (group, _), items in groups.items():
            h, kind = items[zlib.crc32(group.encode()) % len(items)]
            picked.append((h, _WIDE.get(kind, kind)))
        return picked
    out = []
    for h, kind in chosen:
        out.append((h, kind))
        if kind in _WIDE:
            out.append((h, _WIDE[kind]))
    return out


def _is_inexact(x: Any) -> bool:
    return (isinstance(x, (np.ndarray, np.generic, jax.Array))
            and np.asarray(x).dtype.kind in "fc")


def _cast(x: Any, dtype: str) -> Any:
    """Widens a float32/complex64 input to 64 bits when the run is a widened one."""
    if dtype in ("float64", "complex128") and _is_inexact(x):
        a = np.asarray(x)
        if a.dtype in (np.float32, np.complex64):
            return a.astype(np.float64 if a.dtype.kind == "f" else np.complex128)
    return x


def _precision(jaxpr: Any) -> str:
    """The least precise float type the program computes in (complex counts as its parts)."""
    from funcbp.check.grads import _lowest_float, _precision

    parts = {np.dtype(d) for d in _lowest_float(jaxpr, set()) if hasattr(d, "kind")}
    parts = {np.dtype(np.float32) if d == np.complex64 else
             np.dtype(np.float64) if d == np.complex128 else d for d in parts}
    return _precision(parts)


def _cotangents(rng: np.random.RandomState, out: Any) -> list:
    """Random normal cotangents for the float and complex leaves of ``out`` (None for others).

    Drawn with numpy so that no random-number program has to be compiled per harness.
    """
    cts = []
    for o in jax.tree.leaves(out):
        d = np.dtype(o.dtype)
        if d.kind == "f":
            cts.append(rng.standard_normal(o.shape).astype(d))
        elif d.kind == "c":
            cts.append((rng.standard_normal(o.shape) + 1j * rng.standard_normal(o.shape))
                       .astype(d))
        else:
            cts.append(None)
    return cts


def _with_float0(cts: list, out: Any) -> Any:
    """The full cotangent tree: ``cts`` where given, ``float0`` zeros for integer leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(out)
    return treedef.unflatten([np.zeros(o.shape, jax.dtypes.float0) if c is None else c
                              for c, o in zip(cts, leaves, strict=True)])


def _real_view(x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "c":
        return np.stack([a.real, a.imag], -1).astype(np.float64)
    return a.astype(np.float64)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _failure_cause(err: BaseException, prim: str) -> tuple[str, str]:
    """(status, cause) for an error funcbp raised where jax did not."""
    text = str(err)
    m = _NO_COMPLEX.search(text)
    if m:
        return "complex refused", f"complex not handled by '{m[1]}'"
    m = _NO_RULE.search(text)
    if m:
        return "FAIL", f"missing rule '{m[1]}'"
    return "FAIL", f"error in '{prim}': {_LOCATION.sub('', _first_line(err))[:120]}"


def _excluded(name: str) -> str | None:
    import fnmatch

    for pattern, reason in EXCLUDED_HARNESSES.items():
        if fnmatch.fnmatchcase(name, pattern):
            return reason
    return None


def run_one(harness: Any, dtype: str, seed: int = 0) -> HarnessResult:
    """Runs one harness in one precision (see the module docstring)."""
    from funcbp.autodiff.api import vjp as funcbp_vjp
    from funcbp.check.grads import _compare, _scale, default_tolerances

    start = time.perf_counter()
    group = harness.group_name
    prim = harness_primitive(group)
    result = HarnessResult(harness.fullname, group, harness_family(group), dtype, "skip")

    def done(status: str, cause: str = "", message: str = "") -> HarnessResult:
        result.status, result.cause, result.message = status, cause, message
        result.seconds = time.perf_counter() - start
        return result

    reason = _excluded(harness.fullname)
    if reason:
        return done("excluded", reason)
    with jax.enable_x64(dtype in ("float64", "complex128")):
        try:
            # every argument, static ones too: a harness may hold a float32 init value or
            # constant among them, which the 64-bit run must widen with the rest
            args = [_cast(a, dtype) for a in harness.args_maker(np.random.RandomState(seed))]
        except Exception as e:
            return done("skip", "inputs cannot be built", _first_line(e))
        static = [type(d).__name__ == "StaticArg" for d in harness.arg_descriptors]
        nums = [i for i, a in enumerate(args) if not static[i] and _is_inexact(a)]
        if not nums:
            return done("skip", "no float or complex input")

        def f(*floats):
            full = list(args)
            for i, a in zip(nums, floats, strict=True):
                full[i] = a
            return harness.fun(*full)

        floats = tuple(jnp.asarray(args[i]) for i in nums)
        try:
            closed, out_shape = jax.make_jaxpr(f, return_shape=True)(*floats)
        except Exception as e:
            return done("skip", f"does not run in {dtype}", _first_line(e))
        precision = _precision(closed.jaxpr)
        rng = np.random.RandomState(zlib.crc32(f"{seed}/{harness.fullname}".encode()))
        cts = _cotangents(rng, out_shape)

        def pull(vjp: Callable) -> Callable:
            return jax.jit(lambda xs, cts: vjp(f, *xs)[1](_with_float0(cts, out_shape)))

        try:
            refs = jax.block_until_ready(pull(jax.vjp)(floats, cts))
        except Exception as e:
            return done("jax cannot", "jax.vjp raises", _first_line(e))
        try:
            ours = jax.block_until_ready(pull(funcbp_vjp)(floats, cts))
        except Exception as e:
            status, cause = _failure_cause(e, prim)
            return done(status, cause, _LOCATION.sub("", _first_line(e)))
    rtol, atol = default_tolerances(precision, "jax")
    np_refs = [_real_view(r) for r in refs]
    scale = _scale(np_refs)
    for i, (a, b, b64) in enumerate(zip(ours, refs, np_refs, strict=True)):
        if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
            return done("FAIL", f"wrong shape or dtype in '{prim}'",
                        f"input {i}: funcbp {np.asarray(a).dtype}{list(np.shape(a))}, jax "
                        f"{np.asarray(b).dtype}{list(np.shape(b))}")
        abs_e, rel_e, worst, ok = _compare(_real_view(a), b64, rtol, atol * scale)
        if not ok:
            flat_a, flat_b = _real_view(a).ravel(), b64.ravel()
            return done("FAIL", f"wrong values in '{prim}'",
                        f"input {i}: funcbp {flat_a[worst]:.6g}, jax {flat_b[worst]:.6g} "
                        f"(rel err {rel_e:.2g} > {rtol:.0e}, computed in {precision})")
    return done("pass")


def run_harnesses(subset: str = "all", only: Sequence[str] | None = None, *, seed: int = 0,
                  progress: Callable[[str, list[HarnessResult]], None] | None = None
                  ) -> HarnessReport:
    """Runs jax's primitive harnesses through ``funcbp.vjp`` and ``jax.vjp`` and compares.

    Args:
      subset: ``"all"`` or ``"fast"`` (see :func:`select_harnesses`).
      only: harness groups or primitive names to run (default: all).
      seed: seed of the inputs and the output cotangents.
      progress: called as ``progress(group, results_of_that_group)`` after each group.

    Returns:
      A :class:`HarnessReport`: per-family counts (:meth:`HarnessReport.by_family`), failure
      causes (:meth:`HarnessReport.causes`) and one :class:`HarnessResult` per run.

    Examples:
      >>> from funcbp.check.harnesses import run_harnesses
      >>> report = run_harnesses("fast", only=["tanh"])
      >>> report.counts()["pass"]
      1
    """
    start = time.perf_counter()
    results: list[HarnessResult] = []
    by_group: dict[str, list] = {}
    for h, dtype in select_harnesses(subset, only):
        by_group.setdefault(h.group_name, []).append((h, dtype))
    for group, items in by_group.items():
        group_results = []
        for h, dtype in items:
            r = run_one(h, dtype, seed)
            if subset == "fast" and r.cause.startswith("does not run in"):
                r = run_one(h, _kind(h.dtype), seed)  # the harness fixes its own precision
            group_results.append(r)
        results += group_results
        if progress is not None:
            progress(group, group_results)
    return HarnessReport(results, time.perf_counter() - start, subset)
