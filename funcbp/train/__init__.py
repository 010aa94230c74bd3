"""Training: the jitted train/eval steps, checkpoints, the trainer and its default models.

``make_train_step`` builds one ``jax.jit``-compiled step whose gradients come from
``funcbp.value_and_grad`` (or ``jax.value_and_grad`` for a reference run); ``fit`` trains your
model on your data (or a built-in data set and model, as ``funcbp train`` does): epochs,
validation, early stopping, checkpoints kept and resumed mid-epoch, metric writers (JSONL, CSV,
TensorBoard), mixed precision. See ``docs/training.md``.
"""

from funcbp.train.adapters import from_equinox, from_flax
from funcbp.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointWriteError,
    key_path_str,
    load_checkpoint,
    newest_checkpoint,
    read_header,
    remove_temporary_files,
    save_checkpoint,
)
from funcbp.train.config import (
    DATASETS,
    GRAD_FNS,
    RESUME_SAFE_FIELDS,
    SCHEDULES,
    ConfigChangeError,
    DataSplits,
    TrainConfig,
    config_changes,
    load_data,
    make_optimizer,
)
from funcbp.train.configfile import ConfigFileError, dump_toml, read_config_file, resolve_config
from funcbp.train.export import load_safetensors, save_safetensors
from funcbp.train.fit import (
    LOSSES,
    FitResult,
    NonFiniteError,
    default_run_dir,
    evaluate,
    fit,
    plot_history,
    read_metrics,
    resume,
)
from funcbp.train.manager import CheckpointManager
from funcbp.train.models import MODELS, as_layer, get_model, model_names
from funcbp.train.precision import PRECISIONS
from funcbp.train.rundir import RunDirError, RunLockedError
from funcbp.train.step import make_eval_step, make_train_step
from funcbp.train.writers import make_writers, read_event_file

__all__ = [
    "DATASETS",
    "GRAD_FNS",
    "LOSSES",
    "MODELS",
    "PRECISIONS",
    "RESUME_SAFE_FIELDS",
    "SCHEDULES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWriteError",
    "ConfigChangeError",
    "ConfigFileError",
    "DataSplits",
    "FitResult",
    "NonFiniteError",
    "RunDirError",
    "RunLockedError",
    "TrainConfig",
    "as_layer",
    "config_changes",
    "default_run_dir",
    "dump_toml",
    "evaluate",
    "fit",
    "from_equinox",
    "from_flax",
    "get_model",
    "key_path_str",
    "load_checkpoint",
    "load_data",
    "load_safetensors",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "make_writers",
    "model_names",
    "newest_checkpoint",
    "plot_history",
    "read_config_file",
    "read_event_file",
    "read_header",
    "read_metrics",
    "remove_temporary_files",
    "resolve_config",
    "resume",
    "save_checkpoint",
    "save_safetensors",
]
