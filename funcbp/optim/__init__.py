"""Gradient transformations and schedules with optax's interface and numerics.

Every optimiser is a `GradientTransformation(init, update)`: the same `NamedTuple` shape as
`optax.GradientTransformation`, so funcbp's and optax's transformations mix freely in
either library's `chain`. States are `NamedTuple`s of arrays (pytrees), ready for
`jax.jit`, `jax.tree_util` and checkpoints. See docs/optim.md for every update formula
and for porting `torch.optim.SGD` recipes (`torch_sgd`).

Examples:
    >>> import jax.numpy as jnp
    >>> from funcbp import optim
    >>> tx = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1, momentum=0.9))
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    >>> params = optim.apply_updates(params, updates)
"""

from funcbp.optim.aliases import adam, momentum, nesterov, sgd, torch_sgd
from funcbp.optim.base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
    Updates,
    apply_updates,
    global_norm,
    identity,
)
from funcbp.optim.clipping import clip, clip_by_global_norm
from funcbp.optim.combine import (
    AccumulateState,
    SkipNonfiniteState,
    accumulate,
    all_finite,
    chain,
    skip_nonfinite,
)
from funcbp.optim.decay import add_decayed_weights, add_l1_decay
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
    ScaleByAdamState,
    ScaleByScheduleState,
    TorchTraceState,
    TraceState,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_schedule,
    torch_trace,
    trace,
)

__all__ = [
    "AccumulateState",
    "EmptyState",
    "GradientTransformation",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "ScaleByAdamState",
    "ScaleByScheduleState",
    "Schedule",
    "SkipNonfiniteState",
    "TorchTraceState",
    "TraceState",
    "Updates",
    "accumulate",
    "adam",
    "add_decayed_weights",
    "add_l1_decay",
    "all_finite",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "global_norm",
    "identity",
    "join_schedules",
    "linear_schedule",
    "momentum",
    "nesterov",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "sgd",
    "skip_nonfinite",
    "step_decay",
    "torch_sgd",
    "torch_trace",
    "trace",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]
