"""Where a NaN or an infinity starts: ``find_nonfinite`` walks a function forward and backward
through funcbp's interpreter, eagerly, and reports the first equation (or VJP rule) whose inputs
were all finite and whose output was not.

It is an observer on the one walk (``funcbp.autodiff.interpreter.Hooks`` with ``inline=True``):
nested ``jit``s, ``custom_jvp`` rules, ``cond`` branches, ``while`` loops and ``scan``
iterations are walked equation by equation (loops as Python loops, each iteration's index on the
walk's path), so a report names the primitive, the user's source line, the input shapes and
value ranges, and the path ``scan [iteration 7] at model.py:12 > jit(block) at model.py:30``.

The search costs one eager forward and backward pass; it runs only when asked, or after a
compiled step has already produced a non-finite value (``funcbp.value_and_grad(...,
debug_nans=True)``, the trainer's NaN guard), so healthy compiled code pays nothing for it.
See ``docs/diagnostics.md``.
"""

from __future__ import annotations

import dataclasses
import linecache
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.autodiff import interpreter
from funcbp.autodiff.interpreter import Frame

__all__ = ["NonFiniteError", "NonFiniteReport", "NonFiniteSite", "ValueSummary",
           "find_nonfinite"]


class NonFiniteError(FloatingPointError):
    """A value or gradient was NaN or infinite; ``.report`` (a :class:`NonFiniteReport`) says
    where it started."""

    def __init__(self, message: str, report: NonFiniteReport | None = None):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class ValueSummary:
    """One value an equation read or wrote: its role, type, range of its finite entries, and
    how many entries are NaN, +inf and -inf."""

    role: str
    shape: tuple
    dtype: str
    min: float | None
    max: float | None
    nan: int = 0
    posinf: int = 0
    neginf: int = 0

    @property
    def finite(self) -> bool:
        return not (self.nan or self.posinf or self.neginf)

    def __str__(self) -> str:
        short = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
        head = f"{self.role}: {short.get(self.dtype, self.dtype)}[{','.join(map(str, self.shape))}]"
        rng = "" if self.min is None else f" in [{self.min:.4g}, {self.max:.4g}]"
        bad = [f"{n} {k}" for n, k in ((self.nan, "nan"), (self.posinf, "+inf"),
                                        (self.neginf, "-inf")) if n]
        return head + rng + (f" ({', '.join(bad)})" if bad else "")


@dataclasses.dataclass
class NonFiniteSite:
    """An equation (forward) or a VJP rule (backward) whose inputs were all finite and whose
    output was not.

    Attributes:
      phase: ``"forward"`` or ``"backward"`` (the primitive's VJP rule produced it).
      primitive: the primitive's name (``"log"``).
      where: the user's source line, ``"model.py:12 (loss)"``.
      path: the call-like equations the walk was inside, outermost first; a loop's frame
        carries its iteration (``Frame("scan", "model.py:20", "iteration 7")``).
      inputs: the values the equation read (backward: the output cotangents, then the
        operands); outputs: what it produced (backward: the operands' cotangents).
      masked: the non-finite value did not reach the output of the enclosing call (e.g.
        ``jnp.where(x > 0, jnp.log(x), 0.0)`` in the forward pass): reported, not blamed.
      source: the text of the source line, when it can be read.
      calls: up to three user frames, innermost first (``where`` is the first).
    """

    phase: str
    primitive: str
    where: str
    path: tuple[Frame, ...]
    inputs: list[ValueSummary]
    outputs: list[ValueSummary]
    masked: bool = False
    source: str = ""
    calls: tuple[str, ...] = ()

    @property
    def iteration(self) -> int | None:
        """The innermost loop iteration on the path (None outside loops)."""
        for f in reversed(self.path):
            if f.detail.startswith("iteration "):
                return int(f.detail.split()[1])
        return None

    def path_str(self) -> str:
        return " > ".join(str(f) for f in self.path) if self.path else "top level"

    def __str__(self) -> str:
        what = ("the VJP rule of" if self.phase == "backward" else "the forward equation")
        lines = [f"{what} '{self.primitive}' at {self.where}" + (" (masked)" if self.masked
                                                                  else "")]
        if self.source:
            lines.append(f"    {self.source}")
        if len(self.calls) > 1:
            lines.append(f"  called from {' < '.join(self.calls[1:])}")
        lines.append(f"  path: {self.path_str()}")
        lines += [f"  in  {v}" for v in self.inputs]
        lines += [f"  out {v}" for v in self.outputs]
        return "\n".join(lines)


