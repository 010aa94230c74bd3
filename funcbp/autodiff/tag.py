"""``tag(x, name)``: an identity that marks a point of a computation for diagnostics.

``tag`` is a primitive of its own (``funcbp_tag``), so it survives tracing into a jaxpr and the
backward walk meets it. Its VJP rule passes the cotangent through unchanged and, while a
:func:`recording` context is open (``funcbp.diagnostics.gradient_flow`` opens one), stores the
norm of that cotangent under ``name``. The forward value is recorded too: its mean, standard
deviation, fraction of exact zeros and, for a tag whose ``kind`` says it feeds a sigmoid or a
tanh, the fraction saturated (``|x| > 4``, where the slope is below 0.02), whether the tag is
evaluated directly or by funcbp's forward walk. Everything else treats it as the identity:
evaluation, ``jax.jit`` (it lowers to nothing), ``jax.vmap``, ``jax.grad``/``jax.jvp`` and
transposition.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax._src import core as _core
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from funcbp.autodiff.rules import register_vjp_rule

__all__ = ["KINDS", "Recorder", "SATURATION", "recording", "tag", "tag_p"]

tag_p = Primitive("funcbp_tag")

#: what a tagged value can feed: saturation is measured for "sigmoid" and "tanh" inputs, dead
#: units (zero for every example) for "relu" outputs.
KINDS = (None, "sigmoid", "tanh", "relu")
#: |pre-activation| beyond which a sigmoid or tanh counts as saturated (slopes below
#: sigmoid'(4) = 0.018 and tanh'(4) = 0.0013).
SATURATION = 4.0


def tag(x: jax.typing.ArrayLike, name: str, kind: str | None = None) -> jax.Array:
    """Returns ``x`` unchanged, marking it so that gradient diagnostics report the gradient here.

    ``funcbp.diagnostics.gradient_flow`` records ``||d loss / d x||`` (the Frobenius norm of the
    cotangent flowing back through this point) under ``name``. Outside a recording the tag costs
    nothing: it is the identity for evaluation, ``jit``, ``vmap`` and both funcbp's and jax's
    differentiation.

    Args:
      x: a float array (an activation, a pre-activation...).
      name: the label shown in reports, e.g. ``"block_2/pre_act"``.
      kind: what ``x`` is: ``"sigmoid"`` or ``"tanh"`` for the input of that activation (then
        the fraction of saturated entries, ``|x| > 4``, is recorded), ``"relu"`` for a ReLU's
        output (then the fraction of dead units, zero for every example), or None.

    Returns:
      ``x``.

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> from funcbp.autodiff.tag import tag
      >>> funcbp.grad(lambda x: jnp.sum(tag(x, "input") ** 2))(jnp.ones(2))
      Array([2., 2.], dtype=float32)
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"tag(x, name) needs a non-empty string name, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"tag(x, {name!r}, kind={kind!r}): kind is one of {KINDS}")
    x = jnp.asarray(x)
    recorders = _RECORDERS.get()
    if recorders:
        recorders[-1].record_stats(name, kind, x)
    return tag_p.bind(x, name=name, kind=kind)


tag_p.def_impl(lambda x, **params: x)
tag_p.def_abstract_eval(lambda x, **params: x)
mlir.register_lowering(tag_p, lambda ctx, x, **params: [x])


def _tag_batch(args, dims, **params):
    return tag_p.bind(args[0], **params), dims[0]


batching.primitive_batchers[tag_p] = _tag_batch


def _tag_jvp(primals, tangents, **params):
    (x,), (t,) = primals, tangents
    return tag_p.bind(x, **params), t  # the identity's derivative; jax's own modes skip recording


ad.deflinear2(tag_p, lambda ct, x, **params: [ct])  # the identity's transpose (linear_transpose)
ad.primitive_jvps[tag_p] = _tag_jvp  # tangents pass untagged


# --- recording ---------------------------------------------------------------------------------

