"""``check_grads``: funcbp's gradients against ``jax.vjp`` and against finite differences.

Two independent references, reported side by side for every differentiated leaf:

- **vs jax**: ``jax.vjp`` on the same inputs, in the inputs' own dtype. It applies the same
  user ``custom_jvp``/``custom_vjp`` rules that funcbp applies, so it cannot see a wrong user
  rule; it catches a wrong funcbp rule.
- **vs finite differences**: central differences of the primal computation, in float64
  wherever the function computes in float64, so they differentiate what the function
  *computes* and catch a wrong user rule as well as a wrong funcbp rule.

Errors are judged as ``|ours - ref| <= atol * scale + rtol * |ref|`` elementwise, where
``scale`` is the largest reference gradient entry over all leaves (the gradient's own size),
and reported as a relative error with that absolute floor, ``|ours - ref| / (|ref| + atol *
scale / rtol)``, so that a comparison passes exactly when its relative error is at most
``rtol``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from funcbp.autodiff.api import vjp as funcbp_vjp
from funcbp.autodiff.trace import all_jaxprs
from funcbp.check import kinks as _kinks
from funcbp.check.modes import (
    ExtraCheck,
    batched_check,
    determinism_check,
    forward_mode_check,
)

__all__ = ["Comparison", "ExtraCheck", "GradCheckError", "GradCheckReport", "GradCheckWarning",
           "LeafCheck", "check_grads", "default_tolerances"]

#: dtype -> (rtol, atol) for funcbp against jax in that dtype.
JAX_TOLERANCES = {
    "float64": (1e-9, 1e-12),
    "float32": (1e-4, 1e-6),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}
#: precision of the finite differences -> (rtol, atol).
FD_TOLERANCES = {
    "float64": (1e-5, 1e-7),
    "float32": (3e-2, 3e-3),
    "float16": (2e-1, 2e-1),
    "bfloat16": (3e-1, 3e-1),
}


def default_tolerances(dtype: Any, method: str = "jax") -> tuple[float, float]:
    """``(rtol, atol)`` used by :func:`check_grads` for ``dtype`` (``method``: jax or fd)."""
    table = JAX_TOLERANCES if method == "jax" else FD_TOLERANCES
    return table.get(jnp.dtype(dtype).name, table["float32"])


class GradCheckWarning(UserWarning):
    """A finite-difference stencil straddled a kink (relu at 0, a tie of max, a clip bound):
    those entries are reported, not failed."""


class GradCheckError(AssertionError):
    """Raised by ``check_grads(..., raise_on_failure=True)`` when a leaf fails; holds the report."""

    def __init__(self, report: GradCheckReport):
        self.report = report
        super().__init__(report.failure_message())


@dataclass
class Comparison:
    """funcbp's gradient of one leaf against one reference.

    Attributes:
      method: ``"jax"`` or ``"fd"``.
      max_abs_err: largest ``|ours - ref|``.
      max_rel_err: largest ``|ours - ref| / (|ref| + atol * scale / rtol)``.
      worst: where it is largest: an index tuple, or ``"direction k"`` for a random direction.
      ours, ref: the two values there.
      rtol, atol: tolerances used (``atol`` already multiplied by the gradient's scale).
      passed: ``max_rel_err <= rtol`` (and nothing non-finite where the other is finite).
      checked: what was compared (``"all 12"``, ``"16 of 4096 coords + 4 directions"``).
      dtype: the dtype the comparison ran in.
      kinks: entries left out because the finite-difference stencil straddles a point where
        the function is not differentiable, with the equation that switches branch there
        (``"(2,): max at model.py:12"``); the errors above are over the other entries.
    """

    method: str
    max_abs_err: float
    max_rel_err: float
    worst: Any
    ours: float
    ref: float
    rtol: float
    atol: float
    passed: bool
    checked: str
    dtype: str
    kinks: list = field(default_factory=list)


@dataclass
class LeafCheck:
    """The comparisons of one differentiated leaf (``vs_fd`` None when not requested;
    ``vs_ref`` one per reference function given in ``against``, by its name)."""

    path: str
    shape: tuple
    dtype: str
    vs_jax: Comparison | None = None
    vs_fd: Comparison | None = None
    vs_ref: dict = field(default_factory=dict)

    def comparisons(self) -> list[Comparison]:
        return [c for c in (self.vs_jax, self.vs_fd, *self.vs_ref.values()) if c is not None]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons())


@dataclass
class GradCheckReport:
    """What :func:`check_grads` found, leaf by leaf; ``print(report)`` shows a table."""

    leaves: list[LeafCheck]
    function: str = "f"
    fd_dtype: str | None = None
    fd_note: str = ""
    skipped: list[str] = field(default_factory=list)
    grad_fn: str = "funcbp"
    checks: list[ExtraCheck] = field(default_factory=list)
    second_order: GradCheckReport | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (all(leaf.passed for leaf in self.leaves) and all(c.passed for c in self.checks)
                and (self.second_order is None or self.second_order.passed))

    @property
    def failures(self) -> list[LeafCheck]:
        return [leaf for leaf in self.leaves if not leaf.passed]

    def to_dict(self) -> dict:
        """A JSON-serialisable form (for CI logs)."""
        d = asdict(self)
        d["passed"] = self.passed
        for leaf in d["leaves"]:
            leaf["shape"] = list(leaf["shape"])
            for c in [leaf["vs_jax"], leaf["vs_fd"], *leaf["vs_ref"].values()]:
                if c is not None and isinstance(c["worst"], tuple):
                    c["worst"] = list(c["worst"])
        if self.second_order is not None:
            d["second_order"] = self.second_order.to_dict()
        return d

    def _status(self) -> str:
        parts = []
        if self.failures:
            parts.append(f"{len(self.failures)} of {len(self.leaves)} leaves")
        parts += [c.name.split(":")[0].split(" (")[0] for c in self.checks if not c.passed]
        if self.second_order is not None and not self.second_order.passed:
            parts.append("second order")
        return ", ".join(parts)

    def failure_message(self) -> str:
        lines = [f"check_grads({self.function}, grad_fn={self.grad_fn}): wrong gradients: "
                 f"{self._status()}"]
        for leaf in self.failures:
            for c in leaf.comparisons():
                if not c.passed:
                    ref = {"jax": "jax.vjp", "fd": "finite differences"}.get(c.method, c.method)
                    lines.append(
                        f"  {leaf.path}: vs {ref}: rel err {c.max_rel_err:.3g} > rtol {c.rtol:.3g}"
                        f" at {_fmt_index(c.worst)} ({self.grad_fn} {c.ours:.6g}, {ref} "
                        f"{c.ref:.6g})")
            if (leaf.vs_fd is not None and not leaf.vs_fd.passed and leaf.vs_jax is not None
                    and leaf.vs_jax.passed):
                lines.append(f"    hint: funcbp agrees with jax but not with the primal "
                             f"computation: a custom_jvp/custom_vjp rule on the path to "
                             f"{leaf.path} is probably wrong (jax applies it too)")
            elif leaf.vs_jax is None and leaf.vs_fd is not None and not leaf.vs_fd.passed:
                lines.append(f"    hint: {self.grad_fn} disagrees with the primal computation "
                             f"on {leaf.path}: a custom_jvp/custom_vjp rule on its path, or the "
                             "gradient function itself, is wrong")
            elif leaf.vs_jax is not None and not leaf.vs_jax.passed:
                lines.append(f"    hint: funcbp disagrees with jax on {leaf.path}: a funcbp VJP "
                             "rule (or one you registered) is probably wrong; "
                             "funcbp.explain(f, *args) shows which rules ran")
        lines += [f"  {c}" for c in self.checks if not c.passed]
        if self.second_order is not None and not self.second_order.passed:
            lines.append("  second order (gradient of the gradient, HVPs):")
            lines += ["  " + line for line in self.second_order.failure_message().splitlines()]
        return "\n".join(lines)

    def __str__(self) -> str:
        status = "PASSED" if self.passed else f"FAILED ({self._status()})"
        head = [f"check_grads({self.function}, grad_fn={self.grad_fn}): {status}"]
        if self.fd_note:
            head.append(f"  finite differences: {self.fd_note}")
        if self.skipped:
            head.append(f"  not differentiated (not float): {', '.join(self.skipped)}")
        cols = ["leaf", "shape", "dtype"]
        rows = []
        methods = [m for m in ("jax", "fd") if any(getattr(lf, f"vs_{m}") for lf in self.leaves)]
        refs = list(dict.fromkeys(k for lf in self.leaves for k in lf.vs_ref))
        for label in methods + refs:
            cols += [f"{label} max abs", f"{label} max rel", f"{label} worst", f"{label}"]
        for leaf in self.leaves:
            row = [leaf.path, str(tuple(leaf.shape)), leaf.dtype]
            for label in methods + refs:
                c = getattr(leaf, f"vs_{label}") if label in methods else leaf.vs_ref.get(label)
                if c is None:
                    row += ["-", "-", "-", "-"]
                else:
                    row += [f"{c.max_abs_err:.2e}", f"{c.max_rel_err:.2e}",
                            _fmt_index(c.worst),
                            ("kink" if c.kinks else "ok") if c.passed else "FAIL"]
            rows.append(row)
        out = head + [format_table(cols, rows)]
        out += [f"  warning: {w}" for w in self.warnings]
        out += [f"  {c}" for c in self.checks]
        if self.second_order is not None:
            out.append("second order (gradient of <c, grad f>: Hessian-vector products):")
            out += ["  " + line for line in str(self.second_order).splitlines()]
        return "\n".join(out)

    __repr__ = __str__


def format_table(cols: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width plain-text table."""
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c))
              for i, c in enumerate(cols)]
    def line(cells):
        return "  ".join(str(x).ljust(w) for x, w in zip(cells, widths, strict=True)).rstrip()
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt_index(idx: Any) -> str:
    if isinstance(idx, tuple):
        return "(" + ", ".join(str(i) for i in idx) + ("," if len(idx) == 1 else "") + ")"
    return str(idx)


