"""``explain(f, *args)``: backpropagation step by step, for teaching and debugging.

The function is traced to a jaxpr; the forward table lists each equation with its inputs, its
output's shape and a summary of its values; the backward table lists, in the order funcbp runs
them, the VJP rule applied to each equation, the cotangent arriving at its output and the
cotangents it sends to its inputs (shapes and norms). Calls (``jit``, ``custom_jvp_call``...)
appear as one step. Plain text for a terminal (``print``), Markdown with ``to_markdown()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core
from jax.tree_util import keystr, tree_flatten_with_path, tree_structure

from funcbp.autodiff import interpreter
from funcbp.autodiff.rules import VJP_RULES
from funcbp.autodiff.trace import trace

__all__ = ["Explanation", "explain"]

_SHOWN_PARAMS = ("axes", "dimension_numbers", "shape", "broadcast_dimensions", "permutation",
                 "y", "new_sizes", "dimensions", "start_indices", "limit_indices", "strides",
                 "padding_config", "axis", "dimension", "new_dtype", "name", "k", "reverse",
                 "window_dimensions", "window_strides", "padding", "length", "num_keys")


@dataclass
class Explanation:
    """The forward and backward tables of :func:`explain`."""

    function: str
    inputs: list[list[str]]  # name, path, type, values
    forward: list[list[str]]  # step, equation, inputs, output, values
    backward: list[list[str]]  # step, rule, cotangent in, cotangents out
    gradients: list[list[str]] = field(default_factory=list)  # name, path, type, norm

    _FWD = ["step", "equation", "inputs", "output", "values"]
    _BWD = ["step", "rule", "cotangent of output", "cotangents sent to inputs"]
    _IN = ["name", "argument", "type", "values"]
    _GRAD = ["argument", "gradient", "norm", "values"]

    def _sections(self) -> list[tuple[str, list[str], list[list[str]]]]:
        return [("inputs", self._IN, self.inputs),
                ("forward pass (equations in order)", self._FWD, self.forward),
                ("backward pass (rules in the order applied)", self._BWD, self.backward),
                ("gradients", self._GRAD, self.gradients)]

    def __str__(self) -> str:
        from funcbp.check.grads import format_table

        out = [f"explain({self.function})"]
        for title, cols, rows in self._sections():
            out += ["", f"{title}:", format_table(cols, rows) if rows else "  (none)"]
        return "\n".join(out)

    __repr__ = __str__

    def to_markdown(self) -> str:
        """The same tables in Markdown."""
        out = [f"## explain({self.function})"]
        for title, cols, rows in self._sections():
            out += ["", f"### {title}", ""]
            out.append("| " + " | ".join(cols) + " |")
            out.append("|" + "---|" * len(cols))
            for r in rows:
                out.append("| " + " | ".join(_md(c) for c in r) + " |")
        return "\n".join(out) + "\n"


def _md(cell: str) -> str:
    return ("`" + cell.replace("|", "\\|") + "`") if cell and cell != "-" else (cell or " ")


def _type(aval: Any) -> str:
    short = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
             "int32": "i32", "int64": "i64", "bool": "bool"}
    name = jnp.dtype(aval.dtype).name if hasattr(aval, "dtype") else "?"
    return f"{short.get(name, name)}{list(getattr(aval, 'shape', ()))}"


def _values(x: Any) -> str:
    """A short summary of an array's values."""
    try:
        a = np.asarray(x)
    except Exception:  # a tracer: explain was called under jit
        return "(traced)"
    if a.dtype == jax.dtypes.float0:
        return "(no gradient)"
    if a.size == 0:
        return "(empty)"
    if a.size <= 4:
        return "[" + ", ".join(f"{v:.4g}" if np.issubdtype(a.dtype, np.floating) else str(v)
                               for v in a.astype(np.float64 if a.dtype.kind == "f" else a.dtype)
                               .ravel()) + "]"
    if np.issubdtype(a.dtype, np.floating) or a.dtype.kind == "V":
        f = a.astype(np.float64)
        return f"mean {f.mean():.3g}, std {f.std():.3g}, [{f.min():.3g}, {f.max():.3g}]"
    return f"[{a.min()}, {a.max()}]"


def _norm(x: Any) -> str:
    try:
        return f"{float(np.linalg.norm(np.asarray(x, np.float64).ravel())):.4g}"
    except Exception:
        return "(traced)"


def _params(eqn: core.JaxprEqn) -> str:
    shown = []
    for k in _SHOWN_PARAMS:
        if k in eqn.params and eqn.params[k] is not None:
            v = eqn.params[k]
            text = repr(v) if not isinstance(v, str) else v
            if k == "new_dtype":
                text = jnp.dtype(v).name
            shown.append(f"{k}={text}" if len(text) <= 40 else f"{k}=...")
    return f"[{', '.join(shown)}]" if shown else ""


