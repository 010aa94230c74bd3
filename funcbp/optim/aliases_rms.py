"""RMS-based optimisers: RMSProp, Adagrad and Adafactor, as chains (optax's aliases).

Each rescales the gradient by a root mean square of past gradients, with no first moment
(momentum, where offered, is a separate `trace` or `ema` after the rescaling).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from funcbp.optim.adaptive import scale_by_rms, scale_by_rss, scale_by_stddev
from funcbp.optim.aliases import check_beta, check_eps, check_weight_decay
from funcbp.optim.base import (
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    check_interval,
    check_rate,
    identity,
)
from funcbp.optim.clipping import clip_by_block_rms
from funcbp.optim.combine import chain
from funcbp.optim.decay import Mask, add_decayed_weights
from funcbp.optim.factorized import scale_by_factored_rms, scale_by_param_block_rms
from funcbp.optim.transforms import ema, scale, scale_by_learning_rate, trace


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> GradientTransformationExtraArgs:
    """RMSProp, plain or centred, with optional (Nesterov) momentum (optax's `rmsprop`).

    Formula (`v_{-1} = initial_scale`, `m_{-1} = 0`, `b_{-1} = 0`):

        v_t = (1 - decay) * g_t^2 + decay * v_{t-1}
        m_t = (1 - decay) * g_t + decay * m_{t-1}                     (centered only)
        s_t = v_t  (plain)   or   v_t - m_t^2  (centered)
        r_t = g_t / sqrt(s_t + eps)     (eps_in_sqrt=True)   or   g_t / (sqrt(s_t) + eps)
        u_t = -lr_t * r_t                                             (momentum=None)
        b_t = -lr_t * r_t + mu * b_{t-1};  u_t = b_t   (or -lr_t r_t + mu b_t with Nesterov)

    With `bias_correction`, `v_t` and `m_t` are divided by `1 - decay^(t+1)` first. The
    momentum buffer holds steps already scaled by the learning rate (as in optax; PyTorch's
    `RMSprop` does the same), and `eps_in_sqrt=False` is PyTorch's placement of `eps`.
    It is `chain(scale_by_rms | scale_by_stddev, scale_by_learning_rate(lr), trace(mu))`.

    Args:
        learning_rate: a non-negative number or a schedule `step -> lr`.
        decay: decay of the moving averages, in `[0, 1)`.
        eps: the stabilising constant, `> 0`.
        initial_scale: the starting `v`, `>= 0` (PyTorch uses 0, TF1 used 1).
        eps_in_sqrt: put `eps` inside the square root (optax's default) or outside.
        centered: divide by the moving standard deviation instead of the RMS.
        momentum: `mu` in `[0, 1)`, or `None` for none.
        nesterov: Nesterov momentum (with `momentum`).
        bias_correction: correct the averages' bias towards `initial_scale`.

    Returns:
        A `GradientTransformationExtraArgs` with state
        `(ScaleByRmsState | ScaleByRStdDevState (WithCount), lr state, TraceState | EmptyState)`.

    Raises:
        ValueError: naming the first hyperparameter out of range.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.rmsprop(0.01, decay=0.75, eps=1e-30, momentum=0.9)
        >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> u  # -0.01 * 2 / sqrt(0.25 * 2^2)
        Array([-0.02], dtype=float32)

    Reference: Hinton, Neural Networks for Machine Learning, lecture 6e, 2012; Graves,
    Generating Sequences With Recurrent Neural Networks, 2013 (the centred form).
    """
    check_rate(learning_rate, "learning_rate")
    check_beta(decay, "decay")
    check_eps(eps)
    check_interval(initial_scale, "initial_scale", 0.0)
    if momentum is not None:
        check_beta(momentum, "momentum")
    rescale = scale_by_stddev if centered else scale_by_rms
    return chain(
        rescale(decay, eps, initial_scale, eps_in_sqrt, bias_correction),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov) if momentum is not None else identity(),
    )


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
) -> GradientTransformationExtraArgs:
    """Adagrad (optax's `adagrad`): each coordinate's step shrinks with its gradient history.

    Formula (`s_{-1} = initial_accumulator_value`):

        s_t = s_{t-1} + g_t^2
        u_t = -lr_t * g_t / sqrt(s_t + eps)

    The sum only grows, so the effective rate only falls. It is
    `chain(scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(lr))`.

    Args:
        learning_rate: a non-negative number or a schedule `step -> lr`.
        initial_accumulator_value: the starting sum, `>= 0`.
        eps: added inside the square root, `> 0`.

    Returns:
        A `GradientTransformationExtraArgs` with state `(ScaleByRssState, lr state)`.

    Raises:
        ValueError: naming the first hyperparameter out of range.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.adagrad(1.0, initial_accumulator_value=0.0, eps=1e-30)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([3.0]), state)   # -3 / sqrt(9)
        >>> u, state = tx.update(jnp.array([4.0]), state)   # -4 / sqrt(9 + 16)
        >>> u
        Array([-0.8], dtype=float32)

    Reference: Duchi et al., Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization, JMLR 2011.
    """
    check_rate(learning_rate, "learning_rate")
    check_interval(initial_accumulator_value, "initial_accumulator_value", 0.0)
    check_eps(eps)
    return chain(
        scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate)
    )


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Mask = None,
) -> GradientTransformationExtraArgs:
    """Adafactor: RMS scaling with factored second moments (optax's `adafactor`).

    Formula, in chain order (each step optional as its argument says):

        r_t = scale_by_factored_rms(g_t)          factored second moments (see there)
        r_t <- r_t / max(1, rms(r_t) / d)         clipping_threshold d, per leaf
        r_t <- lr_t * r_t                         learning_rate
        r_t <- r_t * max(rms(p_t), 1e-3)          multiply_by_parameter_scale, per leaf
        r_t <- ema(r_t, momentum)                 momentum (no debiasing)
        r_t <- r_t + wd_t * p_t                   weight_decay_rate, on weight_decay_mask
        u_t = -r_t

    A leaf with at least two axes of size `>= min_dim_size_to_factor` stores one row and
    one column of statistics instead of a full second moment: sublinear memory.

    Args:
        learning_rate: a number or schedule, or `None` for none (the parameter scale then
            sets the step size).
        min_dim_size_to_factor: factor a leaf only when its second largest axis has at
            least this many entries (an int; list it in `inject_hyperparams`'
            `static_args`).
        decay_rate: the exponent `c` of the second-moment decay `1 - (t + 1)^(-c)`.
        decay_offset: subtracted from the step in that decay (for fine-tuning).
        multiply_by_parameter_scale: scale steps by each parameter leaf's RMS.
        clipping_threshold: `d > 0`, or `None` for no clipping.
        momentum: the `ema` decay in `[0, 1)`, or `None` for none.
        dtype_momentum: the dtype of the momentum buffer.
        weight_decay_rate: `wd >= 0` or a schedule, or `None` for no decay.
        eps: added to the squared gradients, `> 0`.
        factored: whether to factor at all.
        weight_decay_mask: which parameters decay (as `adamw`'s `mask`).

    Returns:
        A `GradientTransformationExtraArgs` whose state is the tuple of its parts' states,
        starting with `FactoredState(count, v_row, v_col, v)`; `update` needs `params`.

    Raises:
        ValueError: naming the first hyperparameter out of range.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.adafactor(1e-2, min_dim_size_to_factor=2)
        >>> params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> state[0].v_row["w"].shape, state[0].v_col["w"].shape, state[0].v["b"].shape
        ((3,), (4,), (3,))
        >>> u, state = tx.update({"w": jnp.ones((4, 3)), "b": jnp.ones(3)}, state, params)
        >>> u["b"]  # -lr * rms(p) * sign(g) on the first step
        Array([-0.01, -0.01, -0.01], dtype=float32)

    Reference: Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost, ICML 2018.
    """
    if learning_rate is not None:
        check_rate(learning_rate, "learning_rate")
    check_rate(decay_rate, "decay_rate")
    if clipping_threshold is not None:
        check_interval(clipping_threshold, "clipping_threshold", 0.0, low_open=True)
    if momentum is not None:
        check_beta(momentum, "momentum")
    if weight_decay_rate is not None:
        check_weight_decay(weight_decay_rate, "weight_decay_rate")
    check_eps(eps)
    parts = [scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)]
    if clipping_threshold is not None:
        parts.append(clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        parts.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        parts.append(scale_by_param_block_rms())
    if momentum is not None:
        parts.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        parts.append(add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    parts.append(scale(-1))  # descent: follow the negative of the rescaled gradient
    return chain(*parts)


__all__ = ["adafactor", "adagrad", "rmsprop"]
