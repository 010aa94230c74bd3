"""Optimisers as chains of small transformations (never second implementations).

SGD and its momentum forms, PyTorch's SGD, Adam, AdamW and Lion; the RMS-based aliases
(RMSProp, Adagrad, Adafactor) are in `aliases_rms`. Each alias checks its hyperparameters
when called, with errors that name the parameter; the building blocks accept whatever
optax's accept.
"""

from __future__ import annotations

from typing import Any

from funcbp.optim.adaptive import scale_by_lion
from funcbp.optim.base import (
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    check_interval,
    check_rate,
    identity,
)
from funcbp.optim.combine import chain
from funcbp.optim.decay import Mask, add_decayed_weights
from funcbp.optim.transforms import scale_by_adam, scale_by_learning_rate, torch_trace, trace


def check_beta(value: Any, name: str) -> None:
    """A decay rate of a moving average (`b1`, `b2`, `momentum`, `decay`): in `[0, 1)`."""
    check_interval(value, name, 0.0, 1.0)


def check_eps(value: Any, name: str = "eps") -> None:
    """A stabilising constant in a denominator: `> 0`."""
    check_interval(value, name, 0.0, low_open=True)


def check_weight_decay(value: Any, name: str = "weight_decay") -> None:
    """A weight-decay coefficient in an alias: `>= 0`, or a schedule."""
    check_interval(value, name, 0.0, schedule_ok=True)


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> GradientTransformationExtraArgs:
    """Stochastic gradient descent, optionally with (Nesterov) momentum; optax's `sgd`.

    Formula (`lr_t` the learning rate at step t, `mu` the momentum, `m_{-1} = 0`):

        u_t = -lr_t * g_t                                   (momentum=None)
        m_t = g_t + mu * m_{t-1};  u_t = -lr_t * m_t        (nesterov=False)
        m_t = g_t + mu * m_{t-1};  u_t = -lr_t * (g_t + mu * m_t)   (nesterov=True)

    It is `chain(trace(mu, nesterov), scale_by_learning_rate(lr))` (or `identity()` in
    place of `trace` without momentum). For PyTorch's dampening and weight decay see
    `torch_sgd`.

    Args:
        learning_rate: a non-negative number or a schedule `step -> lr`.
        momentum: `mu`, or `None` for plain SGD.
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the momentum buffer; `None` keeps the params'.

    Returns:
        A `GradientTransformationExtraArgs`; its state is `(TraceState | EmptyState, lr state)`.

    Raises:
        ValueError: for a negative learning rate or a momentum outside `[0, 1)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.sgd(0.1, momentum=0.9)
        >>> params = jnp.array([1.0])
        >>> state = tx.init(params)
        >>> u, state = tx.update(jnp.array([1.0]), state, params)
        >>> u, _ = tx.update(jnp.array([1.0]), state, params)
        >>> u  # -0.1 * (1 + 0.9 * 1)
        Array([-0.19], dtype=float32)
    """
    check_rate(learning_rate, "learning_rate")
    if momentum is not None:
        check_beta(momentum, "momentum")
    first = trace(momentum, nesterov, accumulator_dtype) if momentum is not None else identity()
    return chain(first, scale_by_learning_rate(learning_rate))


def momentum(learning_rate: ScalarOrSchedule, beta: float = 0.9) -> GradientTransformationExtraArgs:
    """Heavy-ball momentum SGD: `sgd(learning_rate, momentum=beta)`.

    Formula: `m_t = g_t + beta * m_{t-1}`, `u_t = -lr_t * m_t`.

    Examples:
        >>> from funcbp import optim
        >>> tx = optim.momentum(0.1, beta=0.9)
    """
    check_beta(beta, "beta")
    return sgd(learning_rate, momentum=beta)


def nesterov(learning_rate: ScalarOrSchedule, beta: float = 0.9) -> GradientTransformationExtraArgs:
    """Nesterov momentum SGD: `sgd(learning_rate, momentum=beta, nesterov=True)`.

    Formula: `m_t = g_t + beta * m_{t-1}`, `u_t = -lr_t * (g_t + beta * m_t)`.

    Examples:
        >>> from funcbp import optim
        >>> tx = optim.nesterov(0.1, beta=0.9)
    """
    check_beta(beta, "beta")
    return sgd(learning_rate, momentum=beta, nesterov=True)