# --- the check ----------------------------------------------------------------------------------

def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _dtype_name(x: Any) -> str:
    return jnp.dtype(jnp.result_type(x)).name


def _lowest_float(jaxpr: core.Jaxpr, found: set) -> set:
    """Every float dtype a value of ``jaxpr`` (and its sub-jaxprs) has."""
    for j in all_jaxprs(jaxpr):
        for v in list(j.invars) + list(j.constvars):
            found.add(v.aval.dtype)
        for eqn in j.eqns:
            for v in eqn.outvars:
                if hasattr(v.aval, "dtype"):
                    found.add(v.aval.dtype)
    return found


def _precision(dtypes: set) -> str:
    floats = [jnp.dtype(d) for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    if not floats:
        return "float64"
    return max(floats, key=lambda d: jnp.finfo(d).eps).name  # the least precise


def _compare(ours: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> tuple:
    """(max abs err, max rel err, flat index of the worst, passed) with non-finite handling."""
    ours = np.asarray(ours, np.float64).ravel()
    ref = np.asarray(ref, np.float64).ravel()
    if ours.size == 0:
        return 0.0, 0.0, None, True
    same = (ours == ref) | (np.isnan(ours) & np.isnan(ref))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same, 0.0, np.abs(ours - ref))
    diff = np.where(np.isnan(diff), np.inf, diff)
    floor = atol / rtol if rtol > 0 else 0.0
    denom = np.where(np.isfinite(ref), np.abs(ref), 0.0) + floor
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / denom)
    rel = np.where(np.isnan(rel), np.inf, rel)
    worst = int(np.argmax(rel))
    return float(diff.max()), float(rel.max()), worst, bool(rel.max() <= rtol)


