"""Scaling and momentum transformations, each numerically identical to optax's namesake.

Notation in the formulas: `g` is the incoming update (usually the gradient), `u` the
outgoing update, `t` the step count starting at 0, `m`, `v` states carried between steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcbp.optim.base import (
    EmptyState,
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    Schedule,
    Updates,
    abs_sq,
    bias_correction,
    check_float_leaves,
    check_rate,
    check_updates,
    identity,
    init_empty_state,
    safe_increment,
)


class TraceState(NamedTuple):
    """State of `trace`: the momentum buffer, shaped like the params."""

    trace: Params


class TorchTraceState(NamedTuple):
    """State of `torch_trace`: steps taken so far and the momentum buffer."""

    count: jax.Array  # int32 scalar
    trace: Params


class ScaleByScheduleState(NamedTuple):
    """State of `scale_by_schedule`: the number of updates made so far."""

    count: jax.Array  # int32 scalar


class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`: step count, first moment `mu`, second moment `nu`."""

    count: jax.Array  # int32 scalar
    mu: Updates
    nu: Updates


def _zeros_like(tree: Any, dtype: Any = None) -> Any:
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)


def _cast(tree: Any, dtype: Any) -> Any:
    return tree if dtype is None else jax.tree.map(lambda x: x.astype(dtype), tree)


