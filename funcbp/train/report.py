"""What a run reports: evaluation, the metrics file, the plots, the NaN and label messages."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.losses import LabelRangeError
from funcbp.train import rundir
from funcbp.train.checkpoint import key_path_str

__all__ = ["evaluate", "evaluate_batches", "plot_history", "read_metrics"]


def evaluate(
    eval_step: Callable, params: Any, x: Any, y: Any, batch_size: int = 1000
) -> dict[str, float]:
    """Mean loss and accuracy of ``params`` on ``(x, y)``, in batches of ``batch_size``.

    Returns:
      ``{"loss": float, "accuracy": float}``, averages weighted by batch size (no
      ``accuracy`` for targets that are not class labels).

    Raises:
      funcbp.losses.LabelRangeError: a batch holds labels outside ``[0, classes)``; the
        message names the first such batch and counts its bad labels.
    """
    n = len(x)
    return evaluate_batches(eval_step, params, ((x[start: start + batch_size],
                                                 y[start: start + batch_size])
                                                for start in range(0, n, batch_size)))


def evaluate_batches(eval_step: Callable, params: Any, batches: Iterable) -> dict[str, float]:
    """:func:`evaluate` over any iterable of ``(x, y)`` batches (sizes may differ).

    Raises:
      ValueError: no batch at all.
      funcbp.losses.LabelRangeError: as :func:`evaluate`.
    """
    totals, has_accuracy = [], True
    for batch in batches:
        m = eval_step(params, batch)
        has_accuracy = has_accuracy and "accuracy" in m
        count = jnp.asarray(m["count"], jnp.float32)
        acc = m.get("accuracy", jnp.zeros(())) * count
        totals.append(jnp.stack([m["loss"] * count, acc,
                                 jnp.asarray(m.get("bad_labels", 0), jnp.float32), count]))
    if not totals:
        raise ValueError("evaluate: the data holds no batch")
    table = np.asarray(jnp.stack(totals), np.float64)
    if table[:, 2].any():
        i = int(np.argmax(table[:, 2] > 0))
        start = int(table[:i, 3].sum())
        raise LabelRangeError(
            f"evaluate: {int(table[i, 2])} of {int(table[i, 3])} labels of batch {i + 1} "
            f"(examples {start}-{start + int(table[i, 3]) - 1}) are outside [0, classes) of "
            f"the model's output; {int(table[:, 2].sum())} in all")
    n = float(table[:, 3].sum())
    out = {"loss": float(table[:, 0].sum()) / n}
    if has_accuracy:
        out["accuracy"] = float(table[:, 1].sum()) / n
    return out


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (epoch lines, then the test line).

    A last line cut short by a crash is left out (resuming drops it from the file, with a
    warning); an empty list if there is no file.

    Raises:
      funcbp.train.rundir.RunDirError: the file is unreadable or damaged before its last line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return rundir.read_jsonl(path)[0]


def plot_history(history: Sequence[dict], run_dir: str | os.PathLike) -> list[Path]:
    """Write ``loss.png`` and ``accuracy.png`` (train and validation per epoch) in ``run_dir``.

    Uses matplotlib's Agg canvas directly, so it needs no display and leaves pyplot alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    epochs = [r["epoch"] for r in history]
    for metric, title in (("loss", "loss"), ("accuracy", "accuracy")):
        if not any(r.get(f"{split}_{metric}") is not None for r in history
                   for split in ("train", "val")):
            continue  # no accuracy for a regression
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for split in ("train", "val"):
            values = [r.get(f"{split}_{metric}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker=".",
                        label="validation" if split == "val" else split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        if metric == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(run_dir) / f"{metric}.png"
        _save_whole(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        written.append(path)
    return written


def _save_whole(path: Path, save: Callable[[Path], Any]) -> None:
    """``save(tmp)`` then rename over ``path``: a plot is whole or absent, errors name it."""
    # Keep the suffix last: matplotlib picks the format from it.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        save(tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise rundir.RunDirError(f"{path}: cannot write it ({err.strerror or err}); free disk "
                                 "space or check the directory's permissions") from None


def labels_message(metrics: dict, step: int, epoch: int, batch: int, batch_size: int,
                   last_ckpt: str, num_classes: int | None) -> str:
    """The trainer's error for a batch with labels outside ``[0, classes)``."""
    bad = int(metrics["bad_labels"])
    classes = "?" if num_classes is None else num_classes
    return (f"labels out of range at step {step} (epoch {epoch}, batch {batch}): {bad} of "
            f"{batch_size} labels of the batch are outside [0, {classes}) (the model has "
            f"{classes} classes); the parameters were not updated with it; training "
            f"stopped; {last_ckpt}. Check the data's labels (1-based? subtract 1)")


def nonfinite_message(metrics: dict, step: int, epoch: int, batch: int, params: Any,
                      last_ckpt: str) -> str:
    """The trainer's error for a step whose loss or gradient is not finite."""
    flags = jax.tree_util.tree_flatten_with_path(metrics["nonfinite"])[0]
    grads = [key_path_str(p) for p, flag in flags if bool(flag)]
    bad_params = [key_path_str(p) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                  if not bool(jnp.all(jnp.isfinite(leaf)))]
    parts = [f"non-finite loss or gradient at step {step} (epoch {epoch}, batch {batch}): "
             f"loss={float(metrics['loss'])}, objective={float(metrics['objective'])}"]
    if grads:
        parts.append(f"non-finite gradients in {', '.join(grads)}")
    else:
        parts.append("every gradient leaf is finite; the loss value itself is not")
    if bad_params:
        parts.append(f"non-finite parameter values in {', '.join(bad_params)}")
    parts.append(f"training stopped; {last_ckpt}. Try a lower --lr, --clip-norm, or check "
                 "the inputs")
    return "; ".join(parts)


def nonfinite_origin(snapshot, batch_of, bad_index, step_fn, train_step, host, key) -> str:
    """Where the bad step's NaN started: replays the steps since ``snapshot`` (the same step
    function, so the same numbers) to the bad step's parameters, then runs
    :func:`funcbp.find_nonfinite` on its batch eagerly. Only runs after a bad step.

    ``snapshot = (start, (params, opt_state))``; ``batch_of(j)`` is step ``j``'s batch."""
    try:
        start, (params, opt_state) = snapshot
        for j in range(start, bad_index):
            params, opt_state, _ = step_fn(params, opt_state, batch_of(j),
                                           jax.random.fold_in(key, j))
        x, y = batch_of(bad_index)
        report = train_step.locate_nonfinite(host(params), (np.asarray(x), np.asarray(y)),
                                             jax.random.fold_in(key, bad_index))
    except Exception as err:  # the diagnosis must never hide the error it explains
        return f"\n(could not locate where it started: {type(err).__name__}: {err})"
    if report.first is None:
        return "\n(re-running the step eagerly gave finite values; no origin found)"
    return f"\nwhere it started: {report.first}"
