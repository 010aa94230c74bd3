"""More than the gradient from one backward pass: per-example gradients, their norms, second
moment and variance, diagonal GGN (exact and Monte-Carlo), diagonal Hessian and KFAC factors.

``funcbp.quantities(apply_fn, params, x, y, loss=..., which=...)`` traces ``apply_fn`` to a
jaxpr, evaluates it once with funcbp's forward walk and walks it back once, carrying the
requested passengers (``funcbp/autodiff/extend``): the loss enters as columns placed on the
model's output, taken from the small table :data:`LOSSES` of loss gradients and symmetric
factors of the loss Hessian. Definitions and scalings are BackPACK's (Dangel, Kunstner, Hennig,
ICLR 2020), so the same model and weights give the same numbers; each formula is written out in
``docs/quantities.md``.

This module is callable: ``funcbp.quantities(...)`` is :func:`quantities`.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_flatten, tree_flatten_with_path, tree_unflatten

from funcbp.autodiff import interpreter
from funcbp.autodiff.extend import batch_axes, curvature
from funcbp.autodiff.extend.carrier import Pack, PassengerCarrier, Spec
from funcbp.autodiff.trace import trace

__all__ = ["LOSSES", "QUANTITIES", "LossFactors", "plot_summary", "quantities", "summarize"]

#: every quantity :func:`quantities` can compute.
QUANTITIES = ("grad", "batch_grad", "batch_l2", "sum_grad_squared", "variance", "diag_ggn",
              "diag_ggn_mc", "diag_hessian", "kfac")
_PER_EXAMPLE = {"batch_grad", "batch_l2", "sum_grad_squared", "variance", "diag_ggn",
                "diag_ggn_mc", "diag_hessian"}
_FIRST = {"grad", "batch_grad", "batch_l2", "sum_grad_squared", "variance"}


# --- the loss table: gradients and Hessian square roots w.r.t. the model output ------------------

class LossFactors(NamedTuple):
    """One loss, as the backward pass needs it. ``s`` is the reduction's scale (1 or 1/n).

    Attributes:
      value: ``(f, y, s) -> loss``.
      grad: ``(f, y, s) -> dL/df``.
      sqrt: ``(f, y, s) -> S`` of shape ``(K, *f.shape)`` with ``sum_k S_k S_k^T`` the Hessian of
        the loss w.r.t. ``f`` (block diagonal over examples, so each example's columns live in
        its own slice).
      sample: ``(key, f, y, s, M) -> (M, *f.shape)``: gradients of the loss at labels drawn from
        the model's predictive distribution, over ``sqrt(M)``; their outer products average to
        the Hessian.
      count: ``f -> n``, the number of terms that ``reduction="mean"`` divides by.
    """

    value: Callable
    grad: Callable
    sqrt: Callable
    sample: Callable
    count: Callable


def _onehot_like(f, y):
    y = jnp.asarray(y)
    if y.shape == f.shape:
        return y.astype(f.dtype)
    if y.shape != f.shape[:-1] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"softmax_cross_entropy: labels of shape {y.shape} ({y.dtype}) for "
                         f"logits of shape {f.shape}; pass integer labels of shape "
                         f"{f.shape[:-1]} or one-hot/probability targets of shape {f.shape}")
    return jax.nn.one_hot(y, f.shape[-1], dtype=f.dtype)


def _ce_value(f, y, s):
    return -s * jnp.sum(_onehot_like(f, y) * jax.nn.log_softmax(f, axis=-1))


def _ce_grad(f, y, s):
    t = _onehot_like(f, y)
    return s * (jax.nn.softmax(f, axis=-1) * jnp.sum(t, -1, keepdims=True) - t)


def _ce_sqrt(f, y, s):
    # Column v of one position: sqrt(p_v) (e_v - p); sum_v = diag(p) - p p^T.
    p = jax.nn.softmax(f, axis=-1)
    C = f.shape[-1]
    flat = p.reshape(f.shape[0], -1, C)                              # (B, P, C)
    B, P = flat.shape[:2]
    eye = jnp.eye(C, dtype=f.dtype)
    tau = jnp.sqrt(flat)
    cols = tau.transpose(2, 0, 1)[..., None] * (eye[:, None, None, :] - flat[None])  # (C,B,P,C)
    cols = cols * jnp.sqrt(s)
    if P == 1:
        return cols.reshape(C, *f.shape)
    per_pos = jnp.eye(P, dtype=f.dtype)                              # position t -> slot t
    full = cols.transpose(2, 0, 1, 3)[:, :, :, None, :] * per_pos[:, None, None, :, None]
    return full.reshape(P * C, *f.shape)


def _ce_sample(key, f, y, s, M):
    p = jax.nn.softmax(f, axis=-1)
    draws = jax.random.categorical(key, f, axis=-1, shape=(M, *f.shape[:-1]))
    return (p[None] - jax.nn.one_hot(draws, f.shape[-1], dtype=f.dtype)) * jnp.sqrt(s / M)


def _mse_value(f, y, s):
    return s * jnp.sum((f - y) ** 2)


def _diag_cols(scale):
    """Columns ``scale_k e_k`` over an example's features: ``(D, *f.shape)``."""
    B = scale.shape[0]
    flat = scale.reshape(B, -1)
    D = flat.shape[1]
    eye = jnp.eye(D, dtype=scale.dtype)
    return (eye[:, None, :] * flat[None]).reshape(D, *scale.shape)