@dataclasses.dataclass
class NonFiniteReport:
    """What :func:`find_nonfinite` found.

    Attributes:
      function: the function's name.
      sites: every site recorded, in the order the walks met them (forward first).
      value_finite: whether the function's outputs were finite.
      grads_finite: whether the gradients were finite (None when the backward did not run:
        the forward was already non-finite and ``all_sites`` was False).
      stopped: the search stopped at the first backward site (``all_sites=False``).
      backward_error: why the backward pass could not run (e.g. a ``while_loop`` that reverse
        mode cannot cross), or ``""``.
    """

    function: str
    sites: list[NonFiniteSite]
    value_finite: bool
    grads_finite: bool | None
    stopped: bool = False
    backward_error: str = ""

    @property
    def first(self) -> NonFiniteSite | None:
        """The origin: the first unmasked forward site if the value is not finite, else the
        first unmasked backward site (None if neither)."""
        for phase in ("forward", "backward"):
            for s in self.sites:
                if s.phase == phase and not s.masked:
                    return s
        return None

    @property
    def found(self) -> bool:
        return self.first is not None

    def __str__(self) -> str:
        grads = {None: "not computed", True: "finite", False: "NOT finite"}[self.grads_finite]
        head = (f"find_nonfinite({self.function}): value "
                f"{'finite' if self.value_finite else 'NOT finite'}, gradients {grads}")
        if self.backward_error:
            head += f" (the backward pass raised {self.backward_error})"
        first = self.first
        if first is None:
            tail = ["no equation or rule turned finite inputs into a non-finite output"]
            masked = [s for s in self.sites if s.masked]
            if masked:
                tail.append(f"({len(masked)} masked site(s), e.g. {masked[0].primitive} at "
                            f"{masked[0].where}, did not reach an output)")
            return "\n".join([head, *tail])
        lines = [head, f"first non-finite value made by {first}"]
        others = [s for s in self.sites if s is not first]
        if others:
            lines.append(f"{len(others)} other site(s): " + "; ".join(
                f"{s.phase} {s.primitive} at {s.where}{' (masked)' if s.masked else ''}"
                for s in others[:5]) + (" ..." if len(others) > 5 else ""))
        return "\n".join(lines)


# --- the observer -------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _leaves(values: Sequence[Any]) -> list[tuple[int, Any]]:
    return [(i, v) for i, v in enumerate(values) if v is not None and _is_float(v)]


def _is_float(v: Any) -> bool:
    try:
        return jnp.issubdtype(jnp.result_type(v), jnp.inexact)
    except TypeError:
        return False


def _finite(v: Any) -> bool:
    return bool(np.all(np.isfinite(np.asarray(v))))


def summarize(role: str, v: Any) -> ValueSummary:
    """A :class:`ValueSummary` of a concrete value."""
    a = np.asarray(v)
    if a.dtype.kind == "c":
        a = np.concatenate([a.real.ravel(), a.imag.ravel()])
    dtype = jnp.dtype(jnp.result_type(v)).name
    if a.dtype.kind not in "fc" and a.dtype.name != "bfloat16":
        lo = hi = None
        if a.size:
            lo, hi = float(a.min()), float(a.max())
        return ValueSummary(role, tuple(np.shape(v)), dtype, lo, hi)
    a = a.astype(np.float64)
    ok = np.isfinite(a)
    lo = float(a[ok].min()) if ok.any() else None
    hi = float(a[ok].max()) if ok.any() else None
    return ValueSummary(role, tuple(np.shape(v)), dtype, lo, hi, int(np.isnan(a).sum()),
                        int(np.isposinf(a).sum()), int(np.isneginf(a).sum()))


def _source(eqn: Any) -> tuple[str, tuple[str, ...]]:
    try:
        from jax._src import source_info_util as siu

        frames = []
        for fr in siu.user_frames(eqn.source_info.traceback):
            if frames and any(part in fr.file_name for part in _INTERNAL):
                continue
            frames.append(fr)
            if len(frames) == 3:
                break
        text = linecache.getline(frames[0].file_name, frames[0].start_line).strip() if \
            frames else ""
        calls = tuple(f"{f.file_name}:{f.start_line} ({f.function_name})" for f in frames)
        return text, calls
    except Exception:  # pragma: no cover - best effort only
        return "", ()


# funcbp's own plumbing between the user's call and the equation: not worth showing.
_INTERNAL = ("funcbp/debug.py", "funcbp/autodiff/", "funcbp/check/", "funcbp/nn/layer.py",
             "funcbp/train/step.py")


def _nests(eqn: Any) -> bool:
    return interpreter._nests(eqn)