def explain(f: Callable, *args: Any, cotangent: Any = None) -> Explanation:
    """Traces ``f(*args)`` and shows its forward pass and funcbp's backward pass step by step.

    The backward pass starts from ``cotangent`` (default: ones of the output's shape, i.e. the
    gradient of ``sum(f(*args))``; 1 for a scalar output) and differentiates with respect to
    every float leaf of ``args``.

    Args:
      f: a function of pytrees of arrays.
      *args: its arguments.
      cotangent: the output cotangent (a pytree like ``f``'s output), optional.

    Returns:
      An :class:`Explanation`: ``print`` it, or ``.to_markdown()``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp.explain import explain
      >>> e = explain(lambda w, x: jnp.tanh(x @ w).sum(), jnp.ones((2, 2)), jnp.ones(2))
      >>> len(e.forward), e.backward[0][1]
      (3, 'reduce_sum (reduce_sum_vjp)')
    """
    name = getattr(f, "__name__", type(f).__name__)
    path_leaves, in_tree = tree_flatten_with_path(args)
    leaves = [x for _, x in path_leaves]
    traced = trace(f, tree_structure(args), leaves, False, "explain")
    closed = traced.closed
    jaxpr = closed.jaxpr
    active = [interpreter.is_differentiable(a) for a in closed.in_avals]
    outs, record = interpreter.forward(jaxpr, list(closed.consts), leaves, active)

    names: dict[Any, str] = {}
    for i, v in enumerate(jaxpr.invars):
        names[v] = f"in{i}"
    for i, v in enumerate(jaxpr.constvars):
        names[v] = f"c{i}"
    counter = iter(range(1, 1 << 30))
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            names[v] = f"v{next(counter)}"

    def nm(v: Any) -> str:
        if isinstance(v, core.Literal):
            return repr(v.val.item() if hasattr(v.val, "item") and np.size(v.val) == 1
                        else v.val)
        return names.get(v, "_")

    inputs = [[f"in{i}", f"args{keystr(path)}", _type(v.aval),
               _values(record.env[v])]
              for i, ((path, _), v) in enumerate(zip(path_leaves, jaxpr.invars, strict=True))]
    inputs += [[f"c{i}", "(constant)", _type(v.aval), _values(record.env[v])]
               for i, v in enumerate(jaxpr.constvars)]

    forward_rows, step_of = [], {}
    for i, eqn in enumerate(jaxpr.eqns):
        step_of[id(eqn)] = i + 1
        lhs = " ".join(nm(v) for v in eqn.outvars)
        rhs = " ".join(nm(v) for v in eqn.invars)
        ins = ", ".join(_type(v.aval) for v in eqn.invars)
        outs_t = ", ".join(_type(v.aval) for v in eqn.outvars)
        vals = "; ".join(_values(record.env[v]) for v in eqn.outvars)
        forward_rows.append([str(i + 1), f"{lhs} = {eqn.primitive.name}{_params(eqn)} {rhs}",
                             ins, outs_t, vals])

    out_avals = closed.out_avals
    if cotangent is None:
        cts = [jnp.ones(a.shape, a.dtype) if interpreter.is_differentiable(a) else None
               for a in out_avals]
    else:
        cts = [c if interpreter.is_differentiable(a) else None
               for c, a in zip(jax.tree.leaves(cotangent), out_avals, strict=True)]

    backward_rows = []

    class Observe(interpreter.Hooks):
        """Records each rule application of this jaxpr's walk (nested walks' are left out:
        their equations are not rows of this table)."""

        def backward_eqn(self, eqn, invals, outs, cts_out, cts_in):
            if id(eqn) not in step_of:
                return
            rule = VJP_RULES.get(eqn.primitive)
            rule_name = getattr(rule, "__name__", "rule")
            arriving = ", ".join(f"{nm(v)}: {_type(v.aval)} |{_norm(c)}|"
                                 for v, c in zip(eqn.outvars, cts_out, strict=True)
                                 if c is not None)
            sent = ", ".join(f"{nm(v)}: {_type(v.aval)} |{_norm(c)}|"
                             for v, c in zip(eqn.invars, cts_in, strict=True) if c is not None)
            backward_rows.append([str(step_of[id(eqn)]), f"{eqn.primitive.name} ({rule_name})",
                                  arriving or "-", sent or "- (no gradient)"])

    with interpreter.hooks(Observe()):
        grads = interpreter.backward(record, cts)
    gradients = []
    for i, ((path, _), v, g) in enumerate(zip(path_leaves, jaxpr.invars, grads, strict=True)):
        where = f"args{keystr(path)}"
        if g is None:
            gradients.append([where, f"in{i}: {_type(v.aval)}", "-", "(no gradient)"])
        else:
            gradients.append([where, f"in{i}: {_type(v.aval)}", _norm(g), _values(g)])
    del outs
    return Explanation(name, inputs, forward_rows, backward_rows, gradients)
