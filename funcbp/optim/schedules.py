"""Learning-rate schedules: functions `step -> value`, with optax's signatures and values.

A schedule takes the step count `t` (a Python int or an int32 array; the count starts at 0
on the first update) and returns a value. Any such callable is accepted wherever a
learning rate is, e.g. `sgd(cosine_decay_schedule(0.1, 1000))`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from funcbp.optim.base import Schedule

ArrayLike = jax.typing.ArrayLike


def constant_schedule(value: ArrayLike) -> Schedule:
    """`lr(t) = value`.

    Examples:
        >>> from funcbp import optim
        >>> optim.constant_schedule(0.1)(50)
        0.1
    """
    return lambda count: value


def polynomial_schedule(
    init_value: ArrayLike,
    end_value: ArrayLike,
    power: ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Polynomial interpolation from `init_value` to `end_value`.

    Formula (`T = transition_steps`, `B = transition_begin`):
    `s = clip(t - B, 0, T)`, `lr(t) = (init - end) * (1 - s / T)^power + end`.
    A `T <= 0` gives the constant `init_value` (as optax); a negative `B` counts as 0.

    Examples:
        >>> from funcbp import optim
        >>> float(optim.polynomial_schedule(1.0, 0.0, 2, 10)(5))
        0.25
    """
    if transition_steps <= 0:
        return lambda count: init_value
    transition_begin = max(transition_begin, 0)

    def schedule(count):
        count = jnp.clip(count - transition_begin, 0, transition_steps)
        frac = 1 - count / transition_steps
        return (init_value - end_value) * (frac**power) + end_value

    return schedule


