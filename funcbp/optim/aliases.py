"""Optimisers as chains of small transformations (never second implementations)."""

from __future__ import annotations

from typing import Any

from funcbp.optim.base import GradientTransformation, ScalarOrSchedule, check_rate, identity
from funcbp.optim.combine import chain
from funcbp.optim.decay import add_decayed_weights
from funcbp.optim.transforms import scale_by_adam, scale_by_learning_rate, torch_trace, trace


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
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
        A `GradientTransformation`; its state is `(TraceState | EmptyState, lr state)`.

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
    first = trace(momentum, nesterov, accumulator_dtype) if momentum is not None else identity()
    return chain(first, scale_by_learning_rate(learning_rate))


def momentum(learning_rate: ScalarOrSchedule, beta: float = 0.9) -> GradientTransformation:
    """Heavy-ball momentum SGD: `sgd(learning_rate, momentum=beta)`.

    Formula: `m_t = g_t + beta * m_{t-1}`, `u_t = -lr_t * m_t`.

    Examples:
        >>> from funcbp import optim
        >>> tx = optim.momentum(0.1, beta=0.9)
    """
    return sgd(learning_rate, momentum=beta)


def nesterov(learning_rate: ScalarOrSchedule, beta: float = 0.9) -> GradientTransformation:
    """Nesterov momentum SGD: `sgd(learning_rate, momentum=beta, nesterov=True)`.

    Formula: `m_t = g_t + beta * m_{t-1}`, `u_t = -lr_t * (g_t + beta * m_t)`.

    Examples:
        >>> from funcbp import optim
        >>> tx = optim.nesterov(0.1, beta=0.9)
    """
    return sgd(learning_rate, momentum=beta, nesterov=True)


def torch_sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> GradientTransformation:
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


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """Adam (optax's `adam`): `chain(scale_by_adam(...), scale_by_learning_rate(lr))`.

    Formula (`n = t + 1`): `m_t = (1-b1) g_t + b1 m_{t-1}`, `v_t = (1-b2) g_t^2 + b2 v_{t-1}`,
    `u_t = -lr_t * (m_t / (1 - b1^n)) / (sqrt(v_t / (1 - b2^n) + eps_root) + eps)`.

    Args:
        learning_rate: a non-negative number or a schedule `step -> lr`.
        b1: decay of the first moment.
        b2: decay of the second moment.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: dtype of the stored first moment; `None` keeps the params'.

    Returns:
        A `GradientTransformation` with state `(ScaleByAdamState, lr state)`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcbp import optim
        >>> tx = optim.adam(1e-3)
        >>> u, _ = tx.update(jnp.array([5.0]), tx.init(jnp.zeros(1)))
        >>> round(float(u[0]), 6)  # the first step is -lr * sign(g)
        -0.001
    """
    check_rate(learning_rate, "learning_rate")
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype),
        scale_by_learning_rate(learning_rate),
    )


__all__ = ["adam", "momentum", "nesterov", "sgd", "torch_sgd"]