def torch_sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> GradientTransformationExtraArgs:
    """`torch.optim.SGD`, step for step: same arguments, same update.

    Formula (PyTorch's documented algorithm; `wd`, `mu`, `d` the arguments):

        g_t <- g_t + wd * p_t                           (L2 term, before momentum)
        b_0 = g_0;  b_t = mu * b_{t-1} + (1 - d) * g_t  (if mu != 0)
        g_t <- g_t + mu * b_t  if nesterov  else  b_t   (if mu != 0)
        u_t = -lr_t * g_t

    It is `chain(add_decayed_weights(wd), torch_trace(mu, d, nesterov),
    scale_by_learning_rate(lr))`, leaving out the parts that are switched off. With
    `d = 0` and `wd = 0` it equals `sgd(lr, mu or None, nesterov)`; see docs/optim.md,
    "Porting a PyTorch SGD recipe". A schedule `step -> lr` plays the part of an
    `lr_scheduler` stepped once per optimiser step: `lr(t)` is the rate of the t-th
    `optimizer.step()`, counting from 0.

    Args:
        learning_rate: a non-negative number or a schedule `step -> lr`.
        momentum: `mu >= 0` (0 turns momentum off, as in PyTorch).
        dampening: `d`.
        nesterov: Nesterov momentum; needs `mu > 0` and `d == 0` (PyTorch's rule).
        weight_decay: `wd >= 0`, added to the gradient as `wd * p`.

    Returns:
        A `GradientTransformation`; `update` needs `params` when `weight_decay != 0`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.torch_sgd(0.1, momentum=0.9, dampening=0.1, weight_decay=1e-4)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    """
    check_rate(learning_rate, "learning_rate")
    check_rate(weight_decay, "weight_decay")
    check_rate(momentum, "momentum")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            "Nesterov momentum requires a momentum > 0 and zero dampening (as in "
            f"torch.optim.SGD), got momentum={momentum!r}, dampening={dampening!r}."
        )
    parts = []
    if weight_decay != 0:
        parts.append(add_decayed_weights(weight_decay))
    if momentum != 0:
        parts.append(torch_trace(momentum, dampening, nesterov))
    return chain(*parts, scale_by_learning_rate(learning_rate))