def _scale(refs: Sequence[np.ndarray]) -> float:
    finite = [np.abs(r[np.isfinite(r)]).max() for r in refs if np.size(r) and
              np.isfinite(r).any()]
    return float(max(finite, default=0.0)) or 1.0


def _cotangent(out: Any, key: jax.Array, ones: bool) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(out)
    keys = jax.random.split(key, max(len(leaves), 1))
    cts = []
    for k, x in zip(keys, leaves, strict=False):
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.inexact):
            cts.append(np.zeros(np.shape(x), jax.dtypes.float0))
        elif ones:
            cts.append(jnp.ones(np.shape(x), dtype))
        else:
            cts.append(jax.random.normal(k, np.shape(x), dtype))
    return treedef.unflatten(cts)


def _cast_tree(tree: Any, like: Any) -> Any:
    def cast(c, x):
        if isinstance(c, np.ndarray) and c.dtype == jax.dtypes.float0:
            return c
        if not isinstance(c, jax.core.Tracer):  # cast on the host: no lower-precision constant
            return np.asarray(c).astype(jnp.result_type(x))  # in a traced function's jaxpr
        return jnp.asarray(c, jnp.result_type(x))
    return jax.tree.map(cast, tree, like)


def _inner(ct: Any, out: Any) -> jax.Array:
    """sum_i <ct_i, out_i> over the float leaves, in float64."""
    total = jnp.zeros((), jnp.float64)
    for c, o in zip(jax.tree.leaves(ct), jax.tree.leaves(out), strict=True):
        if _is_float(o):
            total = total + jnp.sum(jnp.asarray(c, jnp.float64) * jnp.asarray(o, jnp.float64))
    return total


