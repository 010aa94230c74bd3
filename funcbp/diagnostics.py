"""Gradient-flow diagnostics: how large the gradient is at each layer, and where it vanishes.

:func:`gradient_flow` computes the loss's gradient with funcbp and returns the norm of the
cotangent flowing through every parameter leaf, every top-level layer of the parameters
(``dense_0``, ``dense_1``...), and every point marked with :func:`funcbp.autodiff.tag.tag`
(``funcbp.tag``). A layer is flagged

- *vanishing* when its norm is below ``vanish`` (default ``1e-3``) times the last (output)
  layer's: the layers near the input barely learn;
- *exploding* when its norm is above ``explode`` (default ``1e3``) times the last layer's, or
  is not finite.

The result is a pytree of arrays, so ``jax.jit(gradient_flow, static_argnums=0)`` works and a
trainer can log it every epoch; :func:`plot_gradient_flow` draws a history of them as a
per-layer chart over time. :func:`activation_stats` records the forward side: per tag and per
activation the mean, the standard deviation, the fraction of zeros (dead ReLUs) and of saturated
sigmoid/tanh inputs; :func:`plot_activation_stats` draws them over training. See
``docs/diagnostics.md``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.autodiff.api import value_and_grad
from funcbp.autodiff.tag import recording, tag

__all__ = ["ActivationStats", "GradientFlow", "activation_stats", "gradient_flow",
           "plot_activation_stats", "plot_gradient_flow", "tag"]


@dataclasses.dataclass(frozen=True)
class GradientFlow:
    """Gradient norms per layer, per leaf and per tag, with vanishing/exploding flags.

    A pytree whose children are arrays (so it can leave ``jax.jit``); the orderings and the
    thresholds are static metadata.

    Attributes:
      loss: the loss value.
      layers: top-level layer name -> ``||d loss / d params[layer]||`` (over all its leaves).
      leaves: leaf path (``"['dense_0']['w']"``) -> that leaf's gradient norm.
      tags: tag name -> norm of the cotangent through ``funcbp.tag(x, name)``.
      vanishing, exploding: layer (and tag) name -> boolean flag.
      layer_order, tag_order: input-to-output order of ``layers`` and ``tags``.
      vanish, explode: the thresholds used (ratios to the last layer's norm).
    """

    loss: Any
    layers: dict
    leaves: dict
    tags: dict
    vanishing: dict
    exploding: dict
    layer_order: tuple = ()
    tag_order: tuple = ()
    vanish: float = 1e-3
    explode: float = 1e3

    def ratios(self) -> dict[str, float]:
        """Each layer's norm divided by the last layer's (Python floats)."""
        norms = {k: float(self.layers[k]) for k in self.layer_order}
        last = norms[self.layer_order[-1]] if self.layer_order else 1.0
        return {k: (v / last if last > 0 else math.inf) for k, v in norms.items()}

    @property
    def vanishing_layers(self) -> list[str]:
        return [k for k in self.layer_order if bool(self.vanishing[k])]

    @property
    def exploding_layers(self) -> list[str]:
        return [k for k in self.layer_order if bool(self.exploding[k])]

    def to_dict(self) -> dict:
        """Python floats and bools, for JSON logs (``history.append(flow.to_dict())``)."""
        return {
            "loss": float(self.loss),
            "layers": {k: float(self.layers[k]) for k in self.layer_order},
            "leaves": {k: float(v) for k, v in self.leaves.items()},
            "tags": {k: float(self.tags[k]) for k in self.tag_order},
            "vanishing": self.vanishing_layers,
            "exploding": self.exploding_layers,
        }

    def __str__(self) -> str:
        from funcbp.check.grads import format_table

        ratios = self.ratios()
        rows = []
        for k in self.layer_order:
            flag = "VANISHING" if bool(self.vanishing[k]) else (
                "EXPLODING" if bool(self.exploding[k]) else "")
            rows.append([k, f"{float(self.layers[k]):.3e}", f"{ratios[k]:.2e}", flag])
        out = [f"gradient flow (loss {float(self.loss):.4g}); ratios to the last layer; "
               f"vanishing below {self.vanish:g}, exploding above {self.explode:g}",
               format_table(["layer", "grad norm", "ratio", "flag"], rows)]
        if self.tag_order:
            last = float(self.tags[self.tag_order[-1]]) or 1.0
            trows = [[k, f"{float(self.tags[k]):.3e}", f"{float(self.tags[k]) / last:.2e}",
                      "VANISHING" if bool(self.vanishing.get("tag:" + k, False)) else (
                          "EXPLODING" if bool(self.exploding.get("tag:" + k, False)) else "")]
                     for k in self.tag_order]
            out += ["", format_table(["tag", "cotangent norm", "ratio", "flag"], trows)]
        return "\n".join(out)


jax.tree_util.register_dataclass(
    GradientFlow, data_fields=["loss", "layers", "leaves", "tags", "vanishing", "exploding"],
    meta_fields=["layer_order", "tag_order", "vanish", "explode"])


def natural_key(name: str) -> tuple:
    """Sort key putting ``dense_2`` before ``dense_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _layers(params: Any, order: Sequence[str] | None) -> list[tuple[str, Any]]:
    if isinstance(params, Mapping):
        names = list(params)
        if order is not None:
            missing = [n for n in order if n not in params]
            if missing or set(order) != set(names):
                raise ValueError(f"gradient_flow(order=...) must list every top-level key of "
                                 f"params exactly once; params has {sorted(names)}, order has "
                                 f"{list(order)}")
            names = list(order)
        else:
            names = sorted(names, key=lambda n: natural_key(str(n)))
        return [(str(n), params[n]) for n in names]
    if isinstance(params, (list, tuple)):
        return [(str(i), p) for i, p in enumerate(params)]
    return [("params", params)]


def _norm(tree: Any) -> jax.Array:
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _flags(norms: dict, order: Sequence[str], vanish: float, explode: float) -> tuple[dict, dict]:
    if not order:
        return {}, {}
    ref = norms[order[-1]]
    van, exp = {}, {}
    for k in order:
        n = norms[k]
        van[k] = jnp.isfinite(n) & (n < vanish * ref)
        exp[k] = ~jnp.isfinite(n) | (n > explode * ref)
    return van, exp


def gradient_flow(loss_fn: Callable, params: Any, *args: Any, has_aux: bool = False,
                  vanish: float = 1e-3, explode: float = 1e3,
                  order: Sequence[str] | None = None, **kwargs: Any) -> GradientFlow:
    """Per-layer (and per-tag) gradient norms of ``loss_fn(params, *args)``, flagged.

    For each top-level layer ``l`` of ``params`` the norm ``||d loss / d params[l]||`` (the
    square root of the sum of squares over its leaves) and ``ratio_l = norm_l / norm_last``;
    ``vanishing`` when ``ratio_l < vanish``, ``exploding`` when ``ratio_l > explode`` or the norm
    is not finite. Points marked ``funcbp.tag(x, name)`` inside ``loss_fn`` report the norm of
    the cotangent through them, flagged the same way against the last tag (keys ``"tag:name"``
    in ``vanishing``/``exploding``). Tags inside ``scan``/``cond``/``while`` bodies are not
    recorded.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs) -> scalar`` (or ``(scalar, aux)``).
      params: pytree of parameters; a dict's top-level keys are the layers, in natural order
        (``dense_2`` before ``dense_10``) unless ``order`` is given.
      *args, **kwargs: the rest of ``loss_fn``'s arguments (e.g. a batch).
      has_aux: ``loss_fn`` returns ``(loss, aux)``.
      vanish, explode: thresholds on the ratio to the last layer's norm.
      order: the layers' input-to-output order, when names do not sort that way.

    Returns:
      A :class:`GradientFlow` (``print`` it for a table; ``.to_dict()`` for logs).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp.diagnostics import gradient_flow
      >>> params = {"dense_0": {"w": jnp.ones((3, 3))}, "dense_1": {"w": jnp.ones((3, 1))}}
      >>> loss = lambda p, x: jnp.sum(jnp.tanh(x @ p["dense_0"]["w"]) @ p["dense_1"]["w"])
      >>> flow = gradient_flow(loss, params, jnp.ones((2, 3)))
      >>> flow.layer_order, flow.vanishing_layers
      (('dense_0', 'dense_1'), [])
    """
    if not callable(loss_fn):
        raise TypeError(f"gradient_flow expects a loss function first, got {loss_fn!r}")
    with recording() as rec:
        value, grads = value_and_grad(loss_fn, has_aux=has_aux)(params, *args, **kwargs)
    loss = value[0] if has_aux else value
    layers = _layers(grads, order)
    layer_norms = {name: _norm(g) for name, g in layers}
    layer_order = tuple(name for name, _ in layers)
    leaf_norms = {jax.tree_util.keystr(path): _norm(g)
                  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    tag_order = tuple(reversed(list(rec.norms)))  # recorded output-first; report input-first
    tags = dict(rec.norms)
    van, exp = _flags(layer_norms, layer_order, vanish, explode)
    tvan, texp = _flags(tags, tag_order, vanish, explode)
    van.update({"tag:" + k: v for k, v in tvan.items()})
    exp.update({"tag:" + k: v for k, v in texp.items()})
    return GradientFlow(loss, layer_norms, leaf_norms, tags, van, exp, layer_order, tag_order,
                        vanish, explode)


def plot_gradient_flow(history: Sequence[GradientFlow | Mapping], path: str, *,
                       title: str = "gradient flow") -> str:
    """Draws per-layer gradient norms over time (one line per layer, log scale) to ``path``.

    Args:
      history: one entry per epoch (or step): :class:`GradientFlow` objects or their
        ``to_dict()`` (or plain ``{layer: norm}`` dicts).
      path: where to write the PNG.
      title: the figure's title.

    Returns:
      ``path``.

    Examples:
      >>> plot_gradient_flow([{"dense_0": 1e-4, "dense_1": 1.0},
      ...                     {"dense_0": 1e-3, "dense_1": 0.5}], "/tmp/flow.png")
      '/tmp/flow.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("plot_gradient_flow needs a non-empty history of gradient flows")
    rows = []
    for h in history:
        if isinstance(h, GradientFlow):
            h = h.to_dict()
        rows.append(dict(h["layers"]) if "layers" in h else dict(h))
    names = list(rows[-1])
    if not isinstance(history[-1], GradientFlow) and "layers" not in history[-1]:
        names = sorted(names, key=lambda n: natural_key(str(n)))
    data = np.array([[r.get(n, np.nan) for n in names] for r in rows], dtype=float)
    with np.errstate(divide="ignore"):
        logs = np.log10(np.where(data > 0, data, np.nan))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("viridis")
    for j, n in enumerate(names):
        ax1.plot(np.arange(len(rows)), data[:, j], marker="o", ms=3, label=n,
                 color=cmap(j / max(len(names) - 1, 1)))
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("gradient norm")
    ax1.set_title("per layer over time")
    ax1.legend(fontsize=7, ncol=2)
    im = ax2.imshow(logs.T, aspect="auto", cmap="magma", origin="lower")
    ax2.set_yticks(range(len(names)), names, fontsize=7)
    ax2.set_xlabel("epoch")
    ax2.set_title("log10 gradient norm (input layer at the bottom)")
    fig.colorbar(im, ax=ax2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- activation statistics -----------------------------------------------------------------------

#: names of jax.nn's jitted activations whose *output* is recorded as a ReLU-like site.
RELU_LIKE = ("relu", "relu6")
#: composite activations whose inner logistic/tanh is not a layer's activation of its own.
_COMPOSITE = ("silu", "swish", "gelu", "mish", "softplus", "log_sigmoid", "hard_swish",
              "hard_silu", "glu", "celu", "elu", "selu", "sparse_plus", "squareplus")


@dataclasses.dataclass(frozen=True)
class ActivationStats:
    """Forward statistics per tag and per activation of a network, in forward order.

    A pytree whose children are arrays (so it can leave ``jax.jit``).

    Attributes:
      layers: name -> ``{"mean", "std", "zero", "count", "saturated"?, "dead"?}`` (fractions in
        ``[0, 1]``: ``zero`` of entries exactly 0, ``saturated`` of sigmoid/tanh inputs with
        ``|x| > 4``, ``dead`` of ReLU units that are 0 for every example of the batch).
      kinds: name -> ``"relu"``, ``"sigmoid"``, ``"tanh"`` or None.
      order: the names in the order the forward pass met them.
    """

    layers: dict
    kinds: dict = dataclasses.field(default_factory=dict)
    order: tuple = ()

    def to_dict(self) -> dict:
        """Python floats, for JSON logs: ``{name: {"mean": ..., ...}}`` in forward order."""
        return {k: {s: float(v) for s, v in self.layers[k].items()} for k in self.order}

    def __str__(self) -> str:
        from funcbp.check.grads import format_table

        rows = []
        for k in self.order:
            s = self.layers[k]
            pct = [f"{100 * float(s[key]):.1f}%" if key in s else "-"
                   for key in ("zero", "saturated", "dead")]
            rows.append([k, self.kinds.get(k) or "-", f"{float(s['mean']):.3g}",
                         f"{float(s['std']):.3g}", *pct])
        return "\n".join(["activation statistics (sigmoid/tanh: their input; relu: its output)",
                          format_table(["layer", "kind", "mean", "std", "zero", "saturated",
                                        "dead units"], rows)])


jax.tree_util.register_dataclass(ActivationStats, data_fields=["layers"],
                                 meta_fields=["kinds", "order"])


class _Activations:
    """Records the activations funcbp's forward walk meets, named ``<kind>_<k>``."""

    inline = True  # inside jit(relu), custom_jvp and the user's nested jits

    def __init__(self, rec: Any) -> None:
        self.rec = rec
        self.count: dict[str, int] = {}

    def _site(self, kind: str, value: Any) -> None:
        k = self.count.get(kind, 0)
        self.count[kind] = k + 1
        self.rec.record_stats(f"{kind}_{k}", kind, value, walk=True)

    def forward_eqn(self, eqn, invals, outs) -> None:
        from funcbp.autodiff import interpreter

        name = eqn.params.get("name")
        if eqn.primitive.name in ("jit", "pjit") and name in RELU_LIKE:
            self._site("relu", outs[0])
        elif eqn.primitive.name in ("logistic", "tanh"):
            inside = [f.primitive for f in interpreter.path()]
            if not any(f"jit({c})" in inside for c in _COMPOSITE):
                self._site("sigmoid" if eqn.primitive.name == "logistic" else "tanh", invals[0])

    def backward_eqn(self, *args) -> None:
        pass


def activation_stats(fn: Callable, *args: Any, auto: bool = True, **kwargs: Any
                     ) -> ActivationStats:
    """Forward statistics of ``fn(*args, **kwargs)``'s tags and activations.

    Runs ``fn`` forward through funcbp's interpreter and records, for every
    ``funcbp.tag(x, name, kind=...)`` and (``auto``) every activation it meets, named
    ``relu_0``, ``relu_1``, ``sigmoid_0``, ``tanh_0``... in forward order: the mean and standard
    deviation, the fraction of entries exactly zero, for sigmoid/tanh the fraction of their
    inputs beyond ``±4`` (saturated: slope below 0.02), for ReLU the fraction of dead units
    (zero for every example). ReLU sites report the ReLU's output, sigmoid/tanh sites their
    input. The result is a pytree of arrays: ``jax.jit`` the call to log it every epoch.

    Args:
      fn: the function, e.g. ``model.apply`` or ``lambda p, x: model.apply(p, x)``.
      *args, **kwargs: its arguments (a probe batch).
      auto: also record the activations that are not tagged (``jax.nn.relu`` and
        ``funcbp.nn.relu``, ``relu6``, ``logistic``/``jax.nn.sigmoid``, ``tanh``).

    Returns:
      An :class:`ActivationStats` (``print`` it for a table; ``.to_dict()`` for logs).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp.diagnostics import activation_stats
      >>> def net(w, x):
      ...     return jax.nn.sigmoid(jax.nn.relu(x @ w) @ w - 10.0)
      >>> s = activation_stats(net, -jnp.eye(3), jnp.ones((4, 3)))
      >>> s.order, float(s.layers["relu_0"]["dead"]), float(s.layers["sigmoid_0"]["saturated"])
      (('relu_0', 'sigmoid_0'), 1.0, 1.0)
    """
    from funcbp.autodiff import interpreter

    if not callable(fn):
        raise TypeError(f"activation_stats expects a function first, got {fn!r}")
    closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
    leaves = jax.tree.leaves(args)
    with recording() as rec:
        extra = (_Activations(rec),) if auto else ()
        with interpreter.hooks(*extra):
            interpreter.forward(closed.jaxpr, list(closed.consts), leaves,
                                [False] * len(leaves))
    stats = rec.stats
    return ActivationStats(stats, dict(rec.kinds), tuple(stats))


def plot_activation_stats(history: Sequence[ActivationStats | Mapping], path: str, *,
                          title: str = "activation statistics") -> str:
    """Draws, per layer over time, the fraction of zeros, of saturated inputs and the
    standard deviation (one line per layer; input layer first) to ``path``.

    Args:
      history: one entry per epoch: :class:`ActivationStats` or their ``to_dict()``.
      path: where to write the PNG.
      title: the figure's title.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("plot_activation_stats needs a non-empty history")
    rows = [h.to_dict() if isinstance(h, ActivationStats) else dict(h) for h in history]
    names = list(rows[-1])
    panels = [("zero", "fraction exactly zero"), ("saturated", "fraction saturated (|x| > 4)"),
              ("std", "standard deviation")]
    panels = [p for p in panels if any(p[0] in r.get(n, {}) for r in rows for n in names)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for j, n in enumerate(names):
            ys = [r.get(n, {}).get(key, np.nan) for r in rows]
            if not all(np.isnan(ys)):
                ax.plot(np.arange(len(rows)), ys, marker="o", ms=3, label=n,
                        color=cmap(j / max(len(names) - 1, 1)))
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=9)
        if key != "std":
            ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
