"""What a run is: ``TrainConfig``, the data splits it loads, the optimiser it builds.

``TrainConfig`` holds every option of ``funcbp train`` and is saved as ``config.json`` (and
``config.toml``) in the run directory; ``load_data`` and ``make_optimizer`` turn it into arrays
and a ``GradientTransformation``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

import funcbp
from funcbp import data as fdata
from funcbp import losses, optim
from funcbp.train.precision import PRECISIONS
from funcbp.train.userdata import PYTHON

__all__ = [
    "DATASETS",
    "RESUME_SAFE_FIELDS",
    "ConfigChangeError",
    "DataSplits",
    "GRAD_FNS",
    "SCHEDULES",
    "TrainConfig",
    "config_changes",
    "load_data",
    "make_optimizer",
]

DATASETS = ("digits", "mnist", "fashion_mnist")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
GRAD_FNS: dict[str, Callable] = {"funcbp": funcbp.value_and_grad, "jax": jax.value_and_grad}
_DEFAULT_MODEL = {"digits": "digits_cnn", "mnist": "cnn", "fashion_mnist": "cnn"}
NUM_CLASSES = 10  # every built-in data set has ten classes

#: Fields a resumed run may change (with ``allow_config_change``): they change neither the
#: data, nor the model, nor the optimisation of the epochs already trained. ``epochs`` does
#: stretch a decaying schedule over the new length from the next epoch on.
RESUME_SAFE_FIELDS = ("activation_stats", "async_save", "data_dir", "devices", "epochs",
                      "eval_batch_size", "export_safetensors", "grad", "grad_flow",
                      "histogram_every", "keep_last", "log_every", "log_quantities", "patience",
                      "save_every_epochs", "save_every_steps", "shard_params", "writers")
#: What ``log_quantities`` accepts (``funcbp.quantities`` names that its summary reads).
LOG_QUANTITIES = ("batch_l2", "variance")

#: Usual learning-rate ranges; a value outside gets a warning (it is allowed: lr=0 is a
#: legitimate probe), ten times beyond them anyway.
_LR_RANGE = {"sgd": (1e-5, 10.0), "momentum": (1e-5, 10.0), "nesterov": (1e-5, 10.0),
             "adam": (1e-6, 1.0), "adamw": (1e-6, 1.0), "rmsprop": (1e-6, 1.0),
             "adagrad": (1e-6, 10.0), "lion": (1e-7, 0.1), "adafactor": (1e-6, 10.0)}
#: Optimiser options that are functions, not config values: the trainer sets the weight-decay
#: mask (``weight_decay_on``).
_CODE_OPTIONS = ("mask", "weight_decay_mask")
WRITER_NAMES = ("jsonl", "csv", "tensorboard")


class ConfigChangeError(ValueError):
    """A resumed run's config differs from the one its checkpoint was trained with.

    The message names every differing field with both values and says which may change.
    """

@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` in the run directory.

    The defaults are the recipe of ``funcbp train`` with no arguments: the digits CNN, SGD with
    Nesterov momentum 0.9, learning rate 0.05 with cosine decay, L2 5e-4 on the weights,
    random shifts of up to one pixel, 30 epochs of batches of 32.

    Attributes:
      data: ``"digits"`` (embedded), ``"mnist"`` or ``"fashion_mnist"`` (IDX files), a path
        ``*.npz`` (arrays ``x_train, y_train, x_test, y_test``, optionally ``x_val, y_val``),
        a loader ``"pkg.module:function"``, or ``"<python>"`` for data passed to ``fit``.
      data_dir: where the IDX files are (searched in the usual places when None).
      model: a name from :func:`funcbp.train.model_names`, a factory ``"pkg.module:function"``
        returning a :class:`funcbp.nn.Layer` or an ``(init, apply)`` pair, or ``"<python>"``
        for a model passed to ``fit``; None picks ``digits_cnn`` for the digits, ``cnn`` for
        the 28x28 sets and ``mlp`` for other data.
      epochs: passes over the training split.
      batch_size: examples per training step (the remainder of an epoch is dropped).
      optimizer: a name of :data:`funcbp.optim.OPTIMIZERS` (``sgd``, ``momentum``,
        ``nesterov``, ``adam``, ``adamw``, ``rmsprop``, ``adagrad``, ``lion``, ``adafactor``).
      lr: peak learning rate.
      momentum: SGD momentum in ``[0, 1)`` (0 for none); ``sgd`` only.
      nesterov: Nesterov momentum for SGD; ``sgd`` only.
      schedule: ``"constant"``, ``"cosine"`` (to 0 over the run), ``"warmup_cosine"`` (one
        epoch of linear warm-up, then cosine) or ``"step"`` (x0.1 at 50% and 75% of the run).
      l1: L1 penalty on the weights (``l1 * sum |w|``, biases excluded).
      l2: L2 penalty on the weights (``l2 * 0.5 * sum w^2``, biases excluded).
      clip_norm: clip the gradient to this global L2 norm (None: no clipping).
      clip_value: clip each gradient entry to ``[-v, v]`` (None: no clipping).
      augment: shift training images by up to ``max_shift`` pixels at random; None: on for
        the built-in data sets, off for other data.
      max_shift: largest shift, in pixels.
      seed: seeds initialisation, data order, augmentation and dropout.
      split_seed: seeds the train/validation/test split (kept apart from ``seed`` so that
        several seeds share one test split).
      val_fraction: fraction of the data (digits) or of the training set (IDX sets) held out
        for validation; 0 for none (then no early stopping).
      test_fraction: fraction of the digits held out for the test (the IDX sets have their
        own test split).
      patience: stop when the validation loss has not improved for this many epochs (None or
        0: never); needs a validation split (``val_fraction > 0``).
      grad: ``"funcbp"`` (funcbp's own autodiff) or ``"jax"`` (jax.value_and_grad, reference).
      eval_batch_size: batch size for evaluation.
      devices: train data-parallel on a mesh of this many devices (None: one device, or every
        device of every process in a multi-process run). The batch size is global and must be
        divisible by the device count.
      grad_flow: after each epoch, record per-layer gradient norms on a training batch
        (``funcbp.diagnostics.gradient_flow``) in the metrics and plot them over epochs.
      shard_params: with ``devices``, split parameters and optimiser state along the data axis
        instead of replicating them.
      log_quantities: comma-separated ``funcbp.quantities`` to log after each epoch on a
        training batch (``"batch_l2,variance"``): per-layer gradient signal-to-noise
        ``|mean|^2 / tr(variance)`` and per-example gradient-norm percentiles, in the metrics
        and plotted over epochs (``quantities.png``). Empty: none.
      activation_stats: after each epoch, record every activation's forward statistics on a
        training batch (``funcbp.diagnostics.activation_stats``: mean, std, fraction of zeros
        and dead ReLU units, fraction of saturated sigmoid/tanh inputs) in the metrics and plot
        them over epochs (``activation_stats.png``).
      optimizer_options: the optimiser's other options (:func:`funcbp.optim.optimizer_options`),
        e.g. ``{"weight_decay": 0.05, "b2": 0.95}`` for ``adamw``; ``optimizer.weight_decay=0.05``
        in a config file or on the command line.
      weight_decay_on: ``"weights"``: an optimiser's decoupled weight decay (``adamw``,
        ``lion``, ``adafactor``) skips biases and normalisation scales (leaves of fewer than 2
        dimensions), through ``funcbp.optim.masked``; ``"all"``: every leaf.
      precision: ``"f32"``, ``"bf16"`` or ``"f16"``: the model's compute dtype, on float32
        master weights (``f16`` with dynamic loss scaling; :mod:`funcbp.train.precision`).
      steps_per_epoch: for data given as an iterable: batches per epoch, read from one iterator
        across epochs (grain's ``.repeat()``); None: an epoch ends with the iterable.
      log_every: write the step's scalars (loss, accuracy, learning rate, gradient norm before
        clipping, per-layer gradient norms) every this many steps to the ``writers``; 0: none.
      writers: comma-separated metric writers besides ``metrics.jsonl``: ``jsonl``
        (``steps.jsonl``), ``csv`` (``steps.csv``, ``metrics.csv``), ``tensorboard``
        (event files through tensorboardX).
      histogram_every: every this many epochs, histograms of each parameter and of its
        gradient on a training batch (TensorBoard); 0: none.
      save_every_steps: also save ``latest.ckpt`` every this many steps (mid-epoch; resuming
        continues inside the epoch, bit for bit); 0: at epoch ends only.
      save_every_epochs: save at the end of every this many epochs (and always after the last).
      keep_last: keep the last this many saves as ``checkpoints/step_<step>.ckpt``.
      best_metric: the epoch field ``best.ckpt`` and early stopping follow (``val_loss``,
        ``val_accuracy``, ``train_loss``...).
      best_mode: ``"min"``, ``"max"``, or ``"auto"`` (max for accuracies, min otherwise).
      async_save: write checkpoints on a background thread; training waits only for the copy
        of the arrays to host memory.
      export_safetensors: at the end, write the parameters as ``params.safetensors``.
    """

    data: str = "digits"
    data_dir: str | None = None
    model: str | None = None
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    l1: float = 0.0
    l2: float = 5e-4
    clip_norm: float | None = None
    clip_value: float | None = None
    augment: bool | None = None
    max_shift: int = 1
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    patience: int | None = None
    grad: str = "funcbp"
    eval_batch_size: int = 1000
    devices: int | None = None
    shard_params: bool = False
    grad_flow: bool = False
    log_quantities: str = ""
    activation_stats: bool = False
    optimizer_options: dict = dataclasses.field(default_factory=dict)
    weight_decay_on: str = "weights"
    precision: str = "f32"
    steps_per_epoch: int | None = None
    log_every: int = 0
    writers: str = "jsonl,csv"
    histogram_every: int = 0
    save_every_steps: int = 0
    save_every_epochs: int = 1
    keep_last: int = 0
    best_metric: str = "val_loss"
    best_mode: str = "auto"
    async_save: bool = False
    export_safetensors: bool = False

    def __post_init__(self):
        if self.model is None and isinstance(self.data, str):
            self.model = _DEFAULT_MODEL.get(self.data, PYTHON if self.data == PYTHON else "mlp")
        if self.augment is None and isinstance(self.data, str):
            self.augment = self.data in DATASETS
        if isinstance(self.optimizer, str):
            self.optimizer = self.optimizer.strip().lower()
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and what it accepts.

        Also warns (``UserWarning``) for a learning rate far outside the optimiser's usual
        range, e.g. Adam with ``lr=1e6``.
        """
        def bad(field, value, want):
            raise ValueError(f"TrainConfig.{field}={value!r}: {want}")

        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            optional = "None" in kind
            if value is None:
                if not optional:
                    bad(f.name, value, "must be set")
                continue
            is_bool, is_int = isinstance(value, bool), isinstance(value, int)
            if kind.startswith("bool") and not is_bool:
                bad(f.name, value, "must be true or false")
            if kind.startswith("int") and (is_bool or not is_int):
                bad(f.name, value, "must be an integer")
            if kind.startswith("float") and (is_bool or not isinstance(value, (int, float))
                                             or not math.isfinite(value)):
                bad(f.name, value, "must be a finite number")
            if kind.startswith("str") and not isinstance(value, str):
                bad(f.name, value, "must be a string")
            if kind.startswith("dict") and not isinstance(value, dict):
                bad(f.name, value, "must be a table of option = value")
        if not is_data_spec(self.data):
            bad("data", self.data, f"choose one of {', '.join(DATASETS)}, a path ending in "
                ".npz, or a loader 'pkg.module:function'")
        if not is_model_spec(self.model):
            from funcbp.train.models import model_names

            bad("model", self.model, f"choose one of {', '.join(model_names())}, or a factory "
                "'pkg.module:function'")
        if self.optimizer not in optim.OPTIMIZERS:
            close = difflib.get_close_matches(self.optimizer, optim.OPTIMIZERS, n=1)
            bad("optimizer", self.optimizer, f"choose one of {', '.join(optim.OPTIMIZERS)}"
                + (f" (did you mean {close[0]!r}?)" if close else ""))
        if self.precision not in PRECISIONS:
            bad("precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")
        if self.weight_decay_on not in ("weights", "all"):
            bad("weight_decay_on", self.weight_decay_on, "choose 'weights' or 'all'")
        if self.best_mode not in ("auto", "min", "max"):
            bad("best_mode", self.best_mode, "choose auto, min or max")
        names = [n.strip() for n in self.writers.split(",") if n.strip()]
        for name in names:
            if name not in WRITER_NAMES:
                bad("writers", self.writers, f"a comma-separated subset of "
                    f"{', '.join(WRITER_NAMES)}")
        for field in ("log_every", "histogram_every", "save_every_steps", "save_every_epochs",
                      "keep_last"):
            if getattr(self, field) < 0:
                bad(field, getattr(self, field), "must be >= 0 (0: off)")
        if self.histogram_every and "tensorboard" not in names:
            bad("histogram_every", self.histogram_every, "histograms are written to "
                "TensorBoard: add tensorboard to writers, or set histogram_every=0")
        if self.log_every and not names:
            bad("log_every", self.log_every, "step scalars go to the writers, and writers is "
                "empty: set writers (jsonl, csv, tensorboard), or log_every=0")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            bad("steps_per_epoch", self.steps_per_epoch, "must be a positive integer (or None)")
        if self.schedule not in SCHEDULES:
            bad("schedule", self.schedule, f"choose one of {', '.join(SCHEDULES)}")
        if self.grad not in GRAD_FNS:
            bad("grad", self.grad, "choose 'funcbp' or 'jax'")
        for field in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, field) < 1:
                bad(field, getattr(self, field), "must be a positive integer")
        for field in ("lr", "l1", "l2"):
            if not getattr(self, field) >= 0:
                bad(field, getattr(self, field), "must be >= 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", self.momentum, "must be in [0, 1) (0.9 is usual; 1 or more makes "
                "the updates grow without bound)")
        for field in ("clip_norm", "clip_value"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                bad(field, value, "must be > 0 (or None for no clipping)")
        if not 0 <= self.val_fraction < 1:
            bad("val_fraction", self.val_fraction, "must be in [0, 1)")
        if not 0 < self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            bad("test_fraction", self.test_fraction,
                "must be in (0, 1) and leave data for training with val_fraction")
        if self.patience is not None and self.patience < 0:
            bad("patience", self.patience, "must be >= 0 (or None: no early stopping)")
        if self.patience and not self.val_fraction:
            bad("patience", self.patience, "early stopping watches the validation loss, but "
                "val_fraction is 0: set val_fraction > 0, or drop patience")
        for name in filter(None, self.log_quantities.split(",")):
            if name.strip() not in LOG_QUANTITIES:
                bad("log_quantities", self.log_quantities,
                    f"a comma-separated subset of {', '.join(LOG_QUANTITIES)}")
        if self.devices is not None and self.devices < 1:
            bad("devices", self.devices, "must be a positive integer (or None)")
        if self.devices is not None and self.batch_size % self.devices:
            bad("batch_size", self.batch_size,
                f"the global batch must be divisible by devices={self.devices}; use a multiple "
                f"of {self.devices}")
        if self.max_shift < 0:
            bad("max_shift", self.max_shift, "must be a non-negative integer")
        self._validate_optimizer_options(bad)  # last: the fields above have clearer messages
        low, high = _LR_RANGE.get(self.optimizer, (1e-7, 10.0))
        if self.lr and not low / 10 <= self.lr <= high * 10:
            warnings.warn(f"TrainConfig.lr={self.lr:g} is far outside the usual range of "
                          f"{self.optimizer} ({low:g} to {high:g}); training will likely "
                          "diverge or not move", UserWarning, stacklevel=3)

    def _validate_optimizer_options(self, bad) -> None:
        options = self.optimizer_options
        known = optim.optimizer_options(self.optimizer)
        for name in options:
            if name in _CODE_OPTIONS:
                bad(f"optimizer_options[{name!r}]", options[name], "is set by the trainer "
                    "from weight_decay_on ('weights' or 'all'); leave it out")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                bad(f"optimizer_options[{name!r}]", options[name],
                    f"{self.optimizer} has no option {name!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; its options: {', '.join(k for k in known if k not in _CODE_OPTIONS)}")
        try:
            optim.from_name(self.optimizer, self.lr, **_optimizer_kwargs(self))
        except (TypeError, ValueError) as err:
            bad("optimizer_options", options, str(err))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> TrainConfig:
        """The config of a ``config.json`` dict; unknown fields and bad values raise.

        Fields added to ``TrainConfig`` since the file was written take their defaults.
        """
        if not isinstance(values, dict):
            raise ValueError(f"a TrainConfig is a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            hints = [f"{u!r} (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(
                u, known, n=1)) else repr(u) for u in unknown]
            raise ValueError(f"unknown TrainConfig field(s) {', '.join(hints)}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(**values)


def is_data_spec(data: object) -> bool:
    """Whether ``data`` names data the trainer can load (see :attr:`TrainConfig.data`)."""
    return isinstance(data, str) and (data in DATASETS or data == PYTHON
                                      or data.endswith(".npz") or ":" in data)


def is_model_spec(model: object) -> bool:
    """Whether ``model`` names a model (see :attr:`TrainConfig.model`)."""
    from funcbp.train.models import MODELS

    return isinstance(model, str) and (model in MODELS or model == PYTHON or ":" in model)


def _optimizer_kwargs(config: TrainConfig) -> dict:
    """``from_name``'s options for ``config``: SGD's momentum fields, the user's options, and
    the weight-decay mask."""
    kwargs = dict(config.optimizer_options)
    if config.optimizer == "sgd":
        momentum = config.momentum or None
        kwargs.setdefault("momentum", momentum)
        kwargs.setdefault("nesterov", config.nesterov and momentum is not None)
    known = optim.optimizer_options(config.optimizer)
    mask = losses.default_weight_mask if config.weight_decay_on == "weights" else None
    for name in _CODE_OPTIONS:
        if name in known:
            kwargs[name] = mask
    return kwargs

def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, current value)}`` for every field that differs.

    Examples:
      >>> from funcbp.train import TrainConfig, config_changes
      >>> a = TrainConfig(epochs=3).to_json()
      >>> config_changes(a, {**a, "epochs": 5, "split_seed": 1})
      {'epochs': (3, 5), 'split_seed': (0, 1)}
    """
    defaults = TrainConfig.__dataclass_fields__
    # A field missing from one side (a file written before the field existed) is its default.
    def value(config, name):
        if name in config:
            return config[name]
        f = defaults[name]
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    return {name: (value(saved, name), value(current, name)) for name in fields
            if value(saved, name) != value(current, name)}


