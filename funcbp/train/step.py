"""One jitted training step and one jitted evaluation step.

The train step is a single ``jax.jit``-compiled function with the parameters and the
optimiser state donated (their buffers are reused for the results), returning its metrics as
arrays so the caller decides when to wait for them. The gradient implementation is an
argument: ``funcbp.value_and_grad`` (default) or ``jax.value_and_grad`` for a reference run;
the rest of the step is identical, so the two runs differ only in their gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import funcbp
from funcbp import losses
from funcbp.optim import GradientTransformation, apply_updates, global_norm

__all__ = ["make_eval_step", "make_train_step"]

Batch = tuple[jax.Array, jax.Array]
ApplyFn = Callable[..., jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_stateless(apply_fn: Any) -> None:
    owner = getattr(apply_fn, "__self__", None)
    if getattr(apply_fn, "stateful", False) or getattr(owner, "stateful", False):
        raise ValueError(
            "make_train_step takes a stateless model; this one carries state (BatchNorm). "
            "Use a model without BatchNorm, or write a step that threads the state"
        )


def _bad_labels(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Integer class labels outside ``[0, classes)`` (0 for other kinds of targets)."""
    if jnp.shape(labels) != jnp.shape(logits)[:-1]:
        return jnp.zeros((), jnp.int32)
    return losses.count_bad_labels(labels, jnp.shape(logits)[-1])


def _check_concrete_labels(logits: jax.Array, labels: jax.Array) -> None:
    # Eagerly (jit=False) the labels are concrete: refuse bad ones at once, like the losses.
    if jnp.shape(labels) == jnp.shape(logits)[:-1]:
        losses.check_labels(labels, jnp.shape(logits)[-1], "batch labels")