class _Search(interpreter.Hooks):
    """Checks every equation's and every rule's values; records the sites."""

    inline = True

    def __init__(self, stop_at_first_backward: bool):
        self.sites: list[NonFiniteSite] = []
        self.phase = "forward"
        self.stop = stop_at_first_backward
        self._mark: dict[tuple[str, int], int] = {}

    def _record(self, eqn, inputs, outputs) -> NonFiniteSite:
        source, calls = _source(eqn)
        site = NonFiniteSite(self.phase, eqn.primitive.name, interpreter.where(eqn),
                             interpreter.path(), inputs, outputs, source=source, calls=calls)
        self.sites.append(site)
        return site

    def _mask_inner(self, eqn, outs_finite: bool) -> None:
        """Sites recorded inside ``eqn`` (a nested walk) are masked when its outputs are
        finite: the non-finite value they made never left it."""
        depth = len(interpreter.path())
        key = (self.phase, depth)
        if _nests(eqn) and outs_finite:
            for s in self.sites[self._mark.get(key, 0):]:
                if len(s.path) > depth and s.phase == self.phase:
                    s.masked = True
        self._mark[key] = len(self.sites)

    def forward_eqn(self, eqn, invals, outs):
        if self.phase != "forward":
            return  # a rule recomputing a forward (cond, remat) inside the backward walk
        outs_finite = all(_finite(v) for _, v in _leaves(outs))
        if not outs_finite and all(_finite(v) for _, v in _leaves(invals)):
            if not (_nests(eqn) and self._inner_since(eqn)):
                self._record(eqn, [summarize(f"operand {i}", v) for i, v in _leaves(invals)],
                             [summarize(f"output {i}", v) for i, v in _leaves(outs)])
        self._mask_inner(eqn, outs_finite)

    def backward_eqn(self, eqn, invals, outs, cts_out, cts_in):
        cts = _leaves(cts_out)
        made = _leaves(cts_in)
        made_finite = all(_finite(v) for _, v in made)
        if (not made_finite and all(_finite(v) for _, v in cts)
                and all(_finite(v) for _, v in _leaves(invals))):
            if not (_nests(eqn) and self._inner_since(eqn)):
                self._record(
                    eqn,
                    [summarize(f"cotangent of output {i}", v) for i, v in cts]
                    + [summarize(f"operand {i}", v) for i, v in _leaves(invals)],
                    [summarize(f"cotangent of operand {i}", v) for i, v in made])
                if self.stop:
                    raise _Stop
        self._mask_inner(eqn, made_finite)

    def _inner_since(self, eqn) -> bool:
        """Whether a site was already recorded inside this nested call (then the call itself is
        not a site: its inner equation is the origin)."""
        depth = len(interpreter.path())
        return any(len(s.path) > depth and s.phase == self.phase
                   for s in self.sites[self._mark.get((self.phase, depth), 0):])


# --- the search ---------------------------------------------------------------------------------