def check_grads(f: Callable, args: Sequence[Any], argnums: int | Sequence[int] | None = None, *,
                grad_fn: Callable | None = None, against: Sequence[Any] | None = None,
                order: int = 1, modes: Sequence[str] = ("rev",), jvp_fn: Callable | None = None,
                batched: bool = False, deterministic: bool = False, kinks: bool = True,
                rtol: float | None = None, atol: float | None = None,
                fd_rtol: float | None = None, fd_atol: float | None = None,
                eps: float | None = None, max_coords: int = 64, num_directions: int = 4,
                methods: Sequence[str] = ("jax", "fd"), seed: int = 0,
                raise_on_failure: bool = False, verbose: bool = False) -> GradCheckReport:
    """Checks the gradients of ``f`` (funcbp's, jax's, or any) against references.

    For an output cotangent ``c`` (1 for a scalar output, random otherwise) and the scalar
    ``L(x) = <c, f(x)>``, the gradient being checked is ``grad_fn(L)`` (funcbp's reverse mode by
    default), and every float leaf ``x`` of the differentiated arguments gets:

    - vs jax: against ``jax.vjp(f, ...)``, elementwise, in ``x``'s dtype;
    - vs fd: the gradient (in float64) against central differences
      ``(L(x + h e_i) - L(x - h e_i)) / 2h`` along each coordinate (up to ``max_coords`` of
      them, chosen at random for larger leaves, which also get ``num_directions`` random unit
      directions ``v`` compared as ``<grad, v>``). Inputs are cast to float64 under
      ``jax.enable_x64``; ``h = eps * max(1, max|x|)`` with ``eps = 1e-6``, or
      ``cbrt(machine eps)`` of the least precise float dtype the function computes in (if it
      casts down internally), and tolerances loosened to match. An entry whose stencil
      straddles a kink (a kink-prone equation such as ``max``, ``abs``, ``clamp``, ``select_n``
      or a comparison takes another branch at ``x - h`` than at ``x + h``: relu at 0, a tie, a
      clip bound) is reported as a warning naming that equation, not as a failure;
    - vs each reference function in ``against``, elementwise, in ``x``'s dtype.

    A leaf passes when ``|ours - ref| <= atol * scale + rtol * |ref|`` everywhere, ``scale``
    being the largest reference entry over all leaves. Defaults depend on the dtype
    (:data:`JAX_TOLERANCES`, :data:`FD_TOLERANCES`). Optional whole-function checks: forward
    mode (``modes`` with ``"fwd"``: ``jvp_fn``'s tangents against finite differences), the
    gradient of the gradient (``order=2``: the same checks on ``x -> grad L(x)``, whose vector
    products are Hessian-vector products), ``batched`` and ``deterministic``.

    Args:
      f: a pure function of pytrees of arrays (any output pytree).
      args: tuple of positional arguments.
      argnums: which arguments to differentiate (default: all); their float leaves are
        checked, integer/bool leaves are held fixed.
      grad_fn: the gradient to check, a transformation like ``jax.grad``:
        ``grad_fn(fun, argnums=...)(*xs)`` (``funcbp.grad`` by default; ``jax.grad``; your
        own). To check a hand-written gradient ``g(*args)`` of a scalar ``f``, pass
        ``lambda fun, argnums: g``-style adapters over ``f``'s flattened float leaves.
      against: the references, any of ``"fd"``, ``"jax"`` and transformations like
        ``grad_fn`` (compared as ``"ref"``, or their ``__name__``). Default ``methods``, minus
        ``"jax"`` when ``grad_fn`` is jax's own (it would compare jax with itself).
      order: 1, or 2 to also check the gradient of the gradient.
      modes: ``"rev"`` (the gradient, leaf by leaf) and/or ``"fwd"`` (forward mode).
      jvp_fn: the forward mode to check, like ``jax.jvp`` (the default: funcbp has no forward
        mode of its own).
      batched: also check ``jax.vmap`` of the gradient against a loop over three inputs.
      deterministic: also check that two runs (eager, and compiled) agree bit for bit.
      kinks: look for kinks on failing finite-difference entries (on by default).
      rtol, atol: override the tolerances against jax and reference functions.
      fd_rtol, fd_atol: override the vs-finite-differences tolerances.
      eps: relative finite-difference step (overrides the default).
      max_coords: coordinates checked per leaf by finite differences.
      num_directions: random directions checked for leaves larger than ``max_coords`` (and
        by the forward-mode check).
      methods: the older spelling of ``against`` (strings only).
      seed: seeds the output cotangent, the coordinates and the directions.
      raise_on_failure: raise :class:`GradCheckError` (an ``AssertionError``) naming the
        failing leaves instead of returning a failing report.
      verbose: print the report.

    Returns:
      A :class:`GradCheckReport`: per leaf (jax key path such as ``['dense_0']['w']``) the max
      absolute and relative errors, the worst index and pass/fail for each comparison; the
      whole-function checks; the second-order report; kink warnings.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp.check import check_grads
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> loss = lambda p, x: jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)
      >>> check_grads(loss, (params, jnp.arange(3.0)), argnums=0).passed
      True
      >>> check_grads(loss, (params, jnp.arange(3.0)), argnums=0, grad_fn=jax.grad,
      ...             order=2).passed
      True
    """
    if not callable(f):
        raise TypeError(f"check_grads expects a function as its first argument, got {f!r}")
    if not isinstance(args, (tuple, list)):
        raise TypeError("check_grads(f, args): args must be a tuple of positional arguments, "
                        f"got {type(args).__name__}; wrap a single argument as (x,)")
    methods, references = _references(grad_fn, against, methods)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    bad_modes = [m for m in modes if m not in ("rev", "fwd")]
    if bad_modes or not modes:
        raise ValueError(f"modes must be a non-empty subset of ('rev', 'fwd'), got {modes!r}")
    if grad_fn is not None and not callable(grad_fn):
        raise TypeError(f"grad_fn must be a transformation like jax.grad, got {grad_fn!r}")
    args = tuple(args)
    nums = tuple(range(len(args))) if argnums is None else (
        (argnums,) if isinstance(argnums, int) else tuple(argnums))
    for n in nums:
        if not -len(args) <= n < len(args):
            raise ValueError(f"argnums={argnums!r} is out of range for {len(args)} arguments")
    nums = tuple(n % len(args) for n in nums)
    name = getattr(f, "__name__", type(f).__name__)

    # Flatten the differentiated arguments; keep the float leaves, hold the rest fixed.
    dyn = tuple(args[n] for n in nums)
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(dyn)
    paths, leaves = [], []
    for path, x in path_leaves:
        inner = jax.tree_util.keystr(path[1:])
        n = nums[path[0].idx]
        paths.append(inner or f"args[{n}]" if len(nums) == 1 else f"args[{n}]{inner}")
        leaves.append(x)
    float_pos = [i for i, x in enumerate(leaves) if _is_float(x)]
    skipped = [paths[i] or "args" for i in range(len(leaves)) if i not in float_pos]
    if not float_pos:
        raise ValueError(f"check_grads({name}): no float leaves to differentiate in arguments "
                         f"{nums}; found only {', '.join(skipped) or 'empty pytrees'}")

    def make_flat(fixed_args, fixed_leaves):
        def flat_f(*float_leaves):
            full = list(fixed_leaves)
            for i, x in zip(float_pos, float_leaves, strict=True):
                full[i] = x
            new_dyn = jax.tree_util.tree_unflatten(treedef, full)
            all_args = list(fixed_args)
            for n, a in zip(nums, new_dyn, strict=True):
                all_args[n] = a
            return f(*all_args)
        return flat_f

    flat_f = make_flat(args, leaves)

    xs = [jnp.asarray(leaves[i]) for i in float_pos]
    key = jax.random.key(seed)
    out = jax.eval_shape(flat_f, *xs)
    out_leaves = jax.tree.leaves(out)
    scalar_out = len(out_leaves) == 1 and out_leaves[0].shape == ()
    ct = _cotangent(out, key, ones=scalar_out)

    results = [LeafCheck(paths[i] or "args", tuple(np.shape(leaves[i])), _dtype_name(leaves[i]))
               for i in float_pos]

    def grad_of(*ls):
        return _gradients(grad_fn, flat_f, ls, ct)

    compiled_grad = _compiled(grad_of)
    rev = "rev" in modes
    if rev and ("jax" in methods or references):
        ours = [np.asarray(g) for g in compiled_grad(*xs)]
        compared = []
        if "jax" in methods:
            _, ref_pull = jax.vjp(flat_f, *xs)
            compared.append(("jax", None, [np.asarray(g) for g in ref_pull(ct)]))
        for ref_name, ref_fn in references:
            ref_grad = _compiled(lambda *ls, ref_fn=ref_fn: _gradients(ref_fn, flat_f, ls, ct))
            compared.append((ref_name, ref_name, [np.asarray(g) for g in ref_grad(*xs)]))
        for method, ref_name, refs in compared:
            scale = _scale(refs)
            for res, x, o, r in zip(results, xs, ours, refs, strict=True):
                d_rtol, d_atol = default_tolerances(x.dtype, "jax")
                rt = d_rtol if rtol is None else rtol
                at = (d_atol if atol is None else atol) * scale
                abs_e, rel_e, w, ok = _compare(o, r, rt, at)
                widx = np.unravel_index(w, o.shape) if w is not None else None
                c = Comparison(
                    method, abs_e, rel_e,
                    tuple(int(i) for i in widx) if widx is not None else None,
                    float(o.ravel()[w]) if w is not None else 0.0,
                    float(r.ravel()[w]) if w is not None else 0.0, rt, at, ok,
                    f"all {o.size}", res.dtype)
                if ref_name is None:
                    res.vs_jax = c
                else:
                    res.vs_ref[ref_name] = c

    fd_dtype, fd_note, checks, notes = None, "", [], []
    make64 = lambda: make_flat(_to_float64(args), _to_float64(leaves))  # noqa: E731
    if "fd" in methods and rev:
        fd_dtype, fd_note = _finite_differences(
            flat_f, make64, xs, ct, results, grad_fn=grad_fn,
            eps=eps, fd_rtol=fd_rtol, fd_atol=fd_atol, max_coords=max_coords,
            num_directions=num_directions, seed=seed, kinks=kinks)
        notes = [f"{r.path} {k}" for r in results if r.vs_fd is not None for k in r.vs_fd.kinks]
    if "fwd" in modes:
        checks.append(_forward_mode(jvp_fn, flat_f, make64, xs, eps=eps, fd_rtol=fd_rtol,
                                    fd_atol=fd_atol, num_directions=num_directions, seed=seed))
    tol = default_tolerances(_precision({x.dtype for x in xs}), "jax")
    tol = (tol[0] if rtol is None else rtol, tol[1] if atol is None else atol)
    if batched:
        checks.append(batched_check(compiled_grad, xs, rtol=tol[0], atol=tol[1], seed=seed))
    if deterministic:
        checks.append(determinism_check(grad_of, xs))
    second = None
    if order == 2:
        def gradient(*ls):
            return tuple(_gradients(grad_fn, flat_f, ls, ct))

        gradient.__name__ = f"grad_{name}"
        second = check_grads(
            gradient, tuple(xs), grad_fn=grad_fn, against=against, order=1, modes=modes,
            jvp_fn=jvp_fn, kinks=kinks, rtol=rtol, atol=atol, fd_rtol=fd_rtol, fd_atol=fd_atol,
            eps=eps, max_coords=max_coords, num_directions=num_directions, methods=methods,
            seed=seed + 1)
        for leaf, res in zip(second.leaves, results, strict=True):
            leaf.path = res.path
        notes += [f"second order: {w}" for w in second.warnings]

    report = GradCheckReport(results, name, fd_dtype, fd_note, skipped, _name_of(grad_fn),
                             checks, second)
    if notes:
        report.warnings = [f"finite differences straddle a kink (not a failure): {n}"
                           for n in notes]
        warnings.warn(f"check_grads({name}): " + "; ".join(report.warnings), GradCheckWarning,
                      stacklevel=2)
    if verbose:
        print(report)
    if raise_on_failure and not report.passed:
        raise GradCheckError(report)
    return report


