"""The trainer: epochs of mini-batches, validation, early stopping, checkpoints, plots.

``fit(TrainConfig(...))`` (and ``funcbp train``) trains a named model on a named data set and
writes a run directory::

    runs/<timestamp>-<data>-<model>/
      run.lock             while a run writes here: its pid and host (a second run refuses)
      config.json          the full TrainConfig (a copy: the checkpoint's is the truth)
      metrics.jsonl        one JSON object per epoch, then one for the test split
      loss.png, accuracy.png
      summary.json         final test metrics, time, and where the parameters came from
      checkpoints/latest.ckpt, latest.previous.ckpt, best.ckpt

Every random draw comes from ``jax.random.key(seed)``: the initial parameters from one half
of it, and epoch ``e``'s data order, augmentation and dropout from ``fold_in(train_key, e)``,
so a run resumed at an epoch boundary reproduces the uninterrupted run bit for bit. The
checkpoint holds the config and the metrics history as well, so a resumed run trusts neither
an edited ``config.json`` nor a damaged ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcbp import data as fdata
from funcbp import losses, nn
from funcbp.diagnostics import (
    activation_stats,
    gradient_flow,
    plot_activation_stats,
    plot_gradient_flow,
)
from funcbp.losses import LabelRangeError
from funcbp.quantities import plot_summary as plot_quantities
from funcbp.quantities import quantities
from funcbp.quantities import summarize as summarize_quantities
from funcbp.train import parallel, rundir
from funcbp.train.checkpoint import (
    key_path_str,
    load_checkpoint,
    newest_checkpoint,
    read_header,
    remove_temporary_files,
    save_checkpoint,
)
from funcbp.train.config import (
    GRAD_FNS,
    NUM_CLASSES,
    TrainConfig,
    load_data,
    make_optimizer,
)
from funcbp.train.models import get_model
from funcbp.train.step import make_eval_step, make_train_step

__all__ = [
    "FitResult",
    "NonFiniteError",
    "default_run_dir",
    "evaluate",
    "fit",
    "plot_history",
    "read_metrics",
    "resume",
]


class NonFiniteError(FloatingPointError):
    """Training hit a NaN or infinite loss or gradient; the message names the step and leaves."""


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      params: the parameters evaluated on the test split (the final ones, or the best by
        validation loss when early stopping ended the run).
      opt_state: the final optimiser state.
      history: one dict per epoch (the epoch lines of ``metrics.jsonl``).
      test: ``{"test_loss", "test_accuracy", ...}``.
      run_dir: the run directory.
    """

    params: Any
    opt_state: Any
    history: list[dict]
    test: dict
    run_dir: Path


def evaluate(
    eval_step: Callable, params: Any, x: Any, y: Any, batch_size: int = 1000
) -> dict[str, float]:
    """Mean loss and accuracy of ``params`` on ``(x, y)``, in batches of ``batch_size``.

    Returns:
      ``{"loss": float, "accuracy": float}``, averages weighted by batch size.

    Raises:
      funcbp.losses.LabelRangeError: a batch holds labels outside ``[0, classes)``; the
        message names the first such batch and counts its bad labels.
    """
    n = len(x)
    totals = []
    for start in range(0, n, batch_size):
        m = eval_step(params, (x[start: start + batch_size], y[start: start + batch_size]))
        bad = m.get("bad_labels", 0)
        totals.append(jnp.stack([m["loss"] * m["count"], m["accuracy"] * m["count"],
                                 jnp.asarray(bad, jnp.float32), jnp.asarray(m["count"],
                                                                            jnp.float32)]))
    table = np.asarray(jnp.stack(totals), np.float64)
    if table[:, 2].any():
        i = int(np.argmax(table[:, 2] > 0))
        start = i * batch_size
        raise LabelRangeError(
            f"evaluate: {int(table[i, 2])} of {int(table[i, 3])} labels of batch {i + 1} "
            f"(examples {start}-{start + int(table[i, 3]) - 1}) are outside [0, classes) of "
            f"the model's output; {int(table[:, 2].sum())} in all")
    loss_sum, acc_sum = table[:, 0].sum(), table[:, 1].sum()
    return {"loss": float(loss_sum) / n, "accuracy": float(acc_sum) / n}


