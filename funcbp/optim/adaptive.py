"""Per-coordinate rescalings: RMSProp's, Adagrad's and Lion's, each equal to optax's namesake.

Notation as in `transforms`: `g` the incoming update, `u` the outgoing one, `t` the step
count from 0, `n = t + 1`; `g^2` is `|g|^2` for complex `g`. Like `scale_by_adam`, none of
these applies the learning rate: the aliases chain them with `scale_by_learning_rate`.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from funcbp.optim.base import (
    GradientTransformation,
    Params,
    Updates,
    abs_sq,
    check_float_leaves,
    check_rate,
    check_updates,
    safe_increment,
)
from funcbp.optim.base import bias_correction as _bias_correction


class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms` without bias correction: the second moment `nu`."""

    nu: Updates


class ScaleByRmsWithCountState(NamedTuple):
    """State of `scale_by_rms(bias_correction=True)`: step count and second moment."""

    count: jax.Array  # int32 scalar
    nu: Updates


class ScaleByRStdDevState(NamedTuple):
    """State of `scale_by_stddev` without bias correction: first and second moments."""

    mu: Updates
    nu: Updates


class ScaleByRStdDevWithCountState(NamedTuple):
    """State of `scale_by_stddev(bias_correction=True)`: step count and both moments."""

    count: jax.Array  # int32 scalar
    mu: Updates
    nu: Updates


class ScaleByRssState(NamedTuple):
    """State of `scale_by_rss`: the running sum of squared updates."""

    sum_of_squares: Updates


class ScaleByLionState(NamedTuple):
    """State of `scale_by_lion`: step count and momentum `mu`."""

    count: jax.Array  # int32 scalar
    mu: Updates


def _full_like(tree: Any, value: Any, dtype: Any = None) -> Any:
    return jax.tree.map(lambda x: jnp.full_like(x, value, dtype=dtype), tree)


def _cast_like(tree: Any, like: Any) -> Any:
    return jax.tree.map(lambda x, old: x.astype(old.dtype), tree, like)


def _inv_root(eps: Any, eps_in_sqrt: bool):
    """`1 / sqrt(v + eps)` (RMSProp's TF form) or `1 / (sqrt(v) + eps)` (PyTorch's)."""
    if eps_in_sqrt:
        return lambda v: jax.lax.rsqrt(v + eps)
    return lambda v: 1 / (jnp.sqrt(v) + eps)


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """RMSProp's rescaling by the root of a moving average of squares (optax's `scale_by_rms`).

    Formula (`v_{-1} = initial_scale`):

        v_t = (1 - decay) * g_t^2 + decay * v_{t-1}
        v^_t = v_t / (1 - decay^n)  if bias_correction  else  v_t
        u_t = g_t / sqrt(v^_t + eps)      (eps_in_sqrt=True, optax's default)
        u_t = g_t / (sqrt(v^_t) + eps)    (eps_in_sqrt=False, PyTorch's RMSprop)

    With `eps_in_sqrt=False, bias_correction=True` it equals `scale_by_adam(b1=0, b2=decay)`.

    Args:
        decay: decay of the moving average of squares.
        eps: the stabilising constant, inside or outside the square root.
        initial_scale: the starting `v` (PyTorch uses 0, TF1 used 1).
        eps_in_sqrt: where `eps` goes (see the formula).
        bias_correction: divide `v` by `1 - decay^n`.

    Returns:
        A `GradientTransformation` with state `ScaleByRmsState(nu)`, or
        `ScaleByRmsWithCountState(count, nu)` with bias correction.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale_by_rms(decay=0.75, eps=0.0)
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]  # 2 / sqrt(0.25 * 4)
        Array([2.], dtype=float32)

    Reference: Hinton, Neural Networks for Machine Learning, lecture 6e, 2012.
    """
    for name, v in (("decay", decay), ("eps", eps), ("initial_scale", initial_scale)):
        check_rate(v, name)
    inv_root = _inv_root(eps, eps_in_sqrt)
    debias = bias_correction

    def init(params):
        check_float_leaves(params)
        nu = _full_like(params, initial_scale)
        if debias:
            return ScaleByRmsWithCountState(count=jnp.zeros([], jnp.int32), nu=nu)
        return ScaleByRmsState(nu=nu)

    def update(updates, state, params=None):
        check_updates(updates, state.nu, "state.nu", params)
        nu = jax.tree.map(lambda g, v: (1 - decay) * abs_sq(g) + decay * v, updates, state.nu)
        if debias:
            count = safe_increment(state.count)
            c = _bias_correction(decay, count)
            nu_hat = jax.tree.map(lambda v: v / c.astype(v.dtype), nu)
        else:
            nu_hat = nu
        updates = jax.tree.map(lambda v, g: inv_root(v) * g, nu_hat, updates)
        nu = _cast_like(nu, state.nu)
        if debias:
            return updates, ScaleByRmsWithCountState(count=count, nu=nu)
        return updates, ScaleByRmsState(nu=nu)

    return GradientTransformation(init, update)


