"""``tag(x, name)``: an identity that marks a point of a computation for gradient diagnostics.

``tag`` is a primitive of its own (``funcbp_tag``), so it survives tracing into a jaxpr and the
backward walk meets it. Its VJP rule passes the cotangent through unchanged and, while a
:func:`recording` context is open (``funcbp.diagnostics.gradient_flow`` opens one), stores the
norm of that cotangent under ``name``. Everything else treats it as the identity: evaluation,
``jax.jit`` (it lowers to nothing), ``jax.vmap``, ``jax.grad``/``jax.jvp`` and transposition.
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

__all__ = ["Recorder", "recording", "tag", "tag_p"]

tag_p = Primitive("funcbp_tag")


def tag(x: jax.typing.ArrayLike, name: str) -> jax.Array:
    """Returns ``x`` unchanged, marking it so that gradient diagnostics report the gradient here.

    ``funcbp.diagnostics.gradient_flow`` records ``||d loss / d x||`` (the Frobenius norm of the
    cotangent flowing back through this point) under ``name``. Outside a recording the tag costs
    nothing: it is the identity for evaluation, ``jit``, ``vmap`` and both funcbp's and jax's
    differentiation.

    Args:
      x: a float array (an activation, a pre-activation...).
      name: the label shown in reports, e.g. ``"block_2/pre_act"``.

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
    return tag_p.bind(jnp.asarray(x), name=name)


tag_p.def_impl(lambda x, *, name: x)
tag_p.def_abstract_eval(lambda x, *, name: x)
mlir.register_lowering(tag_p, lambda ctx, x, **params: [x])


def _tag_batch(args, dims, *, name):
    return tag_p.bind(args[0], name=name), dims[0]


batching.primitive_batchers[tag_p] = _tag_batch


def _tag_jvp(primals, tangents, *, name):
    (x,), (t,) = primals, tangents
    return tag_p.bind(x, name=name), t  # the identity's derivative; jax's own modes skip recording


ad.deflinear2(tag_p, lambda ct, x, *, name: [ct])  # the identity's transpose (linear_transpose)
ad.primitive_jvps[tag_p] = _tag_jvp  # tangents pass untagged


# --- recording ---------------------------------------------------------------------------------

class Recorder:
    """Where the tag rule stores ``name -> ||cotangent||`` during one backward pass.

    Attributes:
      norms: tag name -> norm (a scalar array, a tracer when recorded under ``jit``), in the
        order the backward pass met them (output first). A name met twice accumulates the
        squared norms (the total gradient through that name).
      skipped: names met inside a nested trace (the body of ``scan``/``cond``/``while``), whose
        values cannot leave it and are therefore not recorded.
    """

    def __init__(self) -> None:
        self.norms: dict[str, Any] = {}
        self.skipped: set[str] = set()
        self._trace = _core.trace_ctx.trace

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


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Opens a :class:`Recorder` that collects the norms of cotangents flowing through tags.

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> from funcbp.autodiff.tag import recording, tag
      >>> with recording() as rec:
      ...     _ = funcbp.grad(lambda x: jnp.sum(3.0 * tag(x, "x")))(jnp.zeros(4))
      >>> float(rec.norms["x"])
      6.0
    """
    rec = Recorder()
    token = _RECORDERS.set(_RECORDERS.get() + (rec,))
    try:
        yield rec
    finally:
        _RECORDERS.reset(token)


def tag_vjp(ct, x, *, name, **params):
    """d tag(x) = dx; the cotangent's norm is recorded when a recording is open."""
    recorders = _RECORDERS.get()
    if recorders:
        recorders[-1].record(name, ct)
    return (ct,)


register_vjp_rule(tag_p, tag_vjp)