def default_run_dir(config: TrainConfig, root: str | os.PathLike = "runs") -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<data>-<model>``, with a suffix if that already exists."""
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.data}-{config.model}"
    path, k = base, 1
    while path.exists():
        path, k = base.with_name(f"{base.name}-{k}"), k + 1
    return path


def _claim_default_run_dir(config: TrainConfig) -> Path:
    """A new default run directory, created here so that runs started in the same second (a
    sweep launched at once) each get their own rather than meeting at one lock."""
    if jax.process_index() != 0:  # only process 0 writes; the others never create it
        return default_run_dir(config)
    base = default_run_dir(config)
    path, k = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path, k = base.with_name(f"{base.name}-{k}"), k + 1


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


def _progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


def _labels_message(metrics: dict, step: int, epoch: int, batch: int, batch_size: int,
                    last_ckpt: str) -> str:
    bad = int(metrics["bad_labels"])
    return (f"labels out of range at step {step} (epoch {epoch}, batch {batch}): {bad} of "
            f"{batch_size} labels of the batch are outside [0, {NUM_CLASSES}) (the model has "
            f"{NUM_CLASSES} classes); the parameters were not updated with it; training "
            f"stopped; {last_ckpt}. Check the data's labels (1-based? subtract 1)")


def _nonfinite_message(metrics: dict, step: int, epoch: int, batch: int, params: Any,
                       last_ckpt: str) -> str:
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


def _nonfinite_origin(snapshot, bad_index, step_fn, train_step, host, xs, ys, key) -> str:
    """Where the bad step's NaN started: replays the steps since ``snapshot`` (the same compiled
    step, so the same numbers) to the bad step's parameters, then runs
    :func:`funcbp.find_nonfinite` on its batch eagerly. Only runs after a bad step."""
    try:
        start, (params, opt_state) = snapshot
        for j in range(start, bad_index):
            params, opt_state, _ = step_fn(params, opt_state, (xs[j], ys[j]),
                                           jax.random.fold_in(key, j))
        report = train_step.locate_nonfinite(host(params), (np.asarray(xs[bad_index]),
                                                            np.asarray(ys[bad_index])),
                                             jax.random.fold_in(key, bad_index))
    except Exception as err:  # the diagnosis must never hide the error it explains
        return f"\n(could not locate where it started: {type(err).__name__}: {err})"
    if report.first is None:
        return "\n(re-running the step eagerly gave finite values; no origin found)"
    return f"\nwhere it started: {report.first}"


def fit(
    config: TrainConfig | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    callbacks: Iterable[Callable[[dict], None]] = (),
    quiet: bool = False,
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> FitResult:
    """Train ``config.model`` on ``config.data``; write the run directory; evaluate on test.

    Args:
      config: the run's :class:`TrainConfig` (defaults: the digits recipe). Keyword
        ``overrides`` replace single fields: ``fit(epochs=2, model="mlp")``.
      run_dir: where to write; default :func:`default_run_dir` (``runs/<time>-<data>-<model>``).
      callbacks: called with each epoch's record after its checkpoint is written; an
        exception from a callback stops training there (the checkpoint stays valid).
      quiet: no progress bar and no per-epoch lines (the test accuracy is still logged).
      log: where lines go (default ``print``); the last line is ``test accuracy: 0.9861``.

    Returns:
      A :class:`FitResult`.

    Raises:
      NonFiniteError: a loss or gradient became NaN/inf; the message names the step, the
        parameter leaves with non-finite gradients, and the last good checkpoint.

    Examples:
      >>> from funcbp.train import fit
      >>> result = fit(epochs=1, model="mlp", quiet=True, run_dir="/tmp/funcbp-doc-run",
      ...              log=lambda line: None)  # doctest: +SKIP
      >>> result.test["test_accuracy"] > 0.8  # doctest: +SKIP
      True
    """
    config = config or TrainConfig()
    if overrides:
        config = dataclasses.replace(config, **overrides)
    if run_dir is None:
        run_dir = _claim_default_run_dir(config)
    run_dir = Path(run_dir)
    with _locked(run_dir, log):
        latest = run_dir / "checkpoints" / "latest.ckpt"
        if newest_checkpoint(latest) is not None:
            raise FileExistsError(
                f"{run_dir} already holds a run; continue it with resume({str(run_dir)!r}) "
                "(funcbp train --resume) or choose another run directory"
            )
        return _run(config, run_dir, resume_from=None, callbacks=callbacks, quiet=quiet,
                    log=log)


def resume(
    run_dir: str | os.PathLike,
    *,
    allow_config_change: Iterable[str] = (),
    callbacks: Iterable[Callable[[dict], None]] = (),
    quiet: bool = False,
    log: Callable[[str], None] = print,
    **changes: Any,
) -> FitResult:
    """Continue the run in ``run_dir`` from its latest checkpoint, with its saved config.

    The result is the same, bit for bit on one machine, as a run that was never interrupted.
    The config saved *inside* the checkpoint is the truth: a ``config.json`` edited since (or
    a ``changes`` keyword) that differs from it is refused, naming the fields, unless the
    field is one of :data:`funcbp.train.RESUME_SAFE_FIELDS` and is named in
    ``allow_config_change``. A missing ``config.json`` or ``metrics.jsonl`` is rebuilt from
    the checkpoint, a partial last metrics line (a crash while writing it) is dropped; each
    with a warning line through ``log``.

    Args:
      run_dir: the run directory.
      allow_config_change: fields allowed to differ from the checkpoint's config, e.g.
        ``("epochs",)`` to train longer.
      changes: new values for such fields, e.g. ``epochs=40``.

    Raises:
      CheckpointError: no usable checkpoint (missing, truncated, corrupt, or saved for another
        model); the message names the file.
      funcbp.train.ConfigChangeError: the config differs in fields not allowed to change.
      funcbp.train.rundir.RunLockedError: another run is writing to ``run_dir``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists() and not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"{run_dir / 'config.json'}: no config.json and no "
                                f"checkpoints, so {run_dir} is not a run directory written by "
                                "funcbp train")
    with _locked(run_dir, log):
        config, ckpt = rundir.resume_config(run_dir, allow_config_change, changes,
                                             warn=_warn(log), write=jax.process_index() == 0)
        return _run(config, run_dir, resume_from=ckpt, callbacks=callbacks, quiet=quiet,
                    log=log)