def _mse_sqrt(f, y, s):
    return _diag_cols(jnp.full(f.shape, jnp.sqrt(2 * s), f.dtype))


def _mse_sample(key, f, y, s, M):
    # labels ~ N(f, 1/2), the Gaussian whose negative log-likelihood is the squared error
    eps = jax.random.normal(key, (M, *f.shape), f.dtype)
    return jnp.sqrt(2.0) * eps * jnp.sqrt(s / M)


def _bce_value(f, y, s):
    return s * jnp.sum(jnp.maximum(f, 0) - f * y + jnp.log1p(jnp.exp(-jnp.abs(f))))


def _bce_sqrt(f, y, s):
    p = jax.nn.sigmoid(f)
    return _diag_cols(jnp.sqrt(s * p * (1 - p)))


def _bce_sample(key, f, y, s, M):
    p = jax.nn.sigmoid(f)
    draws = jax.random.bernoulli(key, p, (M, *f.shape)).astype(f.dtype)
    return (p[None] - draws) * jnp.sqrt(s / M)


#: loss name -> its :class:`LossFactors` (the only way a loss enters the backward pass).
LOSSES: dict[str, LossFactors] = {
    "softmax_cross_entropy": LossFactors(
        _ce_value, _ce_grad, _ce_sqrt, _ce_sample, lambda f: math.prod(f.shape[:-1])),
    "mse": LossFactors(
        _mse_value, lambda f, y, s: 2 * s * (f - y), _mse_sqrt, _mse_sample,
        lambda f: math.prod(f.shape)),
    "sigmoid_binary_cross_entropy": LossFactors(
        _bce_value, lambda f, y, s: s * (jax.nn.sigmoid(f) - y), _bce_sqrt, _bce_sample,
        lambda f: math.prod(f.shape)),
}


# --- the public function ---------------------------------------------------------------------

def _check_which(which: Any) -> tuple[str, ...]:
    if isinstance(which, str):
        which = (which,)
    which = tuple(which)
    unknown = [w for w in which if w not in QUANTITIES]
    if unknown or not which:
        raise ValueError(f"funcbp.quantities: unknown quantity {unknown or which!r}; choose from "
                         f"{', '.join(QUANTITIES)}")
    return which