def _name_of(fn: Callable | None) -> str:
    if fn is None:
        return "funcbp"
    mod = getattr(fn, "__module__", "") or ""
    base = getattr(fn, "__name__", type(fn).__name__)
    if mod.startswith("jax"):
        return f"jax.{base}"
    if mod.startswith("funcbp"):
        return f"funcbp.{base}"
    return base


def _is_jax_grad(fn: Callable | None) -> bool:
    return fn is not None and fn in (jax.grad, jax.value_and_grad)


def _references(grad_fn, against, methods) -> tuple[tuple[str, ...], list]:
    """``(methods among "jax"/"fd", [(name, reference transformation)])`` from the arguments."""
    spec = tuple(methods) if against is None else (
        (against,) if isinstance(against, str) or callable(against) else tuple(against))
    strings = tuple(m for m in spec if isinstance(m, str))
    bad = [m for m in strings if m not in ("jax", "fd")]
    if bad or not spec:
        raise ValueError(f"methods/against must name 'jax', 'fd' or reference functions, got "
                         f"{spec!r}")
    if against is None and _is_jax_grad(grad_fn):
        strings = tuple(m for m in strings if m != "jax") or ("fd",)
    refs = []
    for r in spec:
        if not isinstance(r, str):
            if not callable(r):
                raise TypeError(f"against: {r!r} is neither 'jax', 'fd' nor a function")
            label = getattr(r, "__name__", "ref")
            refs.append(("ref" if label == "<lambda>" else label, r))
    return strings, refs