def _warn(log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda text: log(f"warning: {text}")


@contextlib.contextmanager
def _locked(run_dir: Path, log: Callable[[str], None]):
    """Hold ``run_dir``'s lock (process 0 of a multi-process run only: it alone writes)."""
    if jax.process_index() != 0:
        yield None
        return
    lock = rundir.acquire_lock(run_dir, warn=_warn(log))
    try:
        yield lock
    finally:
        lock.release()


def _run(config, run_dir, *, resume_from, callbacks, quiet, log) -> FitResult:
    t_start = time.perf_counter()
    say = (lambda line: None) if quiet else log
    warn = _warn(log)
    writer = jax.process_index() == 0  # only process 0 writes the run directory

    def write(fn, *args, **kwargs):
        return fn(*args, **kwargs) if writer else None

    ckpt_dir = run_dir / "checkpoints"
    latest, best_path = ckpt_dir / "latest.ckpt", ckpt_dir / "best.ckpt"
    metrics_path = run_dir / "metrics.jsonl"
    if writer:
        for tmp in remove_temporary_files(ckpt_dir) + remove_temporary_files(run_dir):
            warn(f"removed {tmp}, a temporary file left by an interrupted save")
    splits = load_data(config)  # refuses labels outside [0, 10) before any training
    (x_train, y_train), val, (x_test, y_test) = splits
    model = get_model(config.model, num_classes=NUM_CLASSES)
    if nn.is_stateful(model):  # pragma: no cover - no default model is stateful
        raise ValueError(f"model {config.model!r} carries state (BatchNorm); fit needs a "
                         "stateless model")
    steps_per_epoch = len(x_train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} is larger than the training split "
                         f"({len(x_train)} examples)")
    tx, schedule = make_optimizer(config, steps_per_epoch)
    augment_fn = None
    if config.augment and config.max_shift > 0:
        shift = config.max_shift
        augment_fn = lambda key, x: fdata.random_shift(key, x, shift)
    loss_fn = losses.softmax_cross_entropy_with_integer_labels
    # Data parallelism: a mesh over `devices` (or every device of a multi-process run).
    mesh = None
    if config.devices is not None or jax.process_count() > 1:
        mesh = parallel.make_mesh(config.devices)
        parallel.check_global_batch_size(config.batch_size, mesh)

    host = parallel.to_host if mesh is not None else (lambda tree: tree)
    train_step = make_train_step(model.apply, loss_fn, tx, GRAD_FNS[config.grad],
                                 augment_fn=augment_fn, l1=config.l1, l2=config.l2,
                                 jit=mesh is None)
    eval_step = make_eval_step(model.apply, loss_fn)
    flow_fn = jax.jit(lambda p, x, y: gradient_flow(lambda p, x, y: loss_fn(model.apply(p, x), y),
                                                    p, x, y))
    stats_fn = jax.jit(lambda p, x: activation_stats(lambda p, x: model.apply(p, x), p, x))
    log_quantities = tuple(q.strip() for q in config.log_quantities.split(",") if q.strip())
    quantities_fn = jax.jit(lambda p, x, y: quantities(
        lambda p, x: model.apply(p, x), p, x, y, loss="softmax_cross_entropy",
        which=("grad", *log_quantities)))
    epoch_batches = jax.jit(fdata.batch_epoch, static_argnums=3)

    root_key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(root_key)
    # One compilation each instead of one per eager op: most of a small run's start-up time.
    in_shape = (1, *x_train.shape[1:])
    params = jax.jit(lambda key: model.init(key, in_shape)[1])(init_key)
    opt_state = jax.jit(tx.init)(params)
    if mesh is not None:
        sharded_step = parallel.data_parallel(
            lambda p, s, b, kd: train_step(p, s, b, jax.random.wrap_key_data(kd)),
            mesh, params, opt_state, shard_params=config.shard_params)

        def place(tree):
            return parallel.replicate(mesh, parallel.to_host(tree), config.shard_params)

        def step_fn(p, s, batch, key):
            return sharded_step(p, s, parallel.shard_batch(mesh, batch),
                                parallel.replicate(mesh, jax.random.key_data(key)))
    else:
        step_fn, place = train_step, (lambda tree: tree)

    state = {"best_val_loss": None, "best_epoch": None, "bad_epochs": 0, "stopped_early": False}
    start_epoch, step = 0, 0
    history: list[dict] = []
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, like={"params": params, "opt_state": opt_state})
        params, opt_state = ckpt.tree["params"], ckpt.tree["opt_state"]
        start_epoch, step = ckpt.epoch, ckpt.step
        root_key = ckpt.key if ckpt.key is not None else root_key
        init_key, train_key = jax.random.split(root_key)
        state.update(ckpt.metadata.get("trainer", {}))
        history = rundir.resumed_history(metrics_path, ckpt, warn) if writer else []
        write(rundir.write_jsonl, metrics_path, history)
        say(f"resuming {run_dir} after epoch {start_epoch} (step {step})")
    else:
        write(rundir.write_json, run_dir / "config.json", config.to_json())
        write(rundir.write_jsonl, metrics_path, [])
    params, opt_state = place((params, opt_state))
    log(f"run directory: {run_dir}")
    say(f"{config.data}: {len(x_train)} train, {len(val[0]) if val else 0} validation, "
        f"{len(x_test)} test; model {config.model}, {config.optimizer} lr {config.lr} "
        f"({config.schedule}), grad {config.grad}, {jax.default_backend()}")

    x_train_d, y_train_d = jnp.asarray(x_train), jnp.asarray(y_train)
    val_d = (jnp.asarray(val[0]), jnp.asarray(val[1])) if val is not None else None
    best_params = None
    if state["stopped_early"] and best_path.exists():
        best_params = load_checkpoint(best_path, like={"params": params}).tree["params"]
    sync_seconds = 0.5  # read metrics back (bar, NaN check) at most this often, and at epoch end
    compiled = False

    for epoch in range(start_epoch, config.epochs):
        if state["stopped_early"]:
            break
        t_epoch = time.perf_counter()
        epoch_key = jax.random.fold_in(train_key, epoch)
        perm_key, steps_key = jax.random.split(epoch_key)
        xs, ys = epoch_batches(perm_key, x_train_d, y_train_d, config.batch_size)
        step_metrics: list[dict] = []
        bad_index = None
        compile_time = None
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", quiet)
        checked, last_sync = 0, time.perf_counter()
        for i in range(steps_per_epoch):
            if i == checked:  # a copy to replay from if a NaN shows up before the next check
                snapshot = (i, jax.tree.map(jnp.copy, (params, opt_state)))
            if not compiled:
                # The first call traces and compiles the step (seconds to a minute on a CPU):
                # say so, rather than showing a bar stuck at 0.
                bar.set_postfix_str("compiling the training step...", refresh=True)
                t_compile = time.perf_counter()
            params, opt_state, m = step_fn(params, opt_state, (xs[i], ys[i]),
                                           jax.random.fold_in(steps_key, i))
            if not compiled:
                compiled, compile_time = True, time.perf_counter() - t_compile
                bar.set_postfix_str(f"compiled in {compile_time:.1f} s", refresh=True)
            step_metrics.append(m)
            if i + 1 == steps_per_epoch or time.perf_counter() - last_sync > sync_seconds:
                new = step_metrics[checked:]
                ok = np.asarray(jnp.stack([s["finite"] & (s["bad_labels"] == 0) for s in new]))
                if not ok.all():
                    bad_index = checked + int(np.argmin(ok))
                    break
                checked, last_sync = i + 1, time.perf_counter()
                elapsed = time.perf_counter() - t_epoch
                bar.set_postfix(loss=f"{float(m['loss']):.4f}", acc=f"{float(m['accuracy']):.3f}",
                                ex_s=f"{(i + 1) * config.batch_size / elapsed:.0f}")
                bar.update(i + 1 - bar.n)
        bar.close()
        if bad_index is not None:
            done = newest_checkpoint(latest)
            if done is not None:
                saved = read_header(done)
                where = (f"the last good checkpoint is {done} (epoch {saved['epoch']}, "
                         f"step {saved['step']})")
            else:
                where = "no checkpoint was written yet"
            bad = step_metrics[bad_index]
            if int(bad["bad_labels"]):
                kind, message = "labels", _labels_message(
                    bad, step + bad_index + 1, epoch + 1, bad_index + 1, config.batch_size, where)
            else:
                kind, message = "nonfinite", _nonfinite_message(
                    bad, step + bad_index + 1, epoch + 1, bad_index + 1, host(params), where)
                message += _nonfinite_origin(snapshot, bad_index, step_fn, train_step, host,
                                             xs, ys, steps_key)
            write(rundir.append_jsonl, metrics_path, {"type": kind, "epoch": epoch + 1,
                                                      "step": step + bad_index + 1,
                                                      "message": message})
            if history:
                write(plot_history, history, run_dir)
            raise (LabelRangeError if kind == "labels" else NonFiniteError)(message)
        step += steps_per_epoch
        train = {k: np.asarray(jnp.mean(jnp.stack([s[k] for s in step_metrics])))
                 for k in ("loss", "accuracy", "grad_norm")}
        jax.block_until_ready(params)
        train_time = time.perf_counter() - t_epoch
        record = {
            "type": "epoch",
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(train["loss"]),
            "train_accuracy": float(train["accuracy"]),
            "grad_norm": float(train["grad_norm"]),
            "lr": float(schedule(step - 1)),
            "train_time_s": round(train_time, 3),
            "examples_per_s": round(steps_per_epoch * config.batch_size / train_time, 1),
        }
        if compile_time is not None:
            record["compile_time_s"] = round(compile_time, 3)
        if val_d is not None:
            v = evaluate(eval_step, host(params), *val_d, config.eval_batch_size)
            record.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
            if state["best_val_loss"] is None or v["loss"] < state["best_val_loss"]:
                state.update(best_val_loss=v["loss"], best_epoch=epoch + 1, bad_epochs=0)
                best_params = jax.device_get(host(params))
                write(save_checkpoint, best_path, {"params": best_params}, step=step,
                      epoch=epoch + 1, metadata={"val_loss": v["loss"]})
            else:
                state["bad_epochs"] += 1
                if config.patience and state["bad_epochs"] >= config.patience:
                    state["stopped_early"] = True
        if log_quantities:
            record["quantities"] = summarize_quantities(
                quantities_fn(host(params), x_train_d[:256], y_train_d[:256]))
        if config.activation_stats:
            record["activation_stats"] = stats_fn(host(params), x_train_d[:256]).to_dict()
        if config.grad_flow:
            flow = flow_fn(host(params), x_train_d[:256], y_train_d[:256])
            record["grad_flow"] = {"layers": flow.to_dict()["layers"],
                                   "vanishing": flow.vanishing_layers,
                                   "exploding": flow.exploding_layers}
        record["epoch_time_s"] = round(time.perf_counter() - t_epoch, 3)
        record["elapsed_s"] = round(time.perf_counter() - t_start, 3)
        history.append(record)
        write(rundir.append_jsonl, metrics_path, record)
        # The checkpoint carries the config and the history, so that resuming needs nothing
        # else from the run directory (config.json and metrics.jsonl are copies).
        write(save_checkpoint, latest, host({"params": params, "opt_state": opt_state}),
              step=step, epoch=epoch + 1, key=root_key, keep_previous=True,
              metadata={"trainer": dict(state), "config": config.to_json(),
                        "history": history})
        val_text = (f"  val loss {record['val_loss']:.4f}  val acc {record['val_accuracy']:.4f}"
                    if "val_loss" in record else "")
        compile_text = (f" (incl. {compile_time:.1f} s compiling)"
                        if compile_time is not None else "")
        say(f"epoch {epoch + 1:3d}/{config.epochs}  loss {record['train_loss']:.4f}  "
            f"acc {record['train_accuracy']:.4f}{val_text}  lr {record['lr']:.4g}  "
            f"{record['examples_per_s']:.0f} ex/s  {record['epoch_time_s']:.1f} s"
            f"{compile_text}")
        if state["stopped_early"]:
            say(f"early stopping: no validation improvement for {config.patience} epochs "
                f"(best epoch {state['best_epoch']})")
        for callback in callbacks:
            callback(record)

    if history:
        write(plot_history, history, run_dir)
        flows = [r["grad_flow"]["layers"] for r in history if "grad_flow" in r]
        if flows:
            path = run_dir / "gradient_flow.png"
            write(_save_whole, path, lambda tmp: plot_gradient_flow(flows, str(tmp)))
        acts = [r["activation_stats"] for r in history if "activation_stats" in r]
        if acts:
            write(_save_whole, run_dir / "activation_stats.png",
                  lambda tmp: plot_activation_stats(acts, str(tmp)))
        logged = [dict(r["quantities"], step=r["epoch"]) for r in history if "quantities" in r]
        if logged:
            write(_save_whole, run_dir / "quantities.png",
                  lambda tmp: plot_quantities(logged, str(tmp), title="per epoch"))
    used = "best" if state["stopped_early"] and best_params is not None else "final"
    test_params = best_params if used == "best" else params
    t = evaluate(eval_step, host(test_params), jnp.asarray(x_test), jnp.asarray(y_test),
                 config.eval_batch_size)
    test = {
        "type": "test",
        "test_loss": t["loss"],
        "test_accuracy": t["accuracy"],
        "params_from": used if used == "final" else f"best (epoch {state['best_epoch']})",
        "epochs_run": history[-1]["epoch"] if history else 0,
        "elapsed_s": round(time.perf_counter() - t_start, 3),
    }
    write(rundir.append_jsonl, metrics_path, test)
    write(rundir.write_json, run_dir / "summary.json", {**test, "config": config.to_json()})
    say(f"test loss {t['loss']:.4f} ({test['params_from']} parameters); "
        f"{test['elapsed_s']:.1f} s in all; run directory {run_dir}")
    log(f"test accuracy: {t['accuracy']:.4f}")
    return FitResult(test_params, opt_state, history, test, run_dir)