def _check_adam(learning_rate, b1, b2, eps, eps_root) -> None:
    check_rate(learning_rate, "learning_rate")
    check_beta(b1, "b1")
    check_beta(b2, "b2")
    check_eps(eps)
    check_interval(eps_root, "eps_root", 0.0)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> GradientTransformationExtraArgs:
    """Adam (optax's `adam`): `chain(scale_by_adam(...), scale_by_learning_rate(lr))`.

    Formula (`n = t + 1`): `m_t = (1-b1) g_t + b1 m_{t-1}`, `v_t = (1-b2) g_t^2 + b2 v_{t-1}`,
    `u_t = -lr_t * (m_t / (1 - b1^n)) / (sqrt(v_t / (1 - b2^n) + eps_root) + eps)`;
    `nesterov=True` is NAdam (see `scale_by_adam`).

    Args:
        learning_rate: a non-negative number or a schedule `step -> lr`.
        b1: decay of the first moment, in `[0, 1)`.
        b2: decay of the second moment, in `[0, 1)`.
        eps: added to the denominator outside the square root, `> 0`.
        eps_root: added inside the square root, `>= 0`.
        mu_dtype: dtype of the stored first moment; `None` keeps the params'.
        nesterov: use Nesterov momentum (NAdam).

    Returns:
        A `GradientTransformationExtraArgs` with state `(ScaleByAdamState, lr state)`.

    Raises:
        ValueError: naming the first hyperparameter out of range.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.adam(1e-3)
        >>> u, _ = tx.update(jnp.array([5.0]), tx.init(jnp.zeros(1)))
        >>> round(float(u[0]), 6)  # the first step is -lr * sign(g)
        -0.001

    Reference: Kingma and Ba, Adam: A Method for Stochastic Optimization, 2014.
    """
    _check_adam(learning_rate, b1, b2, eps, eps_root)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask = None,
    *,
    nesterov: bool = False,
) -> GradientTransformationExtraArgs:
    """AdamW: Adam with decoupled weight decay (optax's `adamw`).

    Formula (`a_t` Adam's direction from `scale_by_adam`, `wd` the weight decay):

        u_t = -lr_t * (a_t + wd * p_t)        (wd * p_t only on the leaves `mask` selects)

    The decay is added after Adam's rescaling, so it is not divided by `sqrt(v)`; it is
    multiplied by the learning rate, as in optax and PyTorch (Loshchilov and Hutter scale it
    by the schedule's multiplier only). It is `chain(scale_by_adam(...),
    add_decayed_weights(wd, mask), scale_by_learning_rate(lr))`.

    Args:
        learning_rate: a non-negative number or a schedule `step -> lr`.
        b1: decay of the first moment, in `[0, 1)`.
        b2: decay of the second moment, in `[0, 1)`.
        eps: added to the denominator outside the square root, `> 0`.
        eps_root: added inside the square root, `>= 0`.
        mu_dtype: dtype of the stored first moment; `None` keeps the params'.
        weight_decay: `wd >= 0`, or a schedule `step -> wd`.
        mask: which parameters decay: a tree of booleans shaped like the params (or a prefix
            of it), or a function `params -> such a tree`; `None` for all. Adam itself
            applies to every parameter.
        nesterov: use Nesterov momentum (NAdamW).

    Returns:
        A `GradientTransformationExtraArgs` with state
        `(ScaleByAdamState, decay state, lr state)`; `update` needs `params`.

    Raises:
        ValueError: naming the first hyperparameter out of range.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
        >>> no_bias = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
        >>> tx = optim.adamw(1e-3, weight_decay=0.1, mask=no_bias)
        >>> grads = jax.tree.map(jnp.ones_like, params)
        >>> u, _ = tx.update(grads, tx.init(params), params)
        >>> round(float(u["w"][0, 0]), 7), round(float(u["b"][0]), 7)  # -lr (1 + 0.1), -lr
        (-0.0011, -0.001)

    Reference: Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
    """
    _check_adam(learning_rate, b1, b2, eps, eps_root)
    check_weight_decay(weight_decay)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def lion(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Mask = None,
) -> GradientTransformationExtraArgs:
    """Lion, the sign-momentum optimiser (optax's `lion`).

    Formula (`m_{-1} = 0`):

        c_t = (1 - b1) * g_t + b1 * m_{t-1}
        u_t = -lr_t * (sign(c_t) + wd * p_t)
        m_t = (1 - b2) * g_t + b2 * m_{t-1}

    Every coordinate moves by `lr` (plus decay), so Lion's learning rate is typically
    3-10x smaller than AdamW's and its weight decay 3-10x larger. It is
    `chain(scale_by_lion(b1, b2), add_decayed_weights(wd, mask), scale_by_learning_rate(lr))`.

    Args:
        learning_rate: a non-negative number or a schedule `step -> lr`.
        b1: weight of the momentum in the update's direction, in `[0, 1)`.
        b2: decay of the stored momentum, in `[0, 1)`.
        mu_dtype: dtype of the stored momentum; `None` keeps the params'.
        weight_decay: `wd >= 0`, or a schedule.
        mask: which parameters decay (as for `adamw`); `None` for all.

    Returns:
        A `GradientTransformationExtraArgs` with state
        `(ScaleByLionState, decay state, lr state)`; `update` needs `params`.

    Raises:
        ValueError: naming the first hyperparameter out of range.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.lion(0.5, weight_decay=0.0)
        >>> p = jnp.zeros(2)
        >>> tx.update(jnp.array([0.01, -2.0]), tx.init(p), p)[0]  # -lr * sign(g)
        Array([-0.5,  0.5], dtype=float32)

    Reference: Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023.
    """
    check_rate(learning_rate, "learning_rate")
    check_beta(b1, "b1")
    check_beta(b2, "b2")
    check_weight_decay(weight_decay)
    return chain(
        scale_by_lion(b1, b2, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


__all__ = ["adam", "adamw", "lion", "momentum", "nesterov", "sgd", "torch_sgd"]
