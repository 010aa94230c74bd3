"""The training loop behind ``fit``: epochs of steps, the checks, the saves, the logs.

:func:`run` trains a :class:`Task` (a model, a loss, the data splits) as a
:class:`~funcbp.train.TrainConfig` says, in a run directory it already holds the lock of.
Every random draw comes from ``jax.random.key(seed)``: the initial parameters from one half,
epoch ``e``'s order, augmentation and dropout from ``fold_in(train_key, e)``, step ``i`` of it
from ``fold_in(steps_key, i)``; so a run resumed from a checkpoint, at an epoch's end or inside
one (``save_every_steps``), replays the same batches with the same keys and ends bit for bit
where the uninterrupted run ends.

Between the host and the device: the step's metrics stay on the device until a read-back
(every ``SYNC_SECONDS``, before a save, and at the end of an epoch), so the host queues steps
ahead of the device; the read-back checks them (NaN guard, labels) and sums them in float64,
in step order, so that a resumed epoch's means are those of the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcbp import data as fdata
from funcbp.losses import LabelRangeError
from funcbp.train import parallel, rundir
from funcbp.train.checkpoint import load_checkpoint, read_header
from funcbp.train.checkpoint import remove_temporary_files as _remove_tmp
from funcbp.train.config import GRAD_FNS, TrainConfig, make_optimizer
from funcbp.train.configfile import dump_toml
from funcbp.train.manager import CheckpointManager
from funcbp.train.report import (
    labels_message,
    nonfinite_message,
    nonfinite_origin,
    plot_history,
)
from funcbp.train.step import make_eval_step, make_train_step
from funcbp.train.stepping import SUMMED, advance_fn, pack, read_back, show
from funcbp.train.summary import diagnostics, evaluate_split, finish, say_epoch
from funcbp.train.userdata import ArrayData, IterableData, UserData, as_batch
from funcbp.train.writers import MultiWriter, make_writers

__all__ = ["FitResult", "NonFiniteError", "Task", "run"]

SYNC_SECONDS = 0.5  # read metrics back (bar, NaN check) at most this often, and at epoch end


class NonFiniteError(FloatingPointError):
    """Training hit a NaN or infinite loss or gradient; the message names the step and leaves."""


class FitResult(NamedTuple):
    """What :func:`funcbp.train.fit` returns.

    Attributes:
      params: the parameters evaluated on the test split (the final ones, or the best by
        ``best_metric`` when early stopping ended the run).
      opt_state: the final optimiser state.
      history: one dict per epoch (the epoch lines of ``metrics.jsonl``).
      test: ``{"test_loss", "test_accuracy", ...}`` (empty without test data).
      run_dir: the run directory.
    """

    params: Any
    opt_state: Any
    history: list[dict]
    test: dict
    run_dir: Path


class Task(NamedTuple):
    """What to train: the model, the loss, the data.

    Attributes:
      model: a stateless :class:`funcbp.nn.Layer` (``init(key, in_shape) -> (shape,
        params)``, ``apply(params, x, *, key=None, train=False)``).
      loss_fn: ``loss_fn(outputs, targets) -> scalar``.
      data: the splits (:class:`funcbp.train.userdata.UserData`).
      num_classes: the model's number of classes (label checks), or None.
      augment_fn: ``augment_fn(key, x) -> x`` on training batches, or None.
      title: what the run trains, for its first lines (``digits: 1258 train, ...``).
    """

    model: Any
    loss_fn: Callable
    data: UserData
    num_classes: int | None = None
    augment_fn: Callable | None = None
    title: str = ""


def _progress(total: int | None, desc: str, quiet: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                initial=initial, disable=quiet or not sys.stderr.isatty())


def _warn(log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda text: log(f"warning: {text}")


def _device_batch(item: Any) -> tuple[jax.Array, jax.Array]:
    x, y = as_batch(item)
    return jnp.asarray(x), jnp.asarray(y)


def _new_sums() -> dict:
    return {**{k: 0.0 for k in SUMMED}, "count": 0, "lr": None}


def run(config: TrainConfig, task: Task, run_dir: Path, *, resume_from: Path | None,
        callbacks: Iterable[Callable[[dict], None]] = (), quiet: bool = False,
        log: Callable[[str], None] = print) -> FitResult:
    """Train ``task`` as ``config`` says, writing ``run_dir`` (whose lock the caller holds).

    Args:
      resume_from: the checkpoint to continue from (its config is ``config``), or None.
      callbacks: called with each epoch's record after its checkpoint is saved.

    Raises:
      NonFiniteError, funcbp.losses.LabelRangeError: a bad step (named).
      CheckpointWriteError, RunDirError: a file could not be written (named).
    """
    t_start = time.perf_counter()
    say = (lambda line: None) if quiet else log
    warn = _warn(log)
    writer = jax.process_index() == 0  # only process 0 writes the run directory

    def write(fn, *args, **kwargs):
        return fn(*args, **kwargs) if writer else None

    ckpt_dir = run_dir / "checkpoints"
    manager = CheckpointManager(
        ckpt_dir, save_every_steps=config.save_every_steps,
        save_every_epochs=config.save_every_epochs, keep_last=config.keep_last,
        best_metric=config.best_metric, best_mode=config.best_mode,
        async_save=config.async_save)
    metrics_path = run_dir / "metrics.jsonl"
    if writer:
        for tmp in _remove_tmp(ckpt_dir) + _remove_tmp(run_dir):
            warn(f"removed {tmp}, a temporary file left by an interrupted save")
    data, model, loss_fn = task.data, task.model, task.loss_fn
    train = data.train
    arrays = isinstance(train, ArrayData)
    if arrays:
        if config.steps_per_epoch is not None:
            raise ValueError(f"steps_per_epoch={config.steps_per_epoch} applies to data given "
                             "as an iterable; with arrays an epoch is every full batch of the "
                             "training split: drop steps_per_epoch")
        steps_per_epoch = len(train.x) // config.batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"batch_size {config.batch_size} is larger than the training "
                             f"split ({len(train.x)} examples)")
    else:
        steps_per_epoch = train.num_batches()
        if steps_per_epoch is None and config.schedule != "constant":
            raise ValueError(f"schedule {config.schedule!r} decays over the run's steps, but "
                             "the training data has no length: set steps_per_epoch, give data "
                             "with len(), or use schedule='constant'")
    tx, schedule = make_optimizer(config, steps_per_epoch or 1)
    # Data parallelism: a mesh over `devices` (or every device of a multi-process run).
    mesh = None
    if config.devices is not None or jax.process_count() > 1:
        mesh = parallel.make_mesh(config.devices)
        parallel.check_global_batch_size(config.batch_size, mesh)

    host = parallel.to_host if mesh is not None else (lambda tree: tree)
    train_step = make_train_step(model.apply, loss_fn, tx, GRAD_FNS[config.grad],
                                 augment_fn=task.augment_fn, l1=config.l1, l2=config.l2,
                                 jit=False, precision=config.precision,
                                 layer_norms=config.log_every > 0)
    eval_step = make_eval_step(model.apply, loss_fn, precision=config.precision)
    root_key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(root_key)
    # One compilation each instead of one per eager op: most of a small run's start-up time.
    in_shape = (1, *data.example_shape)
    params = jax.jit(lambda key: model.init(key, in_shape)[1])(init_key)
    opt_state = jax.jit(train_step.init_opt_state)(params)
    if mesh is not None:
        sharded_step = parallel.data_parallel(
            lambda p, s, b, kd: train_step(p, s, b, jax.random.wrap_key_data(kd)),
            mesh, params, opt_state, shard_params=config.shard_params)

        def place(tree):
            return parallel.replicate(mesh, parallel.to_host(tree), config.shard_params)

        def step_fn(p, s, batch, key):
            return sharded_step(p, s, parallel.shard_batch(mesh, batch),
                                parallel.replicate(mesh, jax.random.key_data(key)))

        def advance(p, s, key, i, batch=None, xs=None, ys=None):
            if batch is None:
                batch = (xs[i], ys[i])
            p, s, m = step_fn(p, s, batch, jax.random.fold_in(key, i))
            return p, s, pack(m), m
    else:
        place = lambda tree: tree
        step_fn = jax.jit(train_step, donate_argnums=(0, 1))  # replays a NaN's steps only
        advance = advance_fn(train_step)

    state = {"best": None, "best_epoch": None, "bad_epochs": 0, "stopped_early": False}
    start_epoch, step, start_batch, partial, data_state = 0, 0, 0, None, {}
    history: list[dict] = []
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, like={"params": params, "opt_state": opt_state})
        params, opt_state = ckpt.tree["params"], ckpt.tree["opt_state"]
        start_epoch, step = ckpt.epoch, ckpt.step
        root_key = ckpt.key if ckpt.key is not None else root_key
        init_key, train_key = jax.random.split(root_key)
        saved_state = dict(ckpt.metadata.get("trainer", {}))
        if "best_val_loss" in saved_state:  # written before best_metric existed
            saved_state["best"] = saved_state.pop("best_val_loss")
        state.update(saved_state)
        _check_same_data(ckpt.metadata.get("data"), data.fingerprint, resume_from)
        data_state = ckpt.data_state if isinstance(ckpt.data_state, dict) else {}
        if data_state.get("epoch") == start_epoch:
            start_batch = int(data_state.get("batch", 0))
        partial = ckpt.metadata.get("partial") if start_batch else None
        history = rundir.resumed_history(metrics_path, ckpt, warn) if writer else []
        write(rundir.write_jsonl, metrics_path, history)
        inside = f", batch {start_batch} of epoch {start_epoch + 1}" if start_batch else ""
        log(f"resuming {run_dir} after epoch {start_epoch} (step {step}{inside})")
    else:
        write(rundir.write_json, run_dir / "config.json", config.to_json())
        write(rundir._write_text_atomic, run_dir / "config.toml", dump_toml(config.to_json()))
        write(rundir.write_jsonl, metrics_path, [])
    writers = (make_writers(config.writers, run_dir,
                            resume_step=step if resume_from is not None else None)
               if writer else MultiWriter([]))
    params, opt_state = place((params, opt_state))
    log(f"run directory: {run_dir}")
    precision = "" if config.precision == "f32" else f"{config.precision}, "
    say(f"{task.title}; model {config.model}, {config.optimizer} lr {config.lr} "
        f"({config.schedule}), grad {config.grad}, {precision}{jax.default_backend()}")

    if arrays:
        x_train_d, y_train_d = jnp.asarray(train.x), jnp.asarray(train.y)
        probe = (x_train_d[:256], y_train_d[:256])
    else:
        probe = None
    run_diagnostics = diagnostics(config, model, loss_fn)
    best_params = None
    if state["stopped_early"] and manager.best.exists():
        best_params = load_checkpoint(manager.best, like={"params": params}).tree["params"]
    compiled = False
    epoch_step = step - start_batch  # the global step at the start of the current epoch

    def checkpoint_metadata(extra=None):
        meta = {"trainer": dict(state), "config": config.to_json(), "history": history}
        if data.fingerprint is not None:
            meta["data"] = data.fingerprint
        return {**meta, **(extra or {})}

    try:
        for epoch in range(start_epoch, config.epochs):
            if state["stopped_early"]:
                break
            t_epoch = time.perf_counter()
            epoch_key = jax.random.fold_in(train_key, epoch)
            perm_key, steps_key = jax.random.split(epoch_key)
            first = start_batch if epoch == start_epoch else 0
            epoch_step = step - first
            if arrays:
                xs, ys = _epoch_batches(perm_key, x_train_d, y_train_d, config.batch_size)
                batch_iter = (None for _ in range(first, steps_per_epoch))  # indexed in the step
            else:
                resumed_here = epoch == start_epoch and first
                it = train.epoch(epoch, first, data_state.get("iterator") if resumed_here
                                 else None)
                batch_iter = (_device_batch(item) for item in it)
            sums = dict(partial) if (epoch == start_epoch and partial) else _new_sums()
            window: list = []  # batches since the last check, to replay a NaN's origin
            pending: list = []  # (batch index, packed metrics, metrics) not yet read back
            if arrays:
                batch_of = lambda j, xs=xs, ys=ys: (xs[j], ys[j])
            else:
                # Read when a bad step is found: the window and snapshot of that moment.
                batch_of = lambda j: window[j - snapshot[0]]  # noqa: B023
            bad_index, compile_time = None, None
            bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", quiet,
                            first)
            last_sync, i = time.perf_counter(), first
            last_batch = None
            for batch in batch_iter:
                if not window:  # a copy to replay from if a NaN shows up before the next check
                    snapshot = (i, jax.tree.map(jnp.copy, (params, opt_state)))
                window.append(batch)
                if not compiled:
                    # The first call traces and compiles the step (seconds to a minute on a
                    # CPU): say so, rather than showing a bar stuck at 0.
                    bar.set_postfix_str("compiling the training step...", refresh=True)
                    t_compile = time.perf_counter()
                if arrays:  # the batch is cut from the epoch's arrays inside the compiled step
                    params, opt_state, packed, m = advance(params, opt_state, steps_key,
                                                           np.int32(i), xs=xs, ys=ys)
                else:
                    params, opt_state, packed, m = advance(params, opt_state, steps_key,
                                                           np.int32(i), batch=batch)
                if not compiled:
                    compiled, compile_time = True, time.perf_counter() - t_compile
                    bar.set_postfix_str(f"compiled in {compile_time:.1f} s", refresh=True)
                pending.append((i, packed, m))
                i += 1
                last_batch = batch
                save_now = manager.should_save_step(epoch_step + i) and i != steps_per_epoch
                if (i == steps_per_epoch or save_now
                        or time.perf_counter() - last_sync > SYNC_SECONDS):
                    bad_index = read_back(pending, sums, writers, config, epoch_step)
                    if bad_index is not None:
                        break
                    pending, last_sync = [], time.perf_counter()
                    window.clear()
                    show(bar, sums, i, config.batch_size, t_epoch, first)
                    if save_now:
                        step = epoch_step + i
                        manager.save(host({"params": params, "opt_state": opt_state}),
                                     step=step, epoch=epoch, key=root_key,
                                     metadata=checkpoint_metadata({"partial": sums}),
                                     data_state={"epoch": epoch, "batch": i,
                                                 "iterator": _iter_state(train)})
            if bad_index is None and pending:
                bad_index = read_back(pending, sums, writers, config, epoch_step)
            bar.close()
            if bad_index is not None:
                manager.wait()
                _stop(bad_index, pending, snapshot, batch_of, manager, epoch, epoch_step,
                      config, task, step_fn, train_step, host, params, steps_key, history,
                      run_dir, write, metrics_path)
            if sums["count"] == 0:
                raise ValueError(f"epoch {epoch + 1}: the training data gave no batch")
            step = epoch_step + i
            jax.block_until_ready(params)
            train_time = time.perf_counter() - t_epoch
            n = sums["count"]
            steps_run = i - first
            record = {"type": "epoch", "epoch": epoch + 1, "step": step,
                      "train_loss": sums["loss"] / n}
            if "accuracy_seen" in sums:
                record["train_accuracy"] = sums["accuracy"] / n
            record["grad_norm"] = sums["grad_norm"] / n
            record["lr"] = (sums["lr"] if sums["lr"] is not None
                            else float(schedule(max(step - 1, 0))))
            if config.precision == "f16":
                record.update(overflow_steps=int(sums["overflow"]),
                              loss_scale=sums.get("loss_scale"))
            record["train_time_s"] = round(train_time, 3)
            record["examples_per_s"] = round(steps_run * config.batch_size / train_time, 1)
            if compile_time is not None:
                record["compile_time_s"] = round(compile_time, 3)
            if data.val is not None:
                v = evaluate_split(eval_step, host(params), data.val, config.eval_batch_size)
                record["val_loss"] = v["loss"]
                if "accuracy" in v:
                    record["val_accuracy"] = v["accuracy"]
            watched = record.get(config.best_metric)
            if watched is not None:
                if manager.is_better(watched, state["best"]):
                    state.update(best=watched, best_epoch=epoch + 1, bad_epochs=0)
                    best_params = jax.device_get(host(params))
                    write(manager.save_best, {"params": best_params}, step=step,
                          epoch=epoch + 1, value=watched)
                else:
                    state["bad_epochs"] += 1
                    if config.patience and state["bad_epochs"] >= config.patience:
                        state["stopped_early"] = True
            probe_batch = probe if probe is not None else last_batch
            run_diagnostics(record, host(params), probe_batch, writers, step, epoch)
            record["epoch_time_s"] = round(time.perf_counter() - t_epoch, 3)
            record["elapsed_s"] = round(time.perf_counter() - t_start, 3)
            history.append(record)
            write(rundir.append_jsonl, metrics_path, record)
            write(writers.epoch, record, history)
            last = epoch + 1 == config.epochs or state["stopped_early"]
            if writer and manager.should_save_epoch(epoch + 1, last=last):
                # The checkpoint carries the config and the history, so that resuming needs
                # nothing else from the run directory (config.json and metrics.jsonl are copies).
                manager.save(host({"params": params, "opt_state": opt_state}), step=step,
                             epoch=epoch + 1, key=root_key, metadata=checkpoint_metadata(),
                             data_state={"epoch": epoch + 1, "batch": 0,
                                         "iterator": _iter_state(train, continuing=True)})
            say_epoch(say, record, config, compile_time, state)
            for callback in callbacks:
                callback(record)
        manager.wait()
    except BaseException:
        with contextlib.suppress(Exception):  # the error in hand says more than a save's
            manager.wait()
        with contextlib.suppress(Exception):
            writers.close()
        raise
    writers.close()
    test_params, test = finish(config, task, run_dir, history, state, best_params, params,
                               eval_step, host, write, metrics_path, t_start, say, log)
    return FitResult(test_params, opt_state, history, test, run_dir)


_epoch_batches = jax.jit(fdata.batch_epoch, static_argnums=3)


def _iter_state(train: Any, continuing: bool = False) -> Any:
    """The data iterator's state for the checkpoint: within an epoch always (grain), at an
    epoch's end only for a run-long iterator (``steps_per_epoch``)."""
    if not isinstance(train, IterableData):
        return None
    if continuing and train.steps_per_epoch is None:
        return None  # the next epoch starts a fresh iterator
    return train.state()


