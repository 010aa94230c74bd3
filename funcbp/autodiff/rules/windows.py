"""VJP rules for the windowed primitives jax's own derivatives emit, and generic reduce_window.

* ``select_and_scatter_add(source, operand)`` is what ``jax.grad`` of a max/min-pool emits: each
  window's ``source`` value is added at the window's FIRST maximum (``select_prim=ge``) or
  minimum (``le``) of ``operand``, in row-major window order. It is linear in ``source``: its
  transpose reads ``ct`` back at those same positions.
* ``select_and_gather_add(tangents, operand)`` is what ``jax.jvp`` of a pool emits: each window
  reads ``tangents`` at the first extreme of ``operand``. Its transpose scatters ``ct`` to those
  positions, which is exactly the max-pool rule of :mod:`.conv`.

In both the choice of position is piecewise constant in ``operand``, which gets no cotangent (as
in jax). With these two rules ``funcbp.grad`` of ``jax.grad`` (or of ``jax.jvp``) of a
max-pooling model works.

* ``reduce_window`` with a custom (possibly variadic) reducer: XLA folds each window from the init
  value through its elements in row-major order, ``acc = f(acc, x_k)``, skipping padding and
  base-dilation holes; jax's JVP runs the same fold on (value, tangent) pairs. funcbp writes the
  fold out, one strided view of the operand per window offset, and walks it with its own rules,
  so the ties of a selecting reducer agree with jax's forward mode (jax has no reverse mode for
  this primitive). One caveat, for reducers whose derivative depends on the order (a select at
  ties): with padding on the last axis XLA's CPU backend visits windows in another order, so
  there funcbp's ties (row-major) can differ from jax's. Smooth reducers are unaffected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcbp.autodiff.rules import vjp_rule
from funcbp.autodiff.rules.conv import (
    _MANY_OFFSETS,
    _blocks,
    _chooser_vjp,
    _dilate_and_pad,
    _is_tiling,
    _window_offsets,
    _window_view,
)

__all__: list[str] = []


def _interp():
    from funcbp.autodiff import interpreter  # the interpreter imports this package

    return interpreter


def _is_max(select_prim, name):
    """True for ``ge`` (max), False for ``le`` (min); jax emits nothing else."""
    if select_prim is lax.ge_p:
        return True
    if select_prim is lax.le_p:
        return False
    raise NotImplementedError(
        f"funcbp: '{name}' with select_prim={select_prim} has no VJP rule; only ge (max-pool) "
        "and le (min-pool), the two jax emits, are supported.")


def _gather_at_extremes(t, x, is_max, window_dimensions, window_strides, padding, base_dilation,
                        window_dilation, out_shape):
    """Per window of ``x``, the element of ``t`` at its first extreme (row-major window order).

    The transpose of :func:`funcbp.autodiff.rules.conv._chooser_vjp`: the same windows, the same
    winners (padding and dilation holes hold -inf/+inf in ``x`` and 0 in ``t``).
    """
    zero = jnp.zeros((), t.dtype)
    if 0 in out_shape or 0 in np.shape(x):
        return jnp.zeros(out_shape, t.dtype)
    init = -np.inf if is_max else np.inf
    xp = _dilate_and_pad(x, init, padding, base_dilation)
    tp = _dilate_and_pad(t, 0, padding, base_dilation)
    if (_is_tiling(window_dimensions, window_strides, base_dilation, window_dilation)
            and np.prod(window_dimensions) > _MANY_OFFSETS):
        # Large tiles: (out, window) blocks and one argmax/argmin, as the scatter side does.
        nd = len(out_shape)
        perm = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))

        def flat(a):
            return lax.transpose(_blocks(a, out_shape, window_dimensions), perm).reshape(
                tuple(out_shape) + (-1,))
        fx, ft = flat(xp), flat(tp)
        first = (jnp.argmax if is_max else jnp.argmin)(fx, axis=-1)
        take = lax.broadcasted_iota(jnp.int32, fx.shape, nd) == first[..., None]
        return jnp.sum(jnp.where(take, ft, zero), axis=-1)
    # A running strict comparison over the window offsets: earlier offsets win ties.
    best = picked = None
    for start in _window_offsets(window_dimensions, window_dilation):
        view = _window_view(xp, start, out_shape, window_strides)
        tview = _window_view(tp, start, out_shape, window_strides)
        if best is None:
            best, picked = view, tview
            continue
        better = view > best if is_max else view < best
        best = jnp.where(better, view, best)
        picked = jnp.where(better, tview, picked)
    return picked


@vjp_rule(lax.select_and_scatter_add_p)
def select_and_scatter_add_vjp(ct, source, operand, *, select_prim, window_dimensions,
                               window_strides, padding, **params):
    """d source = ct read at each window's first max (ge) / min (le) of operand; none for operand.
    """
    is_max = _is_max(select_prim, "select_and_scatter_add")
    ones = (1,) * len(window_dimensions)
    return (lambda: _gather_at_extremes(ct, operand, is_max, window_dimensions, window_strides,
                                        padding, ones, ones, np.shape(source)), None)


@vjp_rule(lax.select_and_gather_add_p)
def select_and_gather_add_vjp(ct, tangents, operand, *, select_prim, window_dimensions,
                              window_strides, padding, base_dilation, window_dilation, **params):
    """d tangents = ct added at each window's first max (ge) / min (le) of operand; none for
    operand."""
    is_max = _is_max(select_prim, "select_and_gather_add")
    init = -np.inf if is_max else np.inf
    return (lambda: _chooser_vjp(ct, operand, is_max, init, window_dimensions, window_strides,
                                 padding, base_dilation, window_dilation), None)


# --- reduce_window with a custom reducer ---------------------------------------------------------

def _window_out_shape(padded, window_dimensions, window_strides, window_dilation):
    out = []
    for p, w, s, d in zip(padded, window_dimensions, window_strides, window_dilation,
                          strict=True):
        extent = (w - 1) * d + 1
        out.append((p - extent) // s + 1 if p >= extent else 0)
    return tuple(out)


def _real_positions(shape, padding, base_dilation):
    """Per dim, a boolean mask over the padded, dilated axis: True where an element of x sits."""
    masks = []
    for n, (lo, hi), b in zip(shape, padding, base_dilation, strict=True):
        size = ((n - 1) * b + 1 if n else 0) + lo + hi
        mask = np.zeros(max(size, 0), bool)
        pos = lo + np.arange(n) * b
        mask[pos[(pos >= 0) & (pos < size)]] = True
        masks.append(mask)
    return masks


def _window_fold(reducer, operands, inits, window_dimensions, window_strides, padding,
                 base_dilation, window_dilation):
    """reduce_window as XLA evaluates it: ``acc = f(acc, x_k)`` over each window's elements in
    row-major order, from the init values, skipping padding and dilation holes."""
    shape = np.shape(operands[0])
    real = _real_positions(shape, padding, base_dilation)
    out_shape = _window_out_shape([len(m) for m in real], window_dimensions, window_strides,
                                  window_dilation)
    accs = [lax.broadcast_in_dim(i, out_shape, ()) for i in inits]
    size = int(np.prod(out_shape, dtype=np.int64))
    if size == 0:
        return accs
    padded = [_dilate_and_pad(x, i, padding, base_dilation) for x, i in zip(operands, inits,
                                                                          strict=True)]
    combine = jax.vmap(reducer)
    for start in _window_offsets(window_dimensions, window_dilation):
        views = [_window_view(xp, start, out_shape, window_strides) for xp in padded]
        flat = combine(*[a.reshape(size) for a in accs], *[v.reshape(size) for v in views])
        new = [y.reshape(out_shape) for y in flat]
        # which output positions see a real element at this window offset (static)
        hit = np.ones(out_shape, bool)
        for d, (mask, b, m, s) in enumerate(zip(real, start, out_shape, window_strides,
                                                strict=True)):
            along = mask[b + np.arange(m) * s]
            hit &= along.reshape((1,) * d + (m,) + (1,) * (len(out_shape) - d - 1))
        if hit.all():
            accs = new
        elif hit.any():
            accs = [lax.select(jnp.asarray(hit), y, a) for y, a in zip(new, accs, strict=True)]
    return accs


def reduce_window_forward(*args, needs, jaxpr, consts, **params):
    """Runs :func:`_window_fold` through funcbp's interpreter."""
    k = len(args) // 2
    if any(needs[k:]):
        raise NotImplementedError(
            "funcbp: lax.reduce_window is differentiated with respect to its operands only, not "
            "its init_values (as in jax); the init values must not depend on what is "
            "differentiated.")
    from jax.extend.core import ClosedJaxpr, jaxpr_as_fun

    reducer = jaxpr_as_fun(ClosedJaxpr(jaxpr, list(consts)))
    closed = jax.make_jaxpr(lambda *a: _window_fold(reducer, a[:k], a[k:], **params))(*args)
    return _interp().forward(closed.jaxpr, list(closed.consts), list(args), list(needs))


@vjp_rule(lax.reduce_window_p, forward=reduce_window_forward)
def reduce_window_vjp(cts, *args, res, **params):
    """d reduce_window(f): reverse walk of the window fold of ``f`` (see the module doc).

    The fold reads every parameter: ``jaxpr``/``consts`` (the reducer), ``window_dimensions``,
    ``window_strides``, ``padding``, ``base_dilation`` and ``window_dilation``.
    """
    return tuple(_interp().backward(res, list(cts)))