def check_config_changes(changes: dict[str, tuple[Any, Any]], allowed: Any, source: str,
                         truth: str) -> None:
    """Refuse ``changes`` unless each is a field of :data:`RESUME_SAFE_FIELDS` in ``allowed``.

    Raises:
      ConfigChangeError: naming every refused field, both values, and what to do.
    """
    allowed = set(allowed)
    unknown = sorted(allowed - set(RESUME_SAFE_FIELDS))
    if unknown:
        raise ConfigChangeError(f"allow_config_change {unknown}: only "
                                f"{', '.join(RESUME_SAFE_FIELDS)} may change when resuming")
    text = lambda names: ", ".join(f"{n} ({changes[n][0]!r} -> {changes[n][1]!r})"
                                   for n in names)
    unsafe = [n for n in changes if n not in RESUME_SAFE_FIELDS]
    if unsafe:
        raise ConfigChangeError(
            f"{source} differs from the config saved in {truth} in {text(unsafe)}: "
            "these change the data, the model or the optimisation, so the resumed run would "
            "not continue the run that was started. Restore the saved values (deleting "
            "config.json restores it from the checkpoint), or start a new run. Only "
            f"{', '.join(RESUME_SAFE_FIELDS)} may change on resume")
    not_allowed = [n for n in changes if n not in allowed]
    if not_allowed:
        flags = " ".join(f"--allow-config-change {n}" for n in not_allowed)
        raise ConfigChangeError(
            f"{source} differs from the config saved in {truth} in {text(not_allowed)}; to "
            f"continue with the new value, say so: {flags} (allow_config_change="
            f"{not_allowed!r}); otherwise restore the saved value")


