"""Shared pieces of the experiments: data splits, models, a training loop, results and figures.

Every gradient here comes from ``funcbp.value_and_grad``: training runs through
``funcbp.train.make_train_step`` (which defaults to it), and the diagnostics (per-layer
gradient norms) call it directly. Nothing calls ``jax.grad``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import funcbp  # noqa: E402
from funcbp import data as fdata  # noqa: E402
from funcbp import losses, nn, optim  # noqa: E402
from funcbp.train import make_train_step  # noqa: E402

__all__ = [
    "FIGURES_DIR",
    "RESULTS_ROOT",
    "Run",
    "Splits",
    "activation_fn",
    "deep_mlp",
    "digits_splits",
    "evaluate",
    "grad_norms_fn",
    "parse_args",
    "predict",
    "train",
]

REPO = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO / "experiments" / "results"
FIGURES_DIR = REPO / "docs" / "experiments" / "figures"
LOSS = losses.softmax_cross_entropy_with_integer_labels

plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9})


# ----------------------------------------------------------------------------- command line


class Run:
    """Where one study writes: ``out/results.json`` and ``out/*.png``; optional publishing.

    ``publish`` copies each saved figure to ``docs/experiments/figures/<study>_<name>.png``.
    """

    def __init__(self, study: str, quick: bool, out: Path | None = None, publish: bool = False):
        self.study, self.quick, self.publish = study, quick, publish
        self.out = Path(out) if out else RESULTS_ROOT / study
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.figures: list[str] = []

    def log(self, *msg: Any) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{self.study} {elapsed:6.1f}s]", *msg, flush=True)

    def save_figure(self, fig: plt.Figure, name: str) -> Path:
        path = self.out / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        self.figures.append(path.name)
        if self.publish:
            FIGURES_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, FIGURES_DIR / f"{self.study}_{name}.png")
        return path

    def write(self, results: dict) -> Path:
        results = {
            "study": self.study,
            "mode": "quick" if self.quick else "full",
            "seconds": round(time.perf_counter() - self.started, 1),
            "figures": self.figures,
            "jax_backend": jax.default_backend(),
            **results,
        }
        path = self.out / "results.json"
        path.write_text(json.dumps(_jsonable(results), indent=1, allow_nan=True) + "\n")
        self.log(f"wrote {path} ({results['seconds']} s)")
        return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def parse_args(study: str, description: str, argv: Sequence[str] | None = None) -> Run:
    """The common command line: ``--quick``, ``--out DIR``, ``--publish`` / ``--no-publish``.

    Full mode publishes its figures to ``docs/experiments/figures/`` by default; quick mode
    does not (``--publish`` forces it).
    """
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{study}", description=description)
    parser.add_argument("--quick", action="store_true", help="tiny run for the CI smoke test")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default experiments/results/{study})")
    parser.add_argument("--publish", action=argparse.BooleanOptionalAction, default=None,
                        help="copy figures to docs/experiments/figures (default: full mode only)")
    args = parser.parse_args(argv)
    publish = (not args.quick) if args.publish is None else args.publish
    return Run(study, args.quick, args.out, publish)


# ------------------------------------------------------------------------------------- data


class Splits(NamedTuple):
    """Train / validation / test arrays (jax arrays on the default device)."""

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array


def digits_splits(seed: int = 0, normalize: str = "standardize",
                  train_size: int | None = None,
                  fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> Splits:
    """The embedded 8x8 digits, split stratified, normalised with training-split statistics.

    Args:
      seed: split seed.
      normalize: ``"standardize"`` (per-pixel mean/std of the training split), ``"unit"``
        (``x / 16``) or ``"raw"`` (pixel counts 0..16).
      train_size: keep only this many training examples (stratified subset); None for all.
      fractions: train / validation / test fractions of the 1,797 images.
    """
    images, labels = fdata.load_digits()
    (xtr, ytr), (xva, yva), (xte, yte) = fdata.split(
        jax.random.key(seed), images, labels, fractions, stratify=True)
    if train_size is not None and train_size < len(xtr):
        (xtr, ytr), _ = fdata.split(jax.random.key(seed + 1), xtr, ytr,
                                    (train_size, len(xtr) - train_size), stratify=True)
    if normalize == "standardize":
        stats = fdata.fit_standardize(xtr, per="feature")
        xtr, xva, xte = stats(xtr), stats(xva), stats(xte)
    elif normalize == "unit":
        xtr, xva, xte = (fdata.scale_to_unit(x, fdata.DIGITS_MAX_VALUE) for x in (xtr, xva, xte))
    elif normalize != "raw":
        raise ValueError(f"normalize must be 'standardize', 'unit' or 'raw', got {normalize!r}")
    as_j = lambda a, dt: jnp.asarray(np.asarray(a, dtype=dt))
    return Splits(as_j(xtr, np.float32), as_j(ytr, np.int32), as_j(xva, np.float32),
                  as_j(yva, np.int32), as_j(xte, np.float32), as_j(yte, np.int32))


# ----------------------------------------------------------------------------------- models


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": nn.sigmoid, "tanh": nn.tanh, "relu": nn.relu, "linear": lambda x: x,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """``"sigmoid"``, ``"tanh"``, ``"relu"`` or ``"linear"`` as a function."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def deep_mlp(hidden: Sequence[int], activation: str = "relu", w_init: Any = None,
             num_classes: int = 10) -> nn.Layer:
    """Flatten, then ``Dense -> activation`` per hidden width, then a linear classifier.

    Parameters are ``{"dense_0": {"w", "b"}, ..., "dense_<L>": ...}`` (``dense_<L>`` is the
    output layer). Besides ``init``/``apply``, the returned layer's ``apply`` accepts
    ``return_activations=True`` and then gives the list of every layer's output (post
    activation for hidden layers, logits last), for activation statistics.
    """
    act = activation_fn(activation)
    dims = [*hidden, num_classes]
    dense = [nn.Dense(d, w_init=w_init) for d in dims]
    names = [f"dense_{i}" for i in range(len(dims))]

    def init(key, in_shape):
        shape = (in_shape[0], math.prod(in_shape[1:]))
        params = {}
        for name, layer, k in zip(names, dense, jax.random.split(key, len(dims)), strict=True):
            shape, params[name] = layer.init(k, shape)
        return shape, params

    def apply(params, x, *, key=None, train=False, return_activations=False):
        h = x.reshape(x.shape[0], -1)
        outs = []
        for i, (name, layer) in enumerate(zip(names, dense, strict=True)):
            h = layer.apply(params[name], h)
            if i < len(dims) - 1:
                h = act(h)
            outs.append(h)
        return outs if return_activations else h

    return nn.Layer(init, apply, name="mlp")


def digits_cnn(channels: tuple[int, int] = (32, 64), hidden: int = 128,
               dropout: float = 0.25) -> nn.Layer:
    """Conv(3x3) -> ReLU -> Conv(3x3) -> ReLU -> 2x2 max-pool -> Dense -> ReLU -> Dense (He init).

    The layout of ``funcbp.train.get_model("digits_cnn")`` with adjustable widths.
    """
    he = nn.init.he_uniform()
    return nn.serial(
        nn.Conv2D(channels[0], 3, w_init=he), nn.relu,
        nn.Conv2D(channels[1], 3, w_init=he), nn.relu, nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dense(hidden, w_init=he), nn.relu, nn.Dropout(dropout),
        nn.Dense(10, w_init=nn.init.glorot_uniform()),
    )


# ---------------------------------------------------------------------------- evaluation


def predict(apply: Callable, params: Any, x: jax.Array, chunk: int = 2048) -> np.ndarray:
    """Logits of ``x`` in inference mode, in chunks, as numpy."""
    fn = _jitted_apply(apply)
    return np.concatenate([np.asarray(fn(params, x[i:i + chunk]))
                           for i in range(0, len(x), chunk)])


_APPLY_CACHE: dict[Any, Callable] = {}


def _jitted_apply(apply: Callable) -> Callable:
    if apply not in _APPLY_CACHE:
        _APPLY_CACHE[apply] = jax.jit(lambda p, x: apply(p, x, train=False))
    return _APPLY_CACHE[apply]


def evaluate(apply: Callable, params: Any, x: jax.Array, y: jax.Array) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of the model on ``(x, y)``."""
    logits = predict(apply, params, x)
    y = np.asarray(y)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-logp[np.arange(len(y)), y].mean())
    return loss, float((logits.argmax(axis=1) == y).mean())


def grad_norms_fn(apply: Callable) -> Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]:
    """A jitted ``(params, x, y) -> {layer: ||dL/dW_layer||_2}`` using ``funcbp.value_and_grad``.

    Only the weight leaves (``w``, 2-D or more) count, one norm per top-level params key, so
    biases do not blur the per-layer picture.
    """

    def objective(params, x, y):
        return LOSS(apply(params, x, train=False), y)

    @jax.jit
    def norms(params, x, y):
        _, grads = funcbp.value_and_grad(objective)(params, x, y)
        return {name: jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(sub)
                                   if g.ndim >= 2))
                for name, sub in grads.items()}

    return norms


def layer_order(names: Sequence[str]) -> list[str]:
    """Sort ``dense_10`` after ``dense_9`` (numeric suffix order)."""
    return sorted(names, key=lambda n: (n.rsplit("_", 1)[0], int(n.rsplit("_", 1)[1])))


# ------------------------------------------------------------------------------ training


def train(apply: Callable, params: Any, data: Splits, tx: optim.GradientTransformation, *,
          key: jax.Array, batch_size: int, epochs: int | None = None, steps: int | None = None,
          l1: float = 0.0, l2: float = 0.0, augment: Callable | None = None,
          eval_every: int = 1, record_steps: bool = False,
          probe: Callable[[int, Any], dict] | None = None,
          stop_on_nonfinite: bool = True) -> tuple[Any, dict]:
    """Mini-batch training with ``funcbp.train.make_train_step`` (funcbp's gradients).

    Runs ``epochs`` epochs, or ``steps`` steps (whichever is given; with both, the first
    reached). Batches of ``batch_size`` are drawn without replacement each epoch (remainder
    dropped; ``batch_size >= n`` means full-batch gradient descent).

    Args:
      apply: the model's ``apply``.
      params: initial parameters (donated; do not reuse them after the call).
      data: the splits; validation and test are evaluated every ``eval_every`` epochs.
      tx: the optimiser.
      key: drives the batch order, augmentation and dropout.
      l1, l2: penalty coefficients (weights only), as ``make_train_step``.
      augment: ``augment(key, x) -> x`` for training batches.
      record_steps: keep each step's loss and gradient norm (``history["steps"]``).
      probe: ``probe(epoch, params) -> dict`` called at epoch 0 (before training) and after
        each evaluated epoch; the dicts go to ``history["probes"]``.
      stop_on_nonfinite: stop at the first NaN/inf loss or gradient (``history["diverged"]``).

    Returns:
      ``(params, history)``: ``history["epochs"]`` holds per-evaluated-epoch records
      (``epoch``, ``step``, ``train_loss``, ``train_acc`` (running means over the epoch's
      batches), ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``, ``seconds``).
    """
    if epochs is None and steps is None:
        raise ValueError("give epochs or steps")
    n = int(data.x_train.shape[0])
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    if epochs is None:
        epochs = math.ceil(steps / per_epoch)
    step_fn = make_train_step(apply, LOSS, tx, augment_fn=augment, l1=l1, l2=l2,
                              skip_nonfinite=False)
    opt_state = tx.init(params)
    history: dict[str, Any] = {"epochs": [], "steps": [], "probes": [], "diverged": False,
                               "steps_per_epoch": per_epoch, "batch_size": batch_size}
    if probe is not None:
        history["probes"].append({"epoch": 0, **probe(0, params)})
    step, train_seconds = 0, 0.0
    done = False
    for epoch in range(1, epochs + 1):
        k_epoch = jax.random.fold_in(key, epoch)
        losses_, accs, norms = [], [], []
        t0 = time.perf_counter()
        for i, (xb, yb) in enumerate(fdata.batches(k_epoch, data.x_train, data.y_train,
                                                   batch_size)):
            params, opt_state, m = step_fn(params, opt_state, (xb, yb),
                                           jax.random.fold_in(k_epoch, 10_000 + i))
            losses_.append(m["loss"])
            accs.append(m["accuracy"])
            norms.append(m["grad_norm"])
            step += 1
            if steps is not None and step >= steps:
                done = True
                break
        loss_v = np.asarray(jnp.stack(losses_))
        norm_v = np.asarray(jnp.stack(norms))
        history.setdefault("epoch_seconds", []).append(time.perf_counter() - t0)
        train_seconds += history["epoch_seconds"][-1]
        if record_steps:
            history["steps"].extend(
                {"step": step - len(loss_v) + j + 1, "loss": float(lv), "grad_norm": float(gv)}
                for j, (lv, gv) in enumerate(zip(loss_v, norm_v, strict=True)))
        bad = ~np.isfinite(loss_v) | ~np.isfinite(norm_v)
        if stop_on_nonfinite and bad.any():
            history["diverged"] = True
            history["diverged_at_step"] = step - len(loss_v) + int(np.argmax(bad)) + 1
            done = True
        if epoch % eval_every == 0 or epoch == epochs or done:
            record = {"epoch": epoch, "step": step,
                      "train_loss": float(np.mean(loss_v)),
                      "train_acc": float(np.mean(np.asarray(jnp.stack(accs)))),
                      "seconds": train_seconds}
            if not history["diverged"]:
                record["val_loss"], record["val_acc"] = evaluate(apply, params, data.x_val,
                                                                 data.y_val)
                record["test_loss"], record["test_acc"] = evaluate(apply, params, data.x_test,
                                                                   data.y_test)
                if probe is not None:
                    history["probes"].append({"epoch": epoch, **probe(epoch, params)})
            history["epochs"].append(record)
        if done:
            break
    history["train_seconds"] = train_seconds
    final = next((r for r in reversed(history["epochs"]) if "test_acc" in r), None)
    history["final"] = final
    return params, history


def final_metrics(history: dict) -> dict:
    """The last evaluated record's losses and accuracies (NaN if it diverged first)."""
    rec = history.get("final") or {}
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
    out = {k: rec.get(k, float("nan")) for k in keys}
    out["diverged"] = history["diverged"]
    out["train_seconds"] = history["train_seconds"]
    return out


def env_threads() -> str:
    """A note on the CPU budget the numbers were taken with."""
    return f"{os.cpu_count()} CPUs visible, backend {jax.default_backend()}"