def quantities(apply_fn: Callable, params: Any, x: Any, y: Any, *, loss: str,
               which: str | Sequence[str], key: jax.Array | None = None,
               reduction: str = "mean", mc_samples: int = 1,
               report: dict | None = None) -> dict[str, Any]:
    """Per-example and curvature quantities of ``loss(apply_fn(params, x), y)`` in one pass.

    With ``l_i`` the loss of example ``i`` and ``s`` the reduction's scale (``1/n`` for
    ``"mean"``, 1 for ``"sum"``), the individual gradients are ``g_i = s grad l_i`` (BackPACK's
    convention) and, elementwise over each parameter:

    - ``grad = sum_i g_i``; ``batch_grad = [g_i]`` (leading batch axis);
      ``batch_l2 = [||g_i||^2]`` (shape ``(B,)``); ``sum_grad_squared = sum_i g_i^2``;
      ``variance = sum_grad_squared / B - (grad / B)^2``.
    - ``diag_ggn = diag(J^T H_L J)``; ``diag_ggn_mc`` the same with ``H_L`` replaced by
      ``mc_samples`` sampled outer products; ``diag_hessian = diag(d^2 L / d params^2)``
      (exact; refused where funcbp cannot guarantee it).
    - ``kfac``: for each weight of a dense or convolution layer used once, ``(A, G)`` with
      ``A = sum_{i,t} a_it a_it^T / B`` over the layer's inputs (unfolded patches for a
      convolution, the weight's input axes in axis order) and ``G = sum_{m,i} d_im d_im^T`` over
      the sampled output cotangents (summed over positions); ``A (x) G`` approximates the GGN
      of the weight flattened with its output axis last. ``None`` for other leaves.

    Args:
      apply_fn: ``apply_fn(params, x) -> f``, one array with the examples on axis 0; any jax
        function built from primitives funcbp has rules for.
      params: pytree of float arrays.
      x: pytree of arrays with the examples on axis 0.
      y: labels (integer class ids or one-hot/probabilities for ``softmax_cross_entropy``,
        targets of ``f``'s shape otherwise).
      loss: ``"softmax_cross_entropy"`` (classes on the last axis), ``"mse"`` (sum of squares,
        divided by ``f.size`` for ``"mean"``) or ``"sigmoid_binary_cross_entropy"`` (logits).
      which: names from :data:`QUANTITIES`.
      key: PRNG key, needed by ``diag_ggn_mc`` and ``kfac`` (their Monte-Carlo labels).
      reduction: ``"mean"`` or ``"sum"``.
      mc_samples: Monte-Carlo samples for ``diag_ggn_mc`` and ``kfac``.
      report: optional dict filled (at trace time) with ``"paths"``: for each parameter, how its
        quantities were computed (``"dense: outer"``, ``"conv: unfold"``, ``"per-example"``...),
        and ``"loss"``: the loss value.

    Returns:
      dict: quantity name -> pytree shaped like ``params`` (see above for the per-quantity
      shapes).

    Raises:
      BatchMixingError: a per-example quantity of a model that mixes examples.
      HessianUnsupportedError: ``diag_hessian`` where it cannot be exact.

    Examples:
      >>> import jax, jax.numpy as jnp, funcbp
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> apply = lambda p, x: x @ p["w"] + p["b"]
      >>> x, y = jnp.ones((4, 3)), jnp.array([0, 1, 0, 1])
      >>> q = funcbp.quantities(apply, params, x, y, loss="softmax_cross_entropy",
      ...                       which=("grad", "batch_l2"))
      >>> q["batch_l2"]["w"].shape
      (4,)
    """
    which = _check_which(which)
    if loss not in LOSSES:
        raise ValueError(f"funcbp.quantities: unknown loss {loss!r}; choose from "
                         f"{', '.join(LOSSES)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"funcbp.quantities: reduction must be 'mean' or 'sum', got "
                         f"{reduction!r}")
    want = frozenset(which)
    if want & {"diag_ggn_mc", "kfac"}:
        if key is None:
            raise ValueError("funcbp.quantities: diag_ggn_mc and kfac sample labels from the "
                             "model's predictive distribution; pass key=jax.random.key(...)")
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"funcbp.quantities: mc_samples must be a positive int, got "
                             f"{mc_samples!r}")
    factors = LOSSES[loss]

    p_paths, _ = tree_flatten_with_path(params)
    p_leaves, p_tree = tree_flatten(params)
    x_leaves, _ = tree_flatten(x)
    if not x_leaves:
        raise ValueError("funcbp.quantities: x has no arrays")
    B = int(np.shape(x_leaves[0])[0]) if np.ndim(x_leaves[0]) else 0
    for leaf in x_leaves:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != B:
            raise ValueError("funcbp.quantities: every array of x needs the examples on axis 0 "
                             f"(got shapes {[np.shape(v) for v in x_leaves]})")
    n_p = len(p_leaves)
    leaves = [*p_leaves, *x_leaves]
    _, in_tree = tree_flatten((params, x))
    traced = trace(apply_fn, in_tree, leaves, False, "funcbp.quantities")
    if traced.num_out != 1:
        raise ValueError("funcbp.quantities: apply_fn must return one array (the model output "
                         f"with examples on axis 0), got {traced.num_out} arrays")
    closed = traced.closed
    jaxpr = closed.jaxpr
    floats = [interpreter.is_differentiable(a) for a in closed.in_avals]
    active = [f and k < n_p for k, f in enumerate(floats)]
    an = batch_axes.analyze(jaxpr, [None] * n_p + [0] * len(x_leaves), active,
                            list(range(n_p)) + [None] * len(x_leaves))
    out_var = jaxpr.outvars[0]
    out_axis = an.axis(out_var)
    needs_examples = bool(want - {"grad"})
    if needs_examples:
        if an.mixing:
            eqn, why = an.mixing[0]
            raise batch_axes.BatchMixingError(
                f"funcbp.quantities: {', '.join(sorted(want - {'grad'}))} need(s) examples that "
                f"stay apart, but {why} at {interpreter.where(eqn)} combines the examples of a "
                "value that depends on the parameters (e.g. BatchNorm in training mode: a mean "
                "over the batch). Evaluate that layer in inference mode (running statistics), "
                "or ask only for 'grad'.")
        if out_axis != 0:
            raise batch_axes.BatchMixingError(
                f"funcbp.quantities: the model output must keep the examples on axis 0 (found "
                f"{out_axis!r}); return f with shape (batch, ...)")
    residuals = False
    if "diag_hessian" in want:
        curvature.check(an)
        residuals = curvature.has_residuals(an)

    outs, record = interpreter.forward(jaxpr, list(closed.consts), leaves, active)
    f = outs[0]
    s = 1.0 / factors.count(f) if reduction == "mean" else 1.0
    groups: dict = {}
    if want & _FIRST or residuals:  # the Hessian's residual terms read the gradient
        groups["grad"] = factors.grad(f, y, s)[None]
    if want & {"diag_ggn", "diag_hessian"}:
        groups["ggn"] = factors.sqrt(f, y, s)
    if want & {"diag_ggn_mc", "kfac"}:
        groups["mc"] = factors.sample(key, f, y, s, mc_samples)
    spec = Spec(per_example=bool(want & _PER_EXAMPLE),
                reduce_sites=("batch_grad" not in want
                              and bool(want & (_PER_EXAMPLE | {"kfac"}))),
                hessian="diag_hessian" in want, want=want, batch_size=B)
    carrier = PassengerCarrier(an, spec)
    with interpreter.carrier(carrier):
        packs = interpreter.backward(record, [Pack(groups, "batched")])
    result = _assemble(want, p_leaves, packs[:n_p], carrier, B)
    if report is not None:
        report["loss"] = factors.value(f, y, s)
        report["paths"] = {jax.tree_util.keystr(path): _path_of(k, packs[k], carrier, floats[k])
                           for k, (path, _) in enumerate(p_paths)}
    return {name: tree_unflatten(p_tree, result[name]) for name in which}


