"""``fit`` and ``resume``: train your model on your data, or a built-in one, in a run directory.

Two ways in, one loop (``loop.py``) behind them::

    fit(model, apply_fn, loss_fn, data, epochs=5, optimizer="adamw", lr=1e-3)  # yours
    fit(TrainConfig(...))                                # named data and model: funcbp train

Each writes a run directory::

    runs/<timestamp>-<data>-<model>/
      run.lock             while a run writes here: its pid and host (a second run refuses)
      config.json          the full TrainConfig (a copy: the checkpoint's is the truth)
      config.toml          the same, as a config file: funcbp train --config config.toml
      metrics.jsonl        one JSON object per epoch, then one for the test split
      metrics.csv          the same epochs as a table; steps.jsonl, steps.csv: logged steps
      tensorboard/         event files (writers="...,tensorboard")
      loss.png, accuracy.png
      summary.json         final test metrics, time, and where the parameters came from
      checkpoints/latest.ckpt, latest.previous.ckpt, best.ckpt, step_<n>.ckpt (keep_last)

The checkpoint holds the config, the metrics history and the position in the data, so a
resumed run (``resume(run_dir)``, or ``fit(..., resume=True)`` for a model and data passed from
Python) trusts neither an edited ``config.json`` nor a damaged ``metrics.jsonl``, and continues
bit for bit, at an epoch's end or inside one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax

from funcbp import data as fdata
from funcbp import losses
from funcbp.train import rundir
from funcbp.train.checkpoint import newest_checkpoint
from funcbp.train.config import (
    NUM_CLASSES,
    TrainConfig,
    load_data,
)
from funcbp.train.loop import FitResult, NonFiniteError, Task, _warn, run
from funcbp.train.models import as_layer, resolve_model
from funcbp.train.report import evaluate, plot_history, read_metrics
from funcbp.train.userdata import (
    PYTHON,
    ArrayData,
    UserData,
    check_user_labels,
    resolve_data,
)

__all__ = [
    "LOSSES",
    "FitResult",
    "NonFiniteError",
    "default_run_dir",
    "evaluate",
    "fit",
    "plot_history",
    "read_metrics",
    "resume",
]

#: Losses ``fit`` knows by name; any function ``loss(outputs, targets) -> scalar`` works too.
LOSSES: dict[str, Callable] = {
    "softmax_cross_entropy": losses.softmax_cross_entropy_with_integer_labels,
    "softmax_cross_entropy_one_hot": losses.softmax_cross_entropy,
    "sigmoid_binary_cross_entropy": losses.sigmoid_binary_cross_entropy,
    "mse": losses.mse,
    "hinge": losses.hinge,
}


def _slug(text: str | None) -> str:
    text = str(text)
    if text == PYTHON:
        return "python"
    if text.endswith(".npz"):
        text = Path(text).stem
    elif ":" in text:
        text = text.rpartition(":")[2]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def default_run_dir(config: TrainConfig, root: str | os.PathLike = "runs") -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<data>-<model>``, with a suffix if that already exists."""
    base = (Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(config.data)}-"
                         f"{_slug(config.model)}")
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


# ------------------------------------------------------------------------ building the task

def _builtin_task(config: TrainConfig) -> Task:
    """A built-in data set (digits, MNIST, Fashion-MNIST) and a named or imported model."""
    splits = load_data(config)  # refuses labels outside [0, 10) before any training
    (x_train, y_train), val, (x_test, y_test) = splits
    data = UserData(ArrayData(x_train, y_train), ArrayData(*val) if val is not None else None,
                    ArrayData(x_test, y_test), tuple(x_train.shape[1:]), NUM_CLASSES,
                    f"{len(x_train)} train, {len(val[0]) if val else 0} validation, "
                    f"{len(x_test)} test", None)
    model = resolve_model(config.model, NUM_CLASSES)
    return _task(config, model, losses.softmax_cross_entropy_with_integer_labels, data,
                 f"{config.data}: {data.summary}", check_labels=False)  # load_data did