def make_train_step(
    apply_fn: ApplyFn,
    loss_fn: LossFn,
    optimizer: GradientTransformation,
    grad_fn: Callable = funcbp.value_and_grad,
    *,
    augment_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    l1: float = 0.0,
    l2: float = 0.0,
    penalty_mask: Any = losses.default_weight_mask,
    skip_nonfinite: bool = True,
    jit: bool = True,
) -> Callable[[Any, Any, Batch, jax.Array], tuple[Any, Any, dict]]:
    """Build ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

    The step minimises ``J(p) = loss_fn(apply_fn(p, aug(x), key=k, train=True), y)
    + l1 * sum|w| + l2 * 0.5 * sum w^2`` (penalties over the leaves ``penalty_mask`` keeps,
    weights only by default), with ``(J, g) = grad_fn(J)(p)`` and
    ``u, s = optimizer.update(g, s, p)``, ``p = p + u``.

    Args:
      apply_fn: ``apply_fn(params, x, *, key=None, train=False) -> logits`` (a
        :class:`funcbp.nn.Layer`'s ``apply``).
      loss_fn: ``loss_fn(logits, labels) -> scalar``, e.g.
        ``funcbp.losses.softmax_cross_entropy_with_integer_labels``.
      optimizer: an optax-compatible ``GradientTransformation`` (funcbp.optim or optax).
      grad_fn: ``funcbp.value_and_grad`` (default) or ``jax.value_and_grad`` (reference).
      augment_fn: ``augment_fn(key, x) -> x`` applied to the training batch, e.g.
        ``lambda k, x: funcbp.data.random_shift(k, x, 1)``; None for none.
      l1: L1 penalty coefficient.
      l2: L2 penalty coefficient (``l2 * 0.5 * |w|^2``, i.e. weight decay ``l2`` under SGD).
      penalty_mask: which leaves the penalties cover (see :func:`funcbp.losses.l2_penalty`).
      skip_nonfinite: when the loss or a gradient is NaN/inf, or a label is out of range,
        return the params and optimiser state unchanged (``metrics["finite"]`` is then False
        or ``metrics["bad_labels"]`` non-zero); the trainer stops.
      jit: compile with ``jax.jit``, donating ``params`` and ``opt_state``; the arrays passed
        in are then invalid after the call; use the returned ones.

    Returns:
      The step. ``metrics`` holds scalar arrays ``loss`` (data loss of the batch, without
      penalties), ``objective`` (with them), ``accuracy``, ``grad_norm`` (global L2 norm of the
      gradient), ``finite`` (bool), ``nonfinite`` (a tree like ``params`` of bools, True
      where that leaf's gradient holds a NaN or inf), and ``bad_labels`` (int32: integer
      labels outside ``[0, classes)``, which :func:`funcbp.losses.accuracy` and the integer
      cross-entropy refuse; under ``jit`` they cannot raise, so the trainer checks this count).
      The step also has ``step.locate_nonfinite(params, batch, key)``: the
      :func:`funcbp.find_nonfinite` report of its objective on that batch (eager; for after a
      step whose ``finite`` is False).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn, losses, optim
      >>> from funcbp.train import make_train_step
      >>> model = nn.serial(nn.Flatten(), nn.Dense(3))
      >>> _, params = model.init(jax.random.key(0), (1, 4))
      >>> tx = optim.sgd(0.1)
      >>> step = make_train_step(model.apply, losses.softmax_cross_entropy_with_integer_labels, tx)
      >>> params, state, m = step(params, tx.init(params), (jnp.ones((2, 4)), jnp.array([0, 1])),
      ...                         jax.random.key(1))
      >>> sorted(m)
      ['accuracy', 'bad_labels', 'finite', 'grad_norm', 'loss', 'nonfinite', 'objective']
    """
    _check_stateless(apply_fn)

    def objective(params, x, y, key):
        logits = apply_fn(params, x, key=key, train=True)
        loss = loss_fn(logits, y)
        total = loss
        if l1:
            total = total + l1 * losses.l1_penalty(params, penalty_mask)
        if l2:
            total = total + l2 * losses.l2_penalty(params, penalty_mask)
        return total, (loss, logits)

    def inputs(batch, key):
        x, y = batch
        key_aug, key_model = jax.random.split(key)
        if augment_fn is not None:
            x = augment_fn(key_aug, x)
        return x, y, key_model

    def step(params, opt_state, batch, key):
        x, y, key_model = inputs(batch, key)
        (total, (loss, logits)), grads = grad_fn(objective, has_aux=True)(params, x, y, key_model)
        nonfinite = jax.tree.map(lambda g: ~jnp.all(jnp.isfinite(g)), grads)
        finite = jnp.isfinite(total) & ~jnp.any(jnp.stack(jax.tree.leaves(nonfinite)))
        _check_concrete_labels(logits, y)
        bad_labels = _bad_labels(logits, y)
        updates, new_state = optimizer.update(grads, opt_state, params)
        new_params = apply_updates(params, updates)
        if skip_nonfinite:
            ok = finite & (bad_labels == 0)
            keep = lambda new, old: jnp.where(ok, new, old)
            new_params = jax.tree.map(keep, new_params, params)
            new_state = jax.tree.map(keep, new_state, opt_state)
        metrics = {
            "loss": loss,
            "objective": total,
            "accuracy": losses.accuracy(logits, y),
            "grad_norm": global_norm(grads),
            "finite": finite,
            "nonfinite": nonfinite,
            "bad_labels": bad_labels,
        }
        return new_params, new_state, metrics

    def locate_nonfinite(params, batch, key):
        """Where this step's objective or gradient first turns non-finite on ``batch``:
        :func:`funcbp.find_nonfinite`, eagerly (the trainer calls it after a bad step)."""
        from funcbp.debug import find_nonfinite

        return find_nonfinite(objective, params, *inputs(batch, key), argnums=0, has_aux=True)

    train_step = jax.jit(step, donate_argnums=(0, 1)) if jit else step
    train_step.locate_nonfinite = locate_nonfinite
    return train_step


def make_eval_step(
    apply_fn: ApplyFn, loss_fn: LossFn, *, jit: bool = True
) -> Callable[[Any, Batch], dict]:
    """Build ``eval_step(params, batch) -> {"loss", "accuracy", "count", "bad_labels"}``.

    ``loss`` and ``accuracy`` are means over the batch in inference mode
    (``apply_fn(..., train=False)``, no dropout, no augmentation); ``count`` is the batch
    size, for weighting batch means; ``bad_labels`` counts integer labels outside
    ``[0, classes)`` (:func:`funcbp.train.evaluate` refuses a batch with any).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn, losses
      >>> from funcbp.train import make_eval_step
      >>> model = nn.serial(nn.Flatten(), nn.Dense(3))
      >>> _, params = model.init(jax.random.key(0), (1, 4))
      >>> ev = make_eval_step(model.apply, losses.softmax_cross_entropy_with_integer_labels)
      >>> int(ev(params, (jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)))["count"])
      5
    """
    _check_stateless(apply_fn)

    def eval_step(params, batch):
        x, y = batch
        logits = apply_fn(params, x, train=False)
        _check_concrete_labels(logits, y)
        return {
            "loss": loss_fn(logits, y),
            "accuracy": losses.accuracy(logits, y),
            "count": jnp.asarray(x.shape[0], jnp.int32),
            "bad_labels": _bad_labels(logits, y),
        }

    return jax.jit(eval_step) if jit else eval_step