class Recorder:
    """Where tags store ``name -> ||cotangent||`` (backward) and forward statistics.

    Attributes:
      norms: tag name -> norm (a scalar array, a tracer when recorded under ``jit``), in the
        order the backward pass met them (output first). A name met twice accumulates the
        squared norms (the total gradient through that name).
      skipped: names met inside a nested trace (the body of ``scan``/``cond``/``while``), whose
        values cannot leave it and are therefore not recorded.
      kinds: tag name -> its ``kind``, in the order the forward pass met them.
    """

    def __init__(self) -> None:
        self.norms: dict[str, Any] = {}
        self.skipped: set[str] = set()
        self.kinds: dict[str, str | None] = {}
        self._moments: dict[str, dict[str, Any]] = {}
        self._trace = _core.trace_ctx.trace

    def record_stats(self, name: str, kind: str | None, x: jax.Array, walk: bool = False) -> None:
        """Adds ``x``'s forward statistics under ``name`` (merged with earlier ones); ``walk``:
        met by funcbp's forward walk (else by the ``tag`` call itself)."""
        if _core.trace_ctx.trace is not self._trace:
            if walk:  # a loop body's value cannot leave its trace
                self.skipped.add(name)
            return  # the tag is being traced (e.g. by funcbp.grad): its walk will record it
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating) or x.size == 0:
            return
        x32 = x.astype(jnp.float32) if x.dtype in (jnp.float16, jnp.bfloat16) else x
        new = {"n": x.size, "mean": jnp.mean(x32), "zero": jnp.sum(x32 == 0)}
        new["m2"] = jnp.sum(jnp.square(x32 - new["mean"]))
        if kind in ("sigmoid", "tanh"):
            new["saturated"] = jnp.sum(jnp.abs(x32) > SATURATION)
        if kind == "relu":  # a unit (last axis) that is zero for every example is dead
            units = x32.reshape(-1, x32.shape[-1]) if x32.ndim else x32.reshape(1, 1)
            new["dead"] = jnp.sum(jnp.all(units == 0, axis=0))
            new["units"] = units.shape[1]
        self.kinds.setdefault(name, kind)
        old = self._moments.get(name)
        self._moments[name] = new if old is None else _merge(old, new)

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """Tag name -> ``{"mean", "std", "zero", "saturated"?, "dead"?, "count"}`` (scalar
        arrays; fractions in [0, 1]), in the order the forward pass met the tags."""
        out = {}
        for name, m in self._moments.items():
            s = {"mean": m["mean"], "std": jnp.sqrt(m["m2"] / m["n"]), "zero": m["zero"] / m["n"],
                 "count": m["n"]}
            if "saturated" in m:
                s["saturated"] = m["saturated"] / m["n"]
            if "dead" in m:
                s["dead"] = m["dead"] / m["units"]
            out[name] = s
        return out

    def record(self, name: str, ct: jax.Array) -> None:
        if _core.trace_ctx.trace is not self._trace:
            self.skipped.add(name)  # a tracer of a loop body would escape its trace
            return
        sq = jnp.sum(jnp.square(lax.convert_element_type(ct, jnp.float32)
                                if ct.dtype in (jnp.float16, jnp.bfloat16) else ct))
        prev = self.norms.get(name)
        self.norms[name] = jnp.sqrt(sq if prev is None else prev * prev + sq)


_RECORDERS: contextvars.ContextVar[tuple[Recorder, ...]] = contextvars.ContextVar(
    "funcbp_tag_recorders", default=())


def _merge(a: dict, b: dict) -> dict:
    """Two sets of moments as one (Chan et al.'s pairwise update for the variance)."""
    n = a["n"] + b["n"]
    delta = b["mean"] - a["mean"]
    out = {"n": n, "mean": a["mean"] + delta * (b["n"] / n),
           "m2": a["m2"] + b["m2"] + delta * delta * (a["n"] * b["n"] / n)}
    for k in ("zero", "saturated", "dead", "units"):
        if k in a and k in b:
            out[k] = a[k] + b[k]
    return out


class _ForwardTags:
    """Sees the tags funcbp's forward walk evaluates (under ``funcbp.grad`` the user's ``tag``
    call only happens while the function is traced, not where the recorder lives)."""

    inline = False

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def forward_eqn(self, eqn, invals, outs) -> None:
        if eqn.primitive is tag_p:
            self.rec.record_stats(eqn.params["name"], eqn.params.get("kind"), invals[0],
                                  walk=True)

    def backward_eqn(self, *args) -> None:
        pass


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Opens a :class:`Recorder` that collects, for every tag, the norm of the cotangent
    flowing back through it (``rec.norms``) and its forward statistics (``rec.stats``).

    Open it where the values live: inside the function you ``jax.jit``, and return what you
    need from it (the tags of a ``scan``/``cond``/``while`` body are in ``rec.skipped``).

    Examples:
      >>> import jax, jax.numpy as jnp, funcbp
      >>> from funcbp.autodiff.tag import recording, tag
      >>> with recording() as rec:
      ...     _ = funcbp.grad(lambda x: jnp.sum(3.0 * tag(x, "x")))(jnp.zeros(4))
      >>> float(rec.norms["x"]), float(rec.stats["x"]["zero"])
      (6.0, 1.0)
      >>> @jax.jit
      ... def stats(x):
      ...     with recording() as rec:
      ...         jax.nn.sigmoid(tag(x, "pre", kind="sigmoid"))
      ...     return rec.stats["pre"]["saturated"]
      >>> float(stats(jnp.array([-5.0, 0.0, 1.0, 8.0])))
      0.5
    """
    from funcbp.autodiff import interpreter  # the interpreter imports the rules, as tag does

    rec = Recorder()
    token = _RECORDERS.set(_RECORDERS.get() + (rec,))
    try:
        with interpreter.hooks(_ForwardTags(rec)):
            yield rec
    finally:
        _RECORDERS.reset(token)


def tag_vjp(ct, x, *, name, kind=None, **params):
    """d tag(x) = dx; the cotangent's norm is recorded when a recording is open."""
    recorders = _RECORDERS.get()
    if recorders:
        recorders[-1].record(name, ct)
    return (ct,)


register_vjp_rule(tag_p, tag_vjp)