def scale_by_stddev(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Centred RMSProp's rescaling by a moving standard deviation (optax's `scale_by_stddev`).

    Formula (`m_{-1} = 0`, `v_{-1} = initial_scale`; hats divide by `1 - decay^n` when
    `bias_correction`, otherwise they are the plain averages):

        m_t = (1 - decay) * g_t + decay * m_{t-1}
        v_t = (1 - decay) * g_t^2 + decay * v_{t-1}
        u_t = g_t / sqrt(v^_t - m^_t^2 + eps)      (eps_in_sqrt=True)
        u_t = g_t / (sqrt(v^_t - m^_t^2) + eps)    (eps_in_sqrt=False)

    Args:
        decay: decay of both moving averages.
        eps: the stabilising constant, inside or outside the square root.
        initial_scale: the starting `v`.
        eps_in_sqrt: where `eps` goes.
        bias_correction: divide both averages by `1 - decay^n`.

    Returns:
        A `GradientTransformation` with state `ScaleByRStdDevState(mu, nu)`, or
        `ScaleByRStdDevWithCountState(count, mu, nu)` with bias correction.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale_by_stddev(decay=0.5, eps=0.0)
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]  # 2 / sqrt(2 - 1)
        Array([2.], dtype=float32)

    Reference: Graves, Generating Sequences With Recurrent Neural Networks, 2013.
    """
    for name, v in (("decay", decay), ("eps", eps), ("initial_scale", initial_scale)):
        check_rate(v, name)
    inv_root = _inv_root(eps, eps_in_sqrt)
    debias = bias_correction

    def init(params):
        check_float_leaves(params)
        mu = jax.tree.map(jnp.zeros_like, params)
        nu = _full_like(params, initial_scale)
        if debias:
            return ScaleByRStdDevWithCountState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)
        return ScaleByRStdDevState(mu=mu, nu=nu)

    def update(updates, state, params=None):
        check_updates(updates, state.nu, "state.nu", params)
        mu = jax.tree.map(lambda g, m: (1 - decay) * g + decay * m, updates, state.mu)
        nu = jax.tree.map(lambda g, v: (1 - decay) * abs_sq(g) + decay * v, updates, state.nu)
        if debias:
            count = safe_increment(state.count)
            c = _bias_correction(decay, count)
            mu_hat = jax.tree.map(lambda m: m / c.astype(m.dtype), mu)
            nu_hat = jax.tree.map(lambda v: v / c.astype(v.dtype), nu)
        else:
            mu_hat, nu_hat = mu, nu
        updates = jax.tree.map(lambda m, v, g: inv_root(v - abs_sq(m)) * g, mu_hat, nu_hat, updates)
        mu, nu = _cast_like(mu, state.mu), _cast_like(nu, state.nu)
        if debias:
            return updates, ScaleByRStdDevWithCountState(count=count, mu=mu, nu=nu)
        return updates, ScaleByRStdDevState(mu=mu, nu=nu)

    return GradientTransformation(init, update)


def scale_by_rss(
    initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> GradientTransformation:
    """Adagrad's rescaling by the root of the sum of all squared updates (optax's `scale_by_rss`).

    Formula (`s_{-1} = initial_accumulator_value`):

        s_t = s_{t-1} + g_t^2
        u_t = g_t / sqrt(s_t + eps)   where s_t > 0,   u_t = 0 where s_t = 0

    Args:
        initial_accumulator_value: the starting sum, `>= 0`.
        eps: added inside the square root.

    Returns:
        A `GradientTransformation` with state `ScaleByRssState(sum_of_squares)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
        >>> tx.update(jnp.array([3.0, 0.0]), tx.init(jnp.zeros(2)))[0]
        Array([1., 0.], dtype=float32)

    Reference: Duchi et al., Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization, JMLR 2011.
    """
    check_rate(initial_accumulator_value, "initial_accumulator_value")
    check_rate(eps, "eps")

    def init(params):
        check_float_leaves(params)
        return ScaleByRssState(sum_of_squares=_full_like(params, initial_accumulator_value))

    def update(updates, state, params=None):
        check_updates(updates, state.sum_of_squares, "state.sum_of_squares", params)
        sums = jax.tree.map(lambda g, s: abs_sq(g) + s, updates, state.sum_of_squares)
        # A coordinate that has only ever seen zeros (and started at 0) gets no update
        # rather than 0 / sqrt(eps).
        inv = jax.tree.map(lambda s: jnp.where(s > 0, jax.lax.rsqrt(s + eps), 0.0), sums)
        updates = jax.tree.map(lambda r, g: r * g, inv, updates)
        return updates, ScaleByRssState(sum_of_squares=sums)

    return GradientTransformation(init, update)


def scale_by_lion(
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    *,
    mode: Literal["hard", "smooth", "refined"] = "hard",
    smooth_beta: float = 1.0,
) -> GradientTransformation:
    """Lion's sign update (optax's `scale_by_lion`), without the learning rate.

    Formula (`m_{-1} = 0`):

        c_t = (1 - b1) * g_t + b1 * m_{t-1}
        u_t = sign(c_t)                               (mode="hard", the paper's)
        u_t = tanh(smooth_beta * c_t)                 (mode="smooth")
        u_t = c_t if |c_t| < 1 else sign(c_t)         (mode="refined")
        m_t = (1 - b2) * g_t + b2 * m_{t-1}

    The momentum that sets the direction (`b1`) is not the one that is stored (`b2`).

    Args:
        b1: weight of the momentum in the direction `c_t`.
        b2: decay of the stored momentum.
        mu_dtype: dtype of the stored momentum; `None` keeps the params' dtypes.
        mode: `"hard"`, `"smooth"` or `"refined"` (see the formula).
        smooth_beta: the tanh's slope for `mode="smooth"`.

    Returns:
        A `GradientTransformation` with state `ScaleByLionState(count, mu)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.scale_by_lion()
        >>> tx.update(jnp.array([0.3, -2.0, 0.0]), tx.init(jnp.zeros(3)))[0]
        Array([ 1., -1.,  0.], dtype=float32)

    Reference: Chen et al., Symbolic Discovery of Optimization Algorithms, 2023.
    """
    check_rate(b1, "b1")
    check_rate(b2, "b2")
    squash = {
        "hard": jnp.sign,
        "smooth": lambda c: jnp.tanh(smooth_beta * c),
        "refined": lambda c: jnp.where(jnp.abs(c) < 1.0, c, jnp.sign(c)),
    }.get(mode)
    if squash is None:
        raise ValueError(f"mode must be 'hard', 'smooth' or 'refined', got {mode!r}.")

    def init(params: Params) -> ScaleByLionState:
        check_float_leaves(params)
        mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype), params)
        return ScaleByLionState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update(updates, state, params=None):
        check_updates(updates, state.mu, "state.mu", params)
        new_updates = jax.tree.map(lambda g, m: squash((1 - b1) * g + b1 * m), updates, state.mu)
        mu = jax.tree.map(lambda g, m: (1 - b2) * g + b2 * m, updates, state.mu)
        if mu_dtype is not None:
            mu = jax.tree.map(lambda m: m.astype(mu_dtype), mu)
        return new_updates, ScaleByLionState(count=safe_increment(state.count), mu=mu)

    return GradientTransformation(init, update)


__all__ = [
    "ScaleByLionState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "scale_by_lion",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_stddev",
]
