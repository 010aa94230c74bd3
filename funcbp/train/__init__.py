"""Training: the jitted train/eval steps, checkpoints, the trainer and its default models.

``make_train_step`` builds one ``jax.jit``-compiled step whose gradients come from
``funcbp.value_and_grad`` (or ``jax.value_and_grad`` for a reference run); ``fit`` runs the
epochs, validation, early stopping, checkpoints, metrics and plots behind ``funcbp train``.
See ``docs/training.md``.
"""

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
from funcbp.train.fit import (
    FitResult,
    NonFiniteError,
    default_run_dir,
    evaluate,
    fit,
    plot_history,
    read_metrics,
    resume,
)
from funcbp.train.models import MODELS, get_model, model_names
from funcbp.train.rundir import RunDirError, RunLockedError
from funcbp.train.step import make_eval_step, make_train_step

__all__ = [
    "DATASETS",
    "GRAD_FNS",
    "MODELS",
    "RESUME_SAFE_FIELDS",
    "SCHEDULES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointWriteError",
    "ConfigChangeError",
    "DataSplits",
    "FitResult",
    "NonFiniteError",
    "RunDirError",
    "RunLockedError",
    "TrainConfig",
    "config_changes",
    "default_run_dir",
    "evaluate",
    "fit",
    "get_model",
    "key_path_str",
    "load_checkpoint",
    "load_data",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "model_names",
    "newest_checkpoint",
    "plot_history",
    "read_header",
    "read_metrics",
    "remove_temporary_files",
    "resume",
    "save_checkpoint",
]
