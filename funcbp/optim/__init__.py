"""Gradient transformations and schedules with optax's interface and numerics.

Every optimiser is a `GradientTransformation(init, update)`, a subclass of
`optax.GradientTransformation` (chains and aliases: of `optax.GradientTransformationExtraArgs`),
so funcbp's and optax's transformations mix freely in either library's `chain` and pass
optax's type checks. States are `NamedTuple`s of arrays (pytrees) with optax's field names,
ready for `jax.jit`, `jax.tree_util` and checkpoints.

Optimisers: `sgd`, `momentum`, `nesterov`, `adam`, `adamw`, `rmsprop`, `adagrad`, `lion`,
`adafactor`, `torch_sgd`, or any of them by name with `from_name`. Wrappers: `chain`,
`masked`, `inject_hyperparams`, `skip_nonfinite`, `accumulate`; `monitor_global_norm` records
the gradient norm before clipping. See docs/optim.md for every update formula and for
porting `torch.optim.SGD` recipes (`torch_sgd`).

Examples:
    >>> import jax.numpy as jnp
    >>> from funcbp import optim
    >>> tx = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1, momentum=0.9))
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    >>> params = optim.apply_updates(params, updates)
"""

from funcbp.optim.adaptive import (
    ScaleByLionState,
    ScaleByRmsState,
    ScaleByRmsWithCountState,
    ScaleByRssState,
    ScaleByRStdDevState,
    ScaleByRStdDevWithCountState,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from funcbp.optim.aliases import adam, adamw, lion, momentum, nesterov, sgd, torch_sgd
from funcbp.optim.aliases_rms import adafactor, adagrad, rmsprop
from funcbp.optim.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
    Updates,
    apply_updates,
    global_norm,
    identity,
    with_extra_args_support,
)
from funcbp.optim.clipping import clip, clip_by_block_rms, clip_by_global_norm
from funcbp.optim.combine import (
    AccumulateState,
    SkipNonfiniteState,
    accumulate,
    all_finite,
    chain,
    skip_nonfinite,
)
from funcbp.optim.decay import WeightDecaySchedule, add_decayed_weights, add_l1_decay
from funcbp.optim.factorized import FactoredState, scale_by_factored_rms, scale_by_param_block_rms
from funcbp.optim.inject import (
    InjectStatefulHyperparamsState,
    WrappedSchedule,
    WrappedScheduleState,
    inject_hyperparams,
)
from funcbp.optim.masking import MaskedNode, MaskedState, masked
from funcbp.optim.monitor import SnapshotState, monitor_global_norm, snapshot, tree_get
from funcbp.optim.names import OPTIMIZERS, from_name, optimizer_options
from funcbp.optim.schedules import (
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay,
    join_schedules,
    linear_schedule,
    piecewise_constant_schedule,
    polynomial_schedule,
    step_decay,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
)
from funcbp.optim.transforms import (
    EmaState,
    ScaleByAdamState,
    ScaleByScheduleState,
    TorchTraceState,
    TraceState,
    ema,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_schedule,
    torch_trace,
    trace,
)

__all__ = [
    "AccumulateState",
    "EmaState",
    "EmptyState",
    "FactoredState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "InjectStatefulHyperparamsState",
    "MaskedNode",
    "MaskedState",
    "OPTIMIZERS",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "ScaleByAdamState",
    "ScaleByLionState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "Schedule",
    "SkipNonfiniteState",
    "SnapshotState",
    "TorchTraceState",
    "TraceState",
    "Updates",
    "WeightDecaySchedule",
    "WrappedSchedule",
    "WrappedScheduleState",
    "accumulate",
    "adafactor",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "add_l1_decay",
    "all_finite",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "ema",
    "exponential_decay",
    "from_name",
    "global_norm",
    "identity",
    "inject_hyperparams",
    "join_schedules",
    "linear_schedule",
    "lion",
    "masked",
    "momentum",
    "monitor_global_norm",
    "nesterov",
    "optimizer_options",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "rmsprop",
    "scale",
    "scale_by_adam",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_param_block_rms",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_stddev",
    "sgd",
    "skip_nonfinite",
    "snapshot",
    "step_decay",
    "torch_sgd",
    "torch_trace",
    "trace",
    "tree_get",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "with_extra_args_support",
]