def _path_of(k: int, pack: Any, carrier: PassengerCarrier, is_float: bool) -> str:
    if not is_float:
        return "not differentiated"
    if k in carrier.paths:
        return carrier.paths[k]
    if pack is None:
        return "unused"
    return "per-example" if pack.mode == "examples" else "summed"


def _sq_sum(arr: jax.Array, lead: int) -> jax.Array:
    return jnp.sum(arr * arr, axis=tuple(range(lead)))


def _assemble(want: frozenset, leaves: list, packs: list, carrier: PassengerCarrier,
              B: int) -> dict:
    out: dict = {name: [] for name in want}
    for k, leaf in enumerate(leaves):
        leaf = jnp.asarray(leaf)
        zero = jnp.zeros(leaf.shape, leaf.dtype)
        site = carrier.site_results.get(k)
        pack = packs[k]
        groups = pack.groups if pack is not None else {}
        lead = 2 if pack is not None and pack.mode == "examples" else 1
        per_ex = groups["grad"][0] if "grad" in groups and lead == 2 else None
        if site is not None:
            grad = site.get("grad", zero)
        elif "grad" in groups:
            g = groups["grad"][0]
            grad = jnp.sum(g, 0) if lead == 2 else g
        else:
            grad = zero
        if "grad" in want:
            out["grad"].append(grad)
        if "batch_grad" in want:
            out["batch_grad"].append(per_ex if per_ex is not None
                                     else jnp.zeros((B, *leaf.shape), leaf.dtype))
        if "batch_l2" in want:
            if site is not None:
                out["batch_l2"].append(site["batch_l2"])
            elif per_ex is not None:
                out["batch_l2"].append(jnp.sum(per_ex * per_ex,
                                               axis=tuple(range(1, per_ex.ndim))))
            else:
                out["batch_l2"].append(jnp.zeros((B,), leaf.dtype))
        if want & {"sum_grad_squared", "variance"}:
            if site is not None:
                sgs = site["sum_grad_squared"]
            elif per_ex is not None:
                sgs = jnp.sum(per_ex * per_ex, axis=0)
            else:
                sgs = zero
            if "sum_grad_squared" in want:
                out["sum_grad_squared"].append(sgs)
            if "variance" in want:
                out["variance"].append(sgs / B - (grad / B) ** 2)
        diag = dict(site["diag"]) if site is not None else {
            name: _sq_sum(arr, lead) for name, arr in groups.items()
            if name != "grad"}
        if "diag_ggn" in want:
            out["diag_ggn"].append(diag.get("ggn", zero))
        if "diag_ggn_mc" in want:
            out["diag_ggn_mc"].append(diag.get("mc", zero))
        if "diag_hessian" in want:
            h = diag.get("ggn", zero)
            for name, val in diag.items():
                if name.startswith("res"):
                    h = h + val if name.endswith("+") else h - val
            out["diag_hessian"].append(h)
        if "kfac" in want:
            out["kfac"].append(site.get("kfac") if site is not None
                               else carrier.kfac_results.get(k))
    return out