def _check_same_data(saved: dict | None, current: dict | None, ckpt: Path) -> None:
    if saved is None or current is None or saved == current:
        return
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    raise ValueError(f"the data differ from the data the run in {ckpt.parent.parent} was "
                     f"trained on, in the {' and '.join(differ)} split(s) ({differ[0]}: "
                     f"{saved.get(differ[0])} then, {current.get(differ[0])} now); resuming "
                     "would not continue that run. Pass the same data, or start a new run")


def _stop(bad_index, pending, snapshot, batch_of, manager, epoch, epoch_step, config, task,
          step_fn, train_step, host, params, steps_key, history, run_dir, write,
          metrics_path) -> None:
    """Raise the error of a bad step, after recording it."""
    done = manager.newest()
    if done is not None:
        saved = read_header(done)
        where = (f"the last good checkpoint is {done} (epoch {saved['epoch']}, "
                 f"step {saved['step']})")
    else:
        where = "no checkpoint was written yet"
    bad = jax.device_get({i: m for i, _, m in pending}[bad_index])
    batch = batch_of(bad_index)
    size = int(np.shape(batch[1])[0]) if np.ndim(batch[1]) else config.batch_size
    at = epoch_step + bad_index + 1
    if int(bad["bad_labels"]):
        kind, message = "labels", labels_message(bad, at, epoch + 1, bad_index + 1, size, where,
                                                 task.num_classes)
    else:
        kind, message = "nonfinite", nonfinite_message(bad, at, epoch + 1, bad_index + 1,
                                                       host(params), where)
        message += nonfinite_origin(snapshot, batch_of, bad_index, step_fn, train_step, host,
                                    steps_key)
    write(rundir.append_jsonl, metrics_path, {"type": kind, "epoch": epoch + 1, "step": at,
                                              "message": message})
    if history:
        write(plot_history, history, run_dir)
    raise (LabelRangeError if kind == "labels" else NonFiniteError)(message)