class DataSplits(NamedTuple):
    """Train, validation (or None) and test splits as ``(images, labels)`` numpy pairs."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]



def load_data(config: TrainConfig) -> DataSplits:
    """The splits ``config`` asks for, images scaled to ``[0, 1]`` float32, labels int32.

    The digits are split stratified into train / validation / test by ``split_seed``; MNIST and
    Fashion-MNIST keep their official test split and hold ``val_fraction`` of the training
    images out for validation.

    Raises:
      funcbp.losses.LabelRangeError: a label of any split is outside ``[0, 10)``, before any
        training (the message names the split and counts the labels).
    """
    splits = _load_splits(config)
    for name, split in zip(DataSplits._fields, splits, strict=True):
        if split is not None:
            losses.check_labels(split[1], NUM_CLASSES, f"{config.data} {name} labels")
    return splits


def _load_splits(config: TrainConfig) -> DataSplits:
    key = jax.random.key(config.split_seed)
    v, t = config.val_fraction, config.test_fraction
    if config.data == "digits":
        images, labels = fdata.load_digits()
        x = fdata.scale_to_unit(images, fdata.DIGITS_MAX_VALUE)
        sizes = (1 - v - t, v, t) if v else (1 - t, t)
        parts = fdata.split(key, x, labels, sizes, stratify=True)
        return DataSplits(parts[0], parts[1] if v else None, parts[-1])
    train, test = fdata.load_mnist(config.data_dir, kind=config.data)
    x = fdata.scale_to_unit(train.images, 255)
    x_test = fdata.scale_to_unit(test.images, 255)
    if v:
        tr, va = fdata.split(key, x, train.labels, (1 - v, v), stratify=True)
    else:
        tr, va = (x, train.labels), None
    return DataSplits(tr, va, (x_test, test.labels))


def _schedule(config: TrainConfig, steps_per_epoch: int) -> optim.Schedule:
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "constant":
        return optim.constant_schedule(config.lr)
    if config.schedule == "cosine":
        return optim.cosine_decay_schedule(config.lr, total)
    if config.schedule == "warmup_cosine":
        warmup = min(steps_per_epoch, total - 1)
        return optim.warmup_cosine_decay_schedule(0.0, config.lr, warmup, total)
    return optim.piecewise_constant_schedule(
        config.lr, {int(0.5 * total): 0.1, int(0.75 * total): 0.1}
    )


def make_optimizer(
    config: TrainConfig, steps_per_epoch: int
) -> tuple[optim.GradientTransformation, optim.Schedule]:
    """The optimiser ``config`` describes, and its learning-rate schedule.

    ``chain(monitor_global_norm(), [clip_by_global_norm], [clip], from_name(optimizer, schedule,
    inject=True, **options))``: the monitor records the gradient norm before clipping and
    ``inject_hyperparams`` keeps the live learning rate in the state, both read by the
    trainer (``tree_get``); decoupled weight decay skips biases and norm scales unless
    ``weight_decay_on="all"``.

    Examples:
      >>> from funcbp.train import TrainConfig, make_optimizer
      >>> tx, schedule = make_optimizer(TrainConfig(epochs=2), steps_per_epoch=10)
      >>> round(float(schedule(0)), 3), float(schedule(20))
      (0.05, 0.0)
    """
    schedule = _schedule(config, steps_per_epoch)
    parts = [optim.monitor_global_norm()]
    if config.clip_norm is not None:
        parts.append(optim.clip_by_global_norm(config.clip_norm))
    if config.clip_value is not None:
        parts.append(optim.clip(config.clip_value))
    parts.append(optim.from_name(config.optimizer, schedule, inject=True,
                                 **_optimizer_kwargs(config)))
    return optim.chain(*parts), schedule