def _compiled(fn: Callable) -> Callable:
    """``jax.jit(fn)`` (one compilation instead of one per eager operation), or ``fn`` itself
    for a function with Python control flow on values."""
    jitted = jax.jit(fn)

    def call(*args):
        try:
            return jitted(*args)
        except jax.errors.JAXTypeError:
            return fn(*args)
    return call


def _gradients(transform: Callable | None, flat_f: Callable, xs: Sequence[Any], ct: Any) -> list:
    """The gradient of ``L = <ct, flat_f(xs)>`` with respect to every leaf of ``xs``: funcbp's
    pullback of ``ct`` when ``transform`` is None, else ``transform(L, argnums=...)``."""
    ct = _cast_tree(ct, jax.eval_shape(flat_f, *xs))
    if transform is None:
        _, pull = funcbp_vjp(flat_f, *xs)
        return list(pull(ct))
    out_leaves = jax.tree.leaves(jax.eval_shape(flat_f, *xs))
    if len(out_leaves) == 1 and out_leaves[0].shape == ():
        def scalar(*ls):  # a scalar output: L is f itself (c = 1)
            return jax.tree.leaves(flat_f(*ls))[0]
    else:
        def scalar(*ls):
            return sum(jnp.sum(c * o) for c, o in zip(jax.tree.leaves(ct),
                                                      jax.tree.leaves(flat_f(*ls)), strict=True)
                       if _is_float(o))
    g = transform(scalar, argnums=tuple(range(len(xs))))(*xs)
    return list(g)