# --- summaries for logging (the trainer's --log-quantities) ------------------------------------

def summarize(q: dict, percentiles: Sequence[float] = (5, 50, 95)) -> dict[str, Any]:
    """Per-layer gradient signal-to-noise and per-example norm percentiles, JSON-ready.

    For each top-level entry of ``params`` (a layer), with ``grad`` recovered as
    ``sum_i g_i`` where needed: ``snr = ||grad / B||^2 / sum(variance)`` (the squared norm of
    the mean individual gradient over the trace of their covariance, BackPACK's scaling
    cancels) when ``variance`` (and ``grad``) are present, and percentiles of
    ``sqrt(sum_leaves batch_l2)`` (the per-example gradient norm of the layer) when
    ``batch_l2`` is.

    Args:
      q: the result of :func:`quantities` (any of ``grad``, ``variance``, ``batch_l2``).
      percentiles: which percentiles of the per-example norms to report.

    Returns:
      ``{"<layer>/snr": float, "<layer>/norm_p50": float, ..., "all/...": ...}`` (plain floats).

    Examples:
      >>> import jax.numpy as jnp, funcbp
      >>> params = {"dense": {"w": jnp.ones((3, 2))}}
      >>> apply = lambda p, x: x @ p["dense"]["w"]
      >>> q = funcbp.quantities(apply, params, jnp.arange(12.0).reshape(4, 3),
      ...                       jnp.array([0, 1, 0, 1]), loss="softmax_cross_entropy",
      ...                       which=("grad", "batch_l2", "variance"))
      >>> sorted(funcbp.quantities.summarize(q))[:2]
      ['all/norm_p05', 'all/norm_p50']
    """
    out: dict[str, Any] = {}
    layers: dict[str, dict] = {}
    for name in ("grad", "variance", "batch_l2"):
        if name not in q:
            continue
        tree = q[name]
        items = tree.items() if isinstance(tree, dict) else [("params", tree)]
        for layer, sub in items:
            layers.setdefault(str(layer), {})[name] = jax.tree_util.tree_leaves(sub)
            layers.setdefault("all", {}).setdefault(name, []).extend(
                jax.tree_util.tree_leaves(sub))
    for layer, found in sorted(layers.items()):
        l2 = found.get("batch_l2")
        if l2:
            B = l2[0].shape[0]
            norms = np.sqrt(np.sum([np.asarray(v, np.float64) for v in l2], axis=0))
            for pct in percentiles:
                out[f"{layer}/norm_p{int(pct):02d}"] = float(np.percentile(norms, pct))
        var, grad = found.get("variance"), found.get("grad")
        if var and grad:
            n = B if l2 else None
            tr = float(sum(np.sum(np.asarray(v, np.float64)) for v in var))
            g2 = float(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grad))
            if n is None:
                out[f"{layer}/snr_unscaled"] = g2 / tr if tr > 0 else float("inf")
            else:
                out[f"{layer}/snr"] = (g2 / n ** 2) / tr if tr > 0 else float("inf")
    return out


def plot_summary(history: Sequence[dict], path: str, title: str = "gradient quantities") -> str:
    """Plots a list of :func:`summarize` results (one per logged step) to a PNG at ``path``.

    Left: each layer's gradient SNR (log scale); right: the per-example norm percentiles.
    Each record may carry a ``"step"`` entry (else its index is used).

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [rec.get("step", i) for i, rec in enumerate(history)]
    keys = sorted({k for rec in history for k in rec if k != "step"})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k in keys:
        vals = [rec.get(k, np.nan) for rec in history]
        if k.endswith("/snr") or k.endswith("/snr_unscaled"):
            ax1.plot(steps, vals, label=k.rsplit("/", 1)[0])
        elif "/norm_p" in k:
            ax2.plot(steps, vals, label=k, lw=1.5 if k.startswith("all/") else 0.8)
    ax1.set_yscale("log")
    ax1.set_title("gradient SNR  ||mean||^2 / tr(variance)")
    ax2.set_title("per-example gradient norm percentiles")
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- callable module ---------------------------------------------------------------------------

class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return quantities(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