def scale(step_size: jax.typing.ArrayLike) -> GradientTransformation:
    """Multiply every update by a fixed scalar: `u = step_size * g`.

    Args:
        step_size: the factor (any sign; `scale(-lr)` is a descent step).

    Returns:
        A stateless `GradientTransformation`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale(-0.5)
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]
        Array([-1.], dtype=float32)
    """

    def update(updates, state, params=None):
        check_updates(updates, params=params)
        return jax.tree.map(lambda g: step_size * g, updates), state

    return GradientTransformation(init_empty_state, update)


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiply by a scalar that depends on the step: `u_t = step_size_fn(t) * g_t`.

    The step count `t` starts at 0 and is kept (int32, saturating) in the state; the
    factor is cast to each update's dtype before multiplying, as optax does.

    Args:
        step_size_fn: a function `count -> factor` (a schedule, see `funcbp.optim`).

    Returns:
        A `GradientTransformation` with state `ScaleByScheduleState(count)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale_by_schedule(lambda t: 1.0 / (t + 1))
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.ones(1), state)
        >>> tx.update(jnp.ones(1), state)[0]
        Array([0.5], dtype=float32)
    """
    if not callable(step_size_fn):
        raise TypeError(f"step_size_fn must be callable count -> factor, got {step_size_fn!r}")

    def init(params):
        check_float_leaves(params)
        return ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        check_updates(updates, params=params)
        step_size = step_size_fn(state.count)
        updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return updates, ScaleByScheduleState(count=safe_increment(state.count))

    return GradientTransformation(init, update)


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule | None, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiply by the negative learning rate: `u_t = -lr_t * g_t`.

    A number becomes `scale(-lr)`; a callable `step -> lr` becomes
    `scale_by_schedule(lambda t: -lr(t))`; `None` is the identity.

    Args:
        learning_rate: a non-negative number, or a schedule `step -> lr`.
        flip_sign: multiply by `+lr` instead when False.

    Returns:
        A `GradientTransformation`.

    Raises:
        ValueError: for a negative or NaN number.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale_by_learning_rate(0.1)
        >>> tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))[0]
        Array([-0.1], dtype=float32)
    """
    if learning_rate is None:
        return identity()
    check_rate(learning_rate, "learning_rate")
    m = -1 if flip_sign else 1
    if callable(learning_rate):
        return scale_by_schedule(lambda count: m * learning_rate(count))
    return scale(m * learning_rate)


def trace(
    decay: jax.typing.ArrayLike, nesterov: bool = False, accumulator_dtype: Any = None
) -> GradientTransformation:
    """Heavy-ball momentum (optax's `trace`), optionally Nesterov.

    Formula (buffer `m_{-1} = 0`, `mu = decay`):

        m_t = g_t + mu * m_{t-1}
        u_t = m_t                      (nesterov=False)
        u_t = g_t + mu * m_t           (nesterov=True)

    No dampening and no learning rate inside the buffer; see `torch_trace` for PyTorch's
    variant.

    Args:
        decay: the momentum coefficient `mu >= 0`.
        nesterov: use the Nesterov form of the output.
        accumulator_dtype: dtype of the stored buffer; `None` keeps the params' dtypes.

    Returns:
        A `GradientTransformation` with state `TraceState(trace)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.trace(0.9)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.ones(1), state)
        >>> tx.update(jnp.ones(1), state)[0]
        Array([1.9], dtype=float32)
    """
    check_rate(decay, "decay")

    def init(params):
        check_float_leaves(params)
        return TraceState(trace=_zeros_like(params, accumulator_dtype))

    def update(updates, state, params=None):
        check_updates(updates, state.trace, "state.trace", params)
        f = lambda g, t: g + decay * t
        new_trace = jax.tree.map(f, updates, state.trace)
        updates = jax.tree.map(f, updates, new_trace) if nesterov else new_trace
        return updates, TraceState(trace=_cast(new_trace, accumulator_dtype))

    return GradientTransformation(init, update)


def torch_trace(
    momentum: jax.typing.ArrayLike, dampening: float = 0.0, nesterov: bool = False
) -> GradientTransformation:
    """The momentum buffer of `torch.optim.SGD`, dampening and first step included.

    Formula (`mu = momentum`, `d = dampening`):

        b_0 = g_0                                  (first step: a copy, no dampening)
        b_t = mu * b_{t-1} + (1 - d) * g_t         (t >= 1)
        u_t = b_t                                  (nesterov=False)
        u_t = g_t + mu * b_t                       (nesterov=True)

    With `d = 0` this equals `trace(mu, nesterov)`; `torch_sgd` chains it with weight
    decay and the learning rate.

    Args:
        momentum: `mu >= 0`.
        dampening: `d`, the fraction of each gradient left out of the buffer.
        nesterov: Nesterov output; PyTorch requires `mu > 0` and `d == 0` for it.

    Returns:
        A `GradientTransformation` with state `TorchTraceState(count, trace)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.torch_trace(0.9, dampening=0.5)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.ones(1), state)   # b_0 = g_0 = 1
        >>> tx.update(jnp.ones(1), state)[0]           # 0.9 * 1 + 0.5 * 1
        Array([1.4], dtype=float32)
    """
    check_rate(momentum, "momentum")
    check_rate(dampening, "dampening")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"Nesterov momentum requires momentum > 0 and dampening == 0 (as in "
            f"torch.optim.SGD), got momentum={momentum!r}, dampening={dampening!r}."
        )

    def init(params):
        check_float_leaves(params)
        return TorchTraceState(count=jnp.zeros([], jnp.int32), trace=_zeros_like(params))

    def update(updates, state, params=None):
        check_updates(updates, state.trace, "state.trace", params)
        first = state.count == 0
        new_trace = jax.tree.map(
            lambda g, b: jnp.where(first, g, momentum * b + (1 - dampening) * g),
            updates,
            state.trace,
        )
        if nesterov:
            updates = jax.tree.map(lambda g, b: g + momentum * b, updates, new_trace)
        else:
            updates = new_trace
        new_trace = jax.tree.map(lambda b, old: b.astype(old.dtype), new_trace, state.trace)
        return updates, TorchTraceState(count=safe_increment(state.count), trace=new_trace)

    return GradientTransformation(init, update)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Adam's rescaling (optax's `scale_by_adam`), without the learning rate.

    Formula (`m_{-1} = v_{-1} = 0`, `n = t + 1` the number of steps taken):

        m_t = (1 - b1) * g_t + b1 * m_{t-1}
        v_t = (1 - b2) * g_t^2 + b2 * v_{t-1}
        m^_t = m_t / (1 - b1^n)                                           (nesterov=False)
        m^_t = b1 * m_t / (1 - b1^(n+1)) + (1 - b1) * g_t / (1 - b1^n)    (nesterov=True)
        u_t = m^_t / (sqrt(v_t / (1 - b2^n) + eps_root) + eps)

    `eps` sits outside the square root (as in the Adam paper and PyTorch).

    Args:
        b1: decay of the first moment.
        b2: decay of the second moment.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: dtype of the stored first moment; `None` keeps the params' dtypes.
        nesterov: Nesterov's look-ahead on the first moment (NAdam, Dozat 2016).

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState(count, mu, nu)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale_by_adam()
        >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> round(float(u[0]), 4)  # the first step is g / |g|, up to float32 rounding
        1.0

    Reference: Kingma and Ba, Adam: A Method for Stochastic Optimization, 2014.
    """
    for name, v in (("b1", b1), ("b2", b2), ("eps", eps), ("eps_root", eps_root)):
        check_rate(v, name)

    def init(params):
        check_float_leaves(params)
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32), mu=_zeros_like(params, mu_dtype), nu=_zeros_like(params)
        )

    def update(updates, state, params=None):
        check_updates(updates, state.mu, "state.mu", params)
        mu = jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, updates, state.mu)
        nu = jax.tree.map(lambda g, v: (1 - b2) * abs_sq(g) + b2 * v, updates, state.nu)
        count = safe_increment(state.count)
        # The corrections are computed in float32 and cast after, so that bfloat16 moments
        # get a correction that is not rounded to zero.
        c1, c2 = bias_correction(b1, count), bias_correction(b2, count)
        if nesterov:
            c1_next = bias_correction(b1, safe_increment(count))
            mu_hat = jax.tree.map(
                lambda m, g: (
                    b1 * (m / c1_next.astype(m.dtype)) + (1 - b1) * (g / c1.astype(g.dtype))
                ),
                mu,
                updates,
            )
        else:
            mu_hat = jax.tree.map(lambda m: m / c1.astype(m.dtype), mu)
        updates = jax.tree.map(
            lambda m, v: m / (jnp.sqrt(v / c2.astype(v.dtype) + eps_root) + eps), mu_hat, nu
        )
        mu = _cast(mu, mu_dtype)
        nu = jax.tree.map(lambda v, old: v.astype(old.dtype), nu, state.nu)
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


class EmaState(NamedTuple):
    """State of `ema`: the step count and the moving average, shaped like the params."""

    count: jax.Array  # int32 scalar
    ema: Params


def ema(decay: float, debias: bool = True, accumulator_dtype: Any = None) -> GradientTransformation:
    """Exponential moving average of the updates (optax's `ema`).

    Formula (`e_{-1} = 0`, `n = t + 1`):

        e_t = (1 - decay) * g_t + decay * e_{t-1}
        u_t = e_t / (1 - decay^n)          (debias=True)
        u_t = e_t                          (debias=False)

    Unlike `trace` (`m_t = g_t + mu * m_{t-1}`), the new update enters with weight
    `1 - decay`. Adafactor's optional momentum is `ema(momentum, debias=False)`.

    Args:
        decay: `decay >= 0`.
        debias: divide by `1 - decay^n` (Adam's bias correction).
        accumulator_dtype: dtype of the stored average; `None` keeps the params' dtypes.

    Returns:
        A `GradientTransformation` with state `EmaState(count, ema)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.ema(0.9, debias=False)
        >>> tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))[0]
        Array([0.1], dtype=float32)
    """
    check_rate(decay, "decay")

    def init(params):
        check_float_leaves(params)
        return EmaState(count=jnp.zeros([], jnp.int32), ema=_zeros_like(params, accumulator_dtype))

    def update(updates, state, params=None):
        check_updates(updates, state.ema, "state.ema", params)
        new_ema = jax.tree.map(lambda g, e: (1 - decay) * g + decay * e, updates, state.ema)
        count = safe_increment(state.count)
        if debias:
            c = bias_correction(decay, count)
            updates = jax.tree.map(lambda e: e / c.astype(e.dtype), new_ema)
        else:
            updates = new_ema
        return updates, EmaState(count=count, ema=_cast(new_ema, accumulator_dtype))

    return GradientTransformation(init, update)


__all__ = [
    "EmaState",
    "EmptyState",
    "ScaleByAdamState",
    "ScaleByScheduleState",
    "TorchTraceState",
    "TraceState",
    "ema",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "torch_trace",
    "trace",
]