def _loss(loss_fn: Any, data: UserData) -> Callable:
    if loss_fn is None:
        y = data.train.y if isinstance(data.train, ArrayData) else None
        integer = y is not None and jax.numpy.issubdtype(jax.numpy.asarray(y[:1]).dtype,
                                                         jax.numpy.integer)
        return LOSSES["softmax_cross_entropy" if integer or y is None else "mse"]
    if isinstance(loss_fn, str):
        try:
            return LOSSES[loss_fn]
        except KeyError:
            raise ValueError(f"unknown loss {loss_fn!r}; choose one of {', '.join(LOSSES)}, or "
                             "pass a function loss(outputs, targets) -> scalar") from None
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function or a name, got {type(loss_fn).__name__}")
    return loss_fn


def _task(config: TrainConfig, model: Any, loss_fn: Callable, data: UserData,
          title: str, check_labels: bool = True) -> Task:
    """Check the model against the data (outputs per class, labels in range) and add the
    augmentation the config asks for."""
    num_classes = _classes(model, data)
    if num_classes is not None and check_labels:
        check_user_labels(data, num_classes)
    augment_fn = None
    if config.augment and config.max_shift > 0:
        if len(data.example_shape) != 3:
            raise ValueError(f"augment shifts NHWC images, but one example has shape "
                             f"{data.example_shape}; set augment=False")
        shift = config.max_shift
        augment_fn = lambda key, x: fdata.random_shift(key, x, shift)
    return Task(model, loss_fn, data, num_classes, augment_fn, title)


def _classes(model: Any, data: UserData) -> int | None:
    """The model's number of classes when the targets are integer labels, checked against the
    labels' range; None for other targets."""
    y = data.train.y if isinstance(data.train, ArrayData) else None
    if y is None or jax.numpy.ndim(y) != 1 or not jax.numpy.issubdtype(
            jax.numpy.asarray(y[:1]).dtype, jax.numpy.integer):
        return data.num_classes
    seen = {}

    def init(key):  # abstractly: no parameter is made, only the output shape read
        seen["shape"], params = model.init(key, (1, *data.example_shape))
        return params

    jax.eval_shape(init, jax.random.key(0))
    shape = tuple(seen["shape"])
    classes = shape[-1] if len(shape) == 2 else None
    if classes is not None and data.num_classes is not None and data.num_classes > classes:
        raise ValueError(f"the model gives {classes} outputs per example, but the labels go up "
                         f"to {data.num_classes - 1}: give the model {data.num_classes} "
                         "outputs (or check the labels: 1-based? subtract 1)")
    return classes


def _spec_task(config: TrainConfig) -> Task:
    """``data``/``model`` given as strings: an npz file or a loader, a name or a factory."""
    if config.data == PYTHON or config.model == PYTHON:
        raise ValueError("this run's model or data were passed to fit from Python, so there is "
                         "nothing to load them from; continue it with fit(model, apply_fn, "
                         "loss_fn, data, run_dir=..., resume=True)")
    data = resolve_data(config.data, val_fraction=config.val_fraction,
                        split_seed=config.split_seed, steps_per_epoch=config.steps_per_epoch)
    model = resolve_model(config.model, data.num_classes)
    return _task(config, model, _loss(None, data), data, f"{config.data}: {data.summary}")


def task_of(config: TrainConfig) -> Task:
    """The task a config names: built-in data sets, or an npz file / loader."""
    if config.data in ("digits", "mnist", "fashion_mnist"):
        return _builtin_task(config)
    return _spec_task(config)


# ------------------------------------------------------------------------------- fit