def _to_float64(tree: Any) -> Any:
    """Casts the floating leaves of ``tree`` to float64 (call under ``jax.enable_x64``)."""
    def cast(x):
        if isinstance(x, (jax.Array, np.ndarray, np.generic, float)) and jnp.issubdtype(
                jnp.result_type(x), jnp.floating):
            return jnp.asarray(x, jnp.float64)
        return x
    return jax.tree.map(cast, tree)


def _float64_world(flat_f, make_flat64, xs):
    """``(function, inputs, precision, note)`` for finite differences: float64 where it runs."""
    try:
        xs64 = _to_float64(list(xs))
        flat64 = make_flat64()
        closed = jax.make_jaxpr(flat64)(*xs64)
        return flat64, xs64, _precision(_lowest_float(closed.jaxpr, set())), \
            "inputs cast to float64"
    except Exception as e:  # the function cannot run on float64 inputs
        closed = jax.make_jaxpr(flat_f)(*xs)
        return flat_f, list(xs), _precision(_lowest_float(closed.jaxpr, set())), \
            f"inputs kept in their dtype ({type(e).__name__} in float64)"


def _forward_mode(jvp_fn, flat_f, make_flat64, xs, *, eps, fd_rtol, fd_atol, num_directions,
                  seed) -> ExtraCheck:
    with jax.enable_x64(True):
        fn64, xs64, precision, _ = _float64_world(flat_f, make_flat64, xs)
        step = eps if eps is not None else (
            1e-6 if precision == "float64" else float(np.cbrt(jnp.finfo(precision).eps)))
        d_rtol, d_atol = default_tolerances(precision, "fd")
        return forward_mode_check(
            jvp_fn or jax.jvp, _name_of(jvp_fn or jax.jvp), fn64, xs64, step=step,
            rtol=d_rtol if fd_rtol is None else fd_rtol,
            atol=d_atol if fd_atol is None else fd_atol, precision=precision,
            num_directions=max(1, num_directions), seed=seed)