def linear_schedule(
    init_value: ArrayLike, end_value: ArrayLike, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear ramp from `init_value` (at `t <= B`) to `end_value` (at `t >= B + T`).

    Formula: `lr(t) = (init - end) * (1 - clip(t - B, 0, T) / T) + end`. Used for warmup.

    Examples:
        >>> from funcbp import optim
        >>> float(optim.linear_schedule(0.0, 1.0, 4)(1))
        0.25
    """
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: dict[int, float] | None = None
) -> Schedule:
    """Multiply the value by `scale` from each boundary step on.

    Formula: `lr(t) = init * prod(scale_b for each boundary b <= t)`: the new value takes
    effect at `t == b` (optax's convention).

    Args:
        init_value: the value before the first boundary.
        boundaries_and_scales: `{step: factor}`, factors `>= 0`.

    Examples:
        >>> from funcbp import optim
        >>> s = optim.piecewise_constant_schedule(1.0, {10: 0.1, 20: 0.1})
        >>> round(float(s(9)), 6), round(float(s(10)), 6), round(float(s(20)), 6)
        (1.0, 0.1, 0.01)
    """
    if boundaries_and_scales is not None:
        bad = {b: s for b, s in boundaries_and_scales.items() if not s >= 0.0}
        if bad:
            raise ValueError(f"piecewise_constant_schedule needs scales >= 0, got {bad}")
    items = sorted((boundaries_and_scales or {}).items())

    def schedule(count):
        v = init_value
        for boundary, factor in items:
            below = jnp.maximum(0.0, jnp.sign(boundary - count))  # 1 before, 0 from boundary on
            v = v * below + (1 - below) * factor * v
        return v

    return schedule


def step_decay(init_value: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """PyTorch's `StepLR`: `lr(t) = init * gamma ** floor(t / step_size)`.

    The same as `exponential_decay(init, step_size, gamma, staircase=True)`.

    Examples:
        >>> from funcbp import optim
        >>> float(optim.step_decay(1.0, step_size=10, gamma=0.5)(25))
        0.25
    """
    if step_size <= 0:
        raise ValueError(f"step_decay needs step_size > 0, got {step_size!r}")
    return exponential_decay(init_value, step_size, gamma, staircase=True)


def exponential_decay(
    init_value: ArrayLike,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    """Exponential decay after `transition_begin`, optionally in stairs and bounded.

    Formula: `p = (t - B) / T` (floored if `staircase`), `lr(t) = init` for `t <= B`,
    else `init * decay_rate^p`, clipped at `end_value` (from below when decaying, from
    above when `decay_rate > 1`). `T <= 0` or `decay_rate == 0` give the constant `init`
    (optax's convention).

    Examples:
        >>> from funcbp import optim
        >>> float(optim.exponential_decay(1.0, transition_steps=10, decay_rate=0.5)(20))
        0.25
    """
    if transition_steps <= 0 or decay_rate == 0:
        return lambda count: init_value
    transition_begin = max(transition_begin, 0)
    clip_fn = jnp.maximum if decay_rate < 1.0 else jnp.minimum

    def schedule(count):
        decreased_count = count - transition_begin
        p = decreased_count / transition_steps
        if staircase:
            p = jnp.floor(p)
        value = jnp.where(decreased_count <= 0, init_value, init_value * jnp.power(decay_rate, p))
        return value if end_value is None else clip_fn(value, end_value)

    return schedule


def cosine_decay_schedule(
    init_value: ArrayLike, decay_steps: int, alpha: ArrayLike = 0.0, exponent: ArrayLike = 1.0
) -> Schedule:
    """Cosine decay from `init_value` to `alpha * init_value` over `decay_steps`, then flat.

    Formula: `c = 0.5 * (1 + cos(pi * min(t, D) / D))`,
    `lr(t) = init * ((1 - alpha) * c^exponent + alpha)`.

    Examples:
        >>> from funcbp import optim
        >>> round(float(optim.cosine_decay_schedule(1.0, decay_steps=10)(5)), 6)
        0.5
    """
    if not decay_steps > 0:
        raise ValueError(f"cosine_decay_schedule needs decay_steps > 0, got {decay_steps!r}")

    def schedule(count):
        # Python ints become floats so that large counts do not overflow int32.
        steps = float(decay_steps) if isinstance(decay_steps, int) else decay_steps
        count = float(count) if isinstance(count, int) else count
        count = jnp.minimum(count, steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * count / steps))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run `schedules[i]` from `boundaries[i-1]` on, each restarted at its own step 0.

    Formula: `lr(t) = schedules[i](t - boundaries[i-1])` for the last `i` with
    `boundaries[i-1] <= t` (`schedules[0](t)` before the first boundary).

    Examples:
        >>> from funcbp import optim
        >>> s = optim.join_schedules([optim.constant_schedule(1.0),
        ...                           optim.linear_schedule(1.0, 0.0, 10)], [5])
        >>> float(s(10))
        0.5
    """
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(
            f"join_schedules needs one more schedule than boundaries, got {len(schedules)} "
            f"schedules and {len(boundaries)} boundaries"
        )

    def schedule(step):
        output = schedules[0](step)
        for boundary, later in zip(boundaries, schedules[1:], strict=True):
            output = jnp.where(step < boundary, output, later(step - boundary))
        return output

    return schedule


def warmup_cosine_decay_schedule(
    init_value: ArrayLike,
    peak_value: ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
) -> Schedule:
    """Linear warmup from `init_value` to `peak_value`, then cosine decay to `end_value`.

    Formula: `linear_schedule(init, peak, W)` for `t < W`, then
    `cosine_decay_schedule(peak, D - W, alpha=end/peak, exponent)(t - W)`; `decay_steps`
    `D` counts the warmup, as in optax.

    Examples:
        >>> from funcbp import optim
        >>> s = optim.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110)
        >>> float(s(5)), float(s(10)), float(s(110))
        (0.5, 1.0, 0.0)
    """
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent),
        ],
        [warmup_steps],
    )


def warmup_exponential_decay_schedule(
    init_value: ArrayLike,
    peak_value: ArrayLike,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    """Linear warmup to `peak_value`, then `exponential_decay` restarted at `warmup_steps`.

    Examples:
        >>> from funcbp import optim
        >>> s = optim.warmup_exponential_decay_schedule(0.0, 1.0, 10, 10, 0.5)
        >>> float(s(20))
        0.5
    """
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            exponential_decay(
                peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
            ),
        ],
        [warmup_steps],
    )


__all__ = [
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "step_decay",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]