def _has_tracer(tree: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def find_nonfinite(f: Callable, *args: Any, argnums: int | Sequence[int] | None = None,
                   has_aux: bool = False, all_sites: bool = False,
                   **kwargs: Any) -> NonFiniteReport:
    """Finds where a NaN or an infinity first appears in ``f``'s value or its gradient.

    Runs ``f(*args, **kwargs)`` forward through funcbp's interpreter and then its backward pass
    (the cotangent 1 for a scalar output, ones otherwise), eagerly, equation by equation,
    descending into nested jits, custom_jvp rules, cond branches, while loops and scan
    iterations. A *site* is an equation whose inputs were all finite and whose output was not
    (forward), or a VJP rule whose output cotangents and operands were all finite and whose
    input cotangents were not (backward). A forward site whose non-finite value never reached
    the output of its enclosing call (``jnp.where(x > 0, jnp.log(x), 0.0)``) is kept but
    marked ``masked``; the backward rule that turns it into a NaN gradient is then the origin.

    Args:
      f: the function (a loss, a model); positional arguments selected by ``argnums`` are
        differentiated; keyword arguments are passed through.
      *args: its positional arguments (concrete arrays: call this outside ``jax.jit``).
      argnums: the arguments to differentiate (default: all).
      has_aux: ``f`` returns ``(output, aux)``; ``aux`` is not differentiated.
      all_sites: record every site of both passes; by default the backward pass stops at its
        first site, and is skipped when the forward value is already non-finite.
      **kwargs: keyword arguments of ``f``.

    Returns:
      A :class:`NonFiniteReport`; ``report.first`` is the origin (a :class:`NonFiniteSite`
      with the primitive, the source line, the input ranges and the path), None when
      everything is finite.

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> report = funcbp.find_nonfinite(lambda x: jnp.sum(jnp.sqrt(x)), jnp.zeros(2))
      >>> report.first.phase, report.first.primitive
      ('backward', 'sqrt')
    """
    if not callable(f):
        raise TypeError(f"find_nonfinite expects a function first, got {f!r}")
    if _has_tracer((args, kwargs)):
        raise TypeError("find_nonfinite walks concrete values eagerly: call it outside jax.jit "
                        "(or with the arrays the jitted function was given)")
    from funcbp.autodiff.api import vjp

    nums = tuple(range(len(args))) if argnums is None else (
        (argnums,) if isinstance(argnums, int) else tuple(argnums))
    name = getattr(f, "__name__", type(f).__name__)

    def partial_f(*dyn):
        full = list(args)
        for n, a in zip(nums, dyn, strict=True):
            full[n] = a
        return f(*full, **kwargs)

    search = _Search(stop_at_first_backward=not all_sites)
    with interpreter.hooks(search):
        if has_aux:
            out, pullback, _ = vjp(partial_f, *(args[n] for n in nums), has_aux=True)
        else:
            out, pullback = vjp(partial_f, *(args[n] for n in nums))
        value_finite = all(_finite(v) for v in jax.tree.leaves(out) if _is_float(v))
        if value_finite:  # nothing non-finite reached the outputs: every forward site is masked
            for s in search.sites:
                s.masked = True
        grads_finite, stopped, error = None, False, ""
        if value_finite or all_sites:
            search.phase = "backward"
            ct = jax.tree.map(lambda o: jnp.ones(jnp.shape(o), jnp.result_type(o))
                              if _is_float(o) else np.zeros(jnp.shape(o), jax.dtypes.float0),
                              out)
            try:
                grads = pullback(ct)
                grads_finite = all(_finite(g) for g in jax.tree.leaves(grads) if _is_float(g))
            except _Stop:
                grads_finite, stopped = False, True
            except interpreter.UnsupportedPrimitiveError as err:
                if value_finite:
                    raise
                error = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    return NonFiniteReport(name, search.sites, value_finite, grads_finite, stopped, error)


def raise_if_nonfinite(fun: Callable, args: tuple, kwargs: dict, argnums: Sequence[int],
                       has_aux: bool, value: Any, grads: Any) -> tuple[Any, Any]:
    """``value_and_grad(..., debug_nans=True)``'s check; returns ``(value, grads)``.

    Eagerly: nothing more when ``value`` and ``grads`` are finite; otherwise
    :func:`find_nonfinite` on the same arguments, raising :class:`NonFiniteError` with its
    report. Under ``jax.jit``: an ``isfinite`` reduction and a ``lax.cond`` whose untaken branch
    would call the same search (on the CPU) from a ``jax.pure_callback``, whose (zero) result is
    added to ``value`` and ``grads`` so the check cannot be pruned. A pure
    callback, unlike ``jax.debug.callback``, adds no effect to the compiled step, whose dispatch
    therefore stays on jax's fast path (``benchmarks/nan_detection.py``)."""
    leaves = [x for x in jax.tree.leaves((value, grads)) if _is_float(x)]
    if not _has_tracer((leaves, args, kwargs)):
        if not all(_finite(x) for x in leaves):
            _search_and_raise(fun, args, kwargs, argnums, has_aux)
        return value, grads
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True
    dyn, static = interpreter.split_static((args, kwargs))
    keys = {i: jax.random.key_impl(x) for i, x in enumerate(dyn)
            if jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key)}
    flat = [jax.lax.stop_gradient(jax.random.key_data(x) if i in keys else x)
            for i, x in enumerate(dyn)]

    def on_host(finite, *arrays):
        if bool(np.all(finite)):  # under vmap a cond runs both branches: check again here
            return np.zeros((), np.float32)
        arrays = [jax.random.wrap_key_data(a, impl=keys[i]) if i in keys else a
                  for i, a in enumerate(arrays)]
        a, kw = interpreter.join_static(arrays, static)
        with jax.default_device(jax.devices("cpu")[0]):
            _search_and_raise(fun, a, kw, argnums, has_aux)
        return np.zeros((), np.float32)  # pragma: no cover - the search raises

    zero = jax.lax.cond(ok, lambda ok, *d: jnp.zeros((), jnp.float32),
                        lambda ok, *d: jax.pure_callback(
                            on_host, jax.ShapeDtypeStruct((), jnp.float32), ok, *d,
                            vmap_method="sequential"), ok, *flat)
    # The callback's zero is added to every output (XLA cannot know it is zero), so the check
    # stays in the program whichever outputs the caller keeps; the adds fuse into their users.
    tie = lambda x: x + zero.astype(jnp.result_type(x)) if _is_float(x) else x  # noqa: E731
    return jax.tree.map(tie, value), jax.tree.map(tie, grads)


def _search_and_raise(fun, args, kwargs, argnums, has_aux) -> None:
    name = getattr(fun, "__name__", type(fun).__name__)
    report = find_nonfinite(fun, *args, argnums=tuple(argnums), has_aux=has_aux, **kwargs)
    raise NonFiniteError(f"value_and_grad({name}, debug_nans=True): a NaN or inf appeared.\n"
                         f"{report}", report)