def fit(
    model: Any = None,
    apply_fn: Callable | None = None,
    loss_fn: Any = None,
    data: Any = None,
    config: TrainConfig | None = None,
    *,
    validation_data: Any = None,
    test_data: Any = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    allow_config_change: Iterable[str] = (),
    callbacks: Iterable[Callable[[dict], None]] = (),
    quiet: bool = False,
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> FitResult:
    """Train a model on data; write the run directory; evaluate on the test split if any.

    ``fit(model, apply_fn, loss_fn, data, epochs=5, lr=1e-3, ...)`` trains yours;
    ``fit(TrainConfig(...))`` (or ``fit(epochs=2, model="mlp")``) a built-in data set and a
    named model, as ``funcbp train`` does.

    Args:
      model: a :class:`funcbp.nn.Layer`; an ``(init, apply)`` pair; an ``init`` function
        (``init(key, in_shape) -> (out_shape, params)``, or ``init(key) -> params``); the
        parameters themselves (any pytree of arrays); or a :class:`TrainConfig`.
      apply_fn: ``apply(params, x)`` (or ``apply(params, x, *, key, train)`` for dropout);
        None for a Layer or a pair.
      loss_fn: ``loss(outputs, targets) -> scalar``, or a name of :data:`LOSSES`; None:
        softmax cross-entropy for integer labels, mean squared error otherwise.
      data: ``(x, y)`` arrays, a mapping or ``.npz`` path of ``x_train, y_train`` (and
        ``x_val, y_val, x_test, y_test``), a loader ``"pkg.module:function"``, an iterable of
        ``(x, y)`` batches, a function ``epoch -> iterable``, or a grain data set (see
        :mod:`funcbp.train.userdata`).
      config: the run's :class:`TrainConfig` (defaults: the digits recipe's
        hyper-parameters); keyword ``overrides`` replace single fields: ``epochs=2``. Its
        ``data`` and ``model`` fields are set from what is passed, and ``augment`` (random
        shifts of NHWC images) only applies when given as a keyword.
      validation_data, test_data: ``(x, y)`` arrays or iterables (default: from ``data``;
        validation otherwise held out of the training arrays by ``val_fraction``).
      run_dir: where to write; default :func:`default_run_dir` (``runs/<time>-<data>-<model>``).
      resume: continue the run in ``run_dir`` if it holds one (the same model and data must be
        passed again: the data are checked against the checkpoint's record of them), else
        start it.
      allow_config_change: with ``resume``, fields allowed to differ from the saved config.
      callbacks: called with each epoch's record after its checkpoint is written; an
        exception from a callback stops training there (the checkpoint stays valid).
      quiet: no progress bar and no per-epoch lines (the test accuracy is still logged).
      log: where lines go (default ``print``); the last line is ``test accuracy: 0.9861``.

    Returns:
      A :class:`FitResult`.

    Raises:
      NonFiniteError: a loss or gradient became NaN/inf; the message names the step, the
        parameter leaves with non-finite gradients, and the last good checkpoint.
      funcbp.losses.LabelRangeError: labels outside ``[0, classes)`` of the model.

    Examples:
      >>> import tempfile, jax, jax.numpy as jnp, numpy as np
      >>> from funcbp.train import fit
      >>> x = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
      >>> y = (x[:, 0] > 0).astype(np.int32)
      >>> init = lambda key: {"w": 0.1 * jax.random.normal(key, (4, 2)), "b": jnp.zeros(2)}
      >>> apply = lambda p, x: x @ p["w"] + p["b"]
      >>> result = fit(init, apply, "softmax_cross_entropy", (x, y), epochs=3, batch_size=32,
      ...              lr=0.1, quiet=True, log=lambda line: None,
      ...              run_dir=tempfile.mkdtemp() + "/run")
      >>> result.history[-1]["val_accuracy"] > 0.9
      True
    """
    builtin = apply_fn is None and data is None and loss_fn is None and (
        model is None or isinstance(model, TrainConfig))
    if builtin:
        config = model if isinstance(model, TrainConfig) else (config or TrainConfig())
        if overrides:
            config = dataclasses.replace(config, **overrides)
        return _fit_config(config, run_dir, resume, allow_config_change, overrides, callbacks,
                           quiet, log)
    if model is None or data is None:
        raise TypeError("fit(model, apply_fn, loss_fn, data, ...): give the model (a Layer, "
                        "an (init, apply) pair, init or params with apply_fn) and the data; or "
                        "a TrainConfig for the built-in data sets")
    base = config or TrainConfig(data=PYTHON, model=PYTHON)
    # augment=None: decided by the data (off for yours) unless asked for here; a config made
    # for the built-in digits would otherwise carry their default of shifting images.
    given = {"data": data if isinstance(data, str) else PYTHON, "model": PYTHON,
             "augment": None, **overrides}
    config = dataclasses.replace(base, **given)
    layer = as_layer(model, apply_fn)
    user = resolve_data(data, val_fraction=config.val_fraction, split_seed=config.split_seed,
                        steps_per_epoch=config.steps_per_epoch,
                        validation_data=validation_data, test_data=test_data)
    task = _task(config, layer, _loss(loss_fn, user), user, user.summary)
    return _start_or_resume(config, task, run_dir, resume, allow_config_change, overrides,
                            callbacks, quiet, log)


def _fit_config(config, run_dir, resume, allow, overrides, callbacks, quiet, log) -> FitResult:
    if resume and run_dir is not None and _has_run(Path(run_dir)):
        return _resume(Path(run_dir), allow, callbacks, quiet, log, overrides)
    return _start_or_resume(config, None, run_dir, False, allow, {}, callbacks, quiet, log)


def _has_run(run_dir: Path) -> bool:
    return newest_checkpoint(run_dir / "checkpoints" / "latest.ckpt") is not None


def _start_or_resume(config, task, run_dir, resume, allow, overrides, callbacks, quiet,
                     log) -> FitResult:
    if run_dir is None:
        run_dir = _claim_default_run_dir(config)
    run_dir = Path(run_dir)
    with _locked(run_dir, log):
        if _has_run(run_dir):
            if not resume:
                raise FileExistsError(
                    f"{run_dir} already holds a run; continue it with resume({str(run_dir)!r}) "
                    "(funcbp train --resume, or fit(..., resume=True)) or choose another run "
                    "directory")
            changes = {k: v for k, v in overrides.items() if k not in ("data", "model")}
            config, ckpt = rundir.resume_config(run_dir, allow, changes, warn=_warn(log),
                                                 write=jax.process_index() == 0)
            return run(config, task, run_dir, resume_from=ckpt, callbacks=callbacks,
                       quiet=quiet, log=log)
        task = task if task is not None else task_of(config)
        return run(config, task, run_dir, resume_from=None, callbacks=callbacks, quiet=quiet,
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

    The result is the same, bit for bit on one machine, as a run that was never interrupted,
    whether the checkpoint was saved at an epoch's end or inside an epoch
    (``save_every_steps``). The config saved *inside* the checkpoint is the truth: a
    ``config.json`` edited since (or a ``changes`` keyword) that differs from it is refused,
    naming the fields, unless the field is one of :data:`funcbp.train.RESUME_SAFE_FIELDS`
    and is named in ``allow_config_change``. A missing ``config.json`` or ``metrics.jsonl`` is
    rebuilt from the checkpoint, a partial last metrics line (a crash while writing it) is
    dropped; each with a warning line through ``log``. Runs of a model or data passed from
    Python continue with ``fit(..., run_dir=run_dir, resume=True)`` instead.

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
    return _resume(Path(run_dir), allow_config_change, callbacks, quiet, log, changes)


def _resume(run_dir: Path, allow, callbacks, quiet, log, changes) -> FitResult:
    if not (run_dir / "config.json").exists() and not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"{run_dir / 'config.json'}: no config.json and no "
                                f"checkpoints, so {run_dir} is not a run directory written by "
                                "funcbp train")
    with _locked(run_dir, log):
        config, ckpt = rundir.resume_config(run_dir, allow, changes, warn=_warn(log),
                                             write=jax.process_index() == 0)
        return run(config, task_of(config), run_dir, resume_from=ckpt, callbacks=callbacks,
                   quiet=quiet, log=log)