def _finite_differences(flat_f, make_flat64, xs, ct, results, *, grad_fn, eps, fd_rtol, fd_atol,
                        max_coords, num_directions, seed, kinks) -> tuple[str, str]:
    """Fills ``results[i].vs_fd``; returns (the precision used, a one-line note)."""
    with jax.enable_x64(True):
        flat_f, xs64, precision, cast_note = _float64_world(flat_f, make_flat64, xs)
        out = jax.eval_shape(flat_f, *xs64)
        ct64 = _cast_tree(ct, out)
        ours = [np.asarray(g, np.float64) for g in _compiled(
            lambda *ls: _gradients(grad_fn, flat_f, ls, ct64))(*xs64)]

        def loss(*ls):
            return _inner(ct64, flat_f(*ls))

        try:
            loss_fn = jax.jit(loss)
            loss_fn(*xs64)
        except jax.errors.JAXTypeError:  # Python control flow on values: evaluate eagerly
            loss_fn = loss

        base = eps if eps is not None else (
            1e-6 if precision == "float64" else float(np.cbrt(jnp.finfo(precision).eps)))
        d_rtol, d_atol = default_tolerances(precision, "fd")
        rt = d_rtol if fd_rtol is None else fd_rtol
        at_rel = d_atol if fd_atol is None else fd_atol
        level = abs(float(loss_fn(*xs64)))
        rng = np.random.default_rng(seed)

        raw = []  # per leaf: (ours values, fd values, labels, h, n, ncoords, dirs, stencils)
        for i, x in enumerate(xs64):
            x_np = np.asarray(x)
            h = base * max(1.0, float(np.abs(x_np).max(initial=0.0)))
            dtype = x_np.dtype

            def at(x_new, i=i, dtype=dtype):
                ls = list(xs64)
                ls[i] = jnp.asarray(x_new, dtype)
                return loss_fn(*ls)

            n = x_np.size
            if n <= max_coords:
                coords = np.arange(n)
            else:
                coords = rng.choice(n, size=max_coords - 1, replace=False)
                top = int(np.argmax(np.abs(ours[i]).ravel()))
                coords = np.unique(np.append(coords, top))
            vals, refs, labels, steps = [], [], [], []
            flat = x_np.ravel()
            for c in coords:
                e = np.zeros(n)
                e[c] = h
                vals.append(ours[i].ravel()[c])
                refs.append((at((flat + e).reshape(x_np.shape)),
                             at((flat - e).reshape(x_np.shape))))
                labels.append(tuple(int(k) for k in np.unravel_index(c, x_np.shape)))
                steps.append(("coord", int(c)))
            dirs = num_directions if n > max_coords else 0
            for k in range(dirs):
                v = rng.standard_normal(n)
                v /= np.linalg.norm(v)
                vals.append(float(ours[i].ravel() @ v))
                refs.append((at((flat + h * v).reshape(x_np.shape)),
                             at((flat - h * v).reshape(x_np.shape))))
                labels.append(f"direction {k}")
                steps.append(("dir", v))
            fd = np.array([(float(p) - float(m)) / (2 * h) for p, m in refs])
            raw.append((np.array(vals, np.float64), fd, labels, h, n, len(coords), dirs, steps))

        scale = _scale([r[1] for r in raw])
        for i, (res, (vals, fd, labels, h, n, ncoords, dirs, steps)) in enumerate(
                zip(results, raw, strict=True)):
            # the rounding noise of a difference quotient: eps(precision) * |L| / h
            noise = 16 * float(jnp.finfo(precision).eps) * (level + 1e-300) / h
            at = at_rel * scale + noise
            kinked = _kinked(loss, xs64, i, h, vals, fd, rt, at, steps, labels) if kinks else {}
            keep = np.array([j not in kinked for j in range(len(vals))], bool)
            kept_labels = [lab for j, lab in enumerate(labels) if keep[j]]
            abs_e, rel_e, w, ok = _compare(vals[keep], fd[keep], rt, at)
            checked = f"all {n}" if ncoords == n else (
                f"{ncoords} of {n} coords" + (f" + {dirs} directions" if dirs else ""))
            res.vs_fd = Comparison(
                "fd", abs_e, rel_e, kept_labels[w] if w is not None else None,
                float(vals[keep][w]) if w is not None else 0.0,
                float(fd[keep][w]) if w is not None else 0.0,
                rt, at, ok, checked, precision,
                [f"{_fmt_index(labels[j])}: {where}" for j, where in kinked.items()])
    note = f"{precision}, {cast_note}, relative step {base:.1e}"
    return precision, note


#: failing finite-difference entries of one leaf probed for kinks (more are left as failures).
MAX_KINK_PROBES = 16


def _kinked(loss, xs64, i, h, vals, fd, rtol, atol, steps, labels) -> dict[int, str]:
    """Failing entries whose stencil straddles a kink: ``{entry: equation that switches}``."""
    floor = atol / rtol if rtol > 0 else 0.0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        rel = np.abs(vals - fd) / (np.abs(fd) + floor)
    failing = np.flatnonzero(~(rel <= rtol))
    found: dict[int, str] = {}
    x = np.asarray(xs64[i])
    for j in failing[:MAX_KINK_PROBES]:
        kind, what = steps[j]
        if kind == "coord":
            d = np.zeros(x.size)
            d[what] = h
        else:
            d = h * what
        points = []
        for sign in (-1.0, 1.0):
            ls = list(xs64)
            ls[i] = jnp.asarray((x.ravel() + sign * d).reshape(x.shape), x.dtype)
            points.append(ls)
        try:
            where = _kinks.switches(loss, points)
        except Exception:  # a function the probe cannot walk: keep the failure
            where = None
        if where is not None:
            found[int(j)] = where
    return found
