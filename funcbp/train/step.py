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
from funcbp.optim import GradientTransformation, apply_updates, global_norm, tree_get
from funcbp.train.checkpoint import key_path_str
from funcbp.train.precision import (
    LossScaledState,
    cast_floating,
    compute_dtype,
    init_loss_scale,
    update_loss_scale,
)

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
    if jnp.shape(labels) != jnp.shape(logits)[:-1] or not _is_integer(labels):
        return jnp.zeros((), jnp.int32)
    return losses.count_bad_labels(labels, jnp.shape(logits)[-1])


def _check_concrete_labels(logits: jax.Array, labels: jax.Array) -> None:
    # Eagerly (jit=False) the labels are concrete: refuse bad ones at once, like the losses.
    if jnp.shape(labels) == jnp.shape(logits)[:-1] and _is_integer(labels):
        losses.check_labels(labels, jnp.shape(logits)[-1], "batch labels")


def _is_integer(labels: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(labels), jnp.integer)


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array | None:
    """Classification accuracy when ``labels`` are integer class indices; None for other
    targets (regression, soft labels), whose accuracy would mean nothing."""
    if jnp.ndim(logits) < 1:
        return None
    if jnp.shape(labels) == jnp.shape(logits)[:-1] and _is_integer(labels):
        return losses.accuracy(logits, labels)
    return None


def _layer_norms(grads: Any) -> dict[str, jax.Array]:
    """``{"dense_0/w": |g|}``: the L2 norm of each gradient leaf, by key path."""
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    return {key_path_str(path): jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
            for path, g in flat}


def _read_state(state: Any, name: str) -> jax.Array | None:
    """``name`` from the optimiser state: a monitor's record or an injected hyperparameter
    (``inject_hyperparams`` of a schedule keeps the schedule's state under the same name)."""
    try:
        return tree_get(state, name)
    except KeyError:
        pass
    try:
        hyper = tree_get(state, "hyperparams")
    except KeyError:  # two injected optimisers: no single value to report
        return None
    return hyper.get(name) if isinstance(hyper, dict) else None


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
    precision: str = "f32",
    layer_norms: bool = False,
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
      precision: ``"f32"``; ``"bf16"`` or ``"f16"`` run the model in that dtype on float32
        master weights (:mod:`funcbp.train.precision`): floating parameters and inputs are
        cast down inside the step, outputs cast back to float32 before the loss, and the
        gradient reaches the float32 parameters through the casts. ``"f16"`` adds dynamic loss
        scaling: its ``opt_state`` is a :class:`~funcbp.train.precision.LossScaledState`
        (make it with ``step.init_opt_state(params)``); a step whose scaled gradient overflows
        is skipped and the scale halved, without stopping training.
      layer_norms: also return ``metrics["layer_grad_norms"]``, ``{"dense_0/w": |g|}``.

    Returns:
      The step. ``metrics`` holds scalar arrays ``loss`` (data loss of the batch, without
      penalties), ``objective`` (with them), ``accuracy``, ``grad_norm`` (global L2 norm of the
      gradient), ``finite`` (bool), ``nonfinite`` (a tree like ``params`` of bools, True
      where that leaf's gradient holds a NaN or inf), and ``bad_labels`` (int32: integer
      labels outside ``[0, classes)``, which :func:`funcbp.losses.accuracy` and the integer
      cross-entropy refuse; under ``jit`` they cannot raise, so the trainer checks this count).
      ``accuracy`` is there only for integer class labels; ``lr`` when the
      optimiser state holds a ``learning_rate`` (``inject_hyperparams``); ``grad_norm`` is
      read from a ``monitor_global_norm`` in the optimiser when there is one; with
      ``precision="f16"``, ``loss_scale`` and ``overflow`` (the step was skipped).
      The step also has ``step.init_opt_state(params)`` (the optimiser's ``init``, plus the
      loss scale for ``"f16"``) and ``step.locate_nonfinite(params, batch, key)``: the
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
    dtype = compute_dtype(precision)
    mixed, scaled = precision != "f32", precision == "f16"

    def forward(params, x, key, train):
        if not mixed:
            return apply_fn(params, x, key=key, train=train)
        out = apply_fn(cast_floating(params, dtype), cast_floating(x, dtype), key=key,
                       train=train)
        return cast_floating(out, jnp.float32)

    def objective(params, x, y, key, scale=None):
        logits = forward(params, x, key, True)
        loss = loss_fn(logits, y)
        total = loss
        if l1:
            total = total + l1 * losses.l1_penalty(params, penalty_mask)
        if l2:
            total = total + l2 * losses.l2_penalty(params, penalty_mask)
        if scale is not None:  # float16: differentiate S * J so small gradients survive
            return total * scale, (total, loss, logits)
        return total, (total, loss, logits)

    def inputs(batch, key):
        x, y = batch
        key_aug, key_model = jax.random.split(key)
        if augment_fn is not None:
            x = augment_fn(key_aug, x)
        return x, y, key_model

    def step(params, opt_state, batch, key):
        x, y, key_model = inputs(batch, key)
        if scaled:
            inner, loss_scale = opt_state
            (_, (total, loss, logits)), grads = grad_fn(objective, has_aux=True)(
                params, x, y, key_model, loss_scale.scale)
            grads = jax.tree.map(lambda g: g / loss_scale.scale.astype(g.dtype), grads)
        else:
            inner = opt_state
            (_, (total, loss, logits)), grads = grad_fn(objective, has_aux=True)(
                params, x, y, key_model)
        nonfinite = jax.tree.map(lambda g: ~jnp.all(jnp.isfinite(g)), grads)
        grads_finite = ~jnp.any(jnp.stack(jax.tree.leaves(nonfinite)))
        finite = jnp.isfinite(total) & grads_finite
        _check_concrete_labels(logits, y)
        bad_labels = _bad_labels(logits, y)
        updates, new_inner = optimizer.update(grads, inner, params)
        new_params = apply_updates(params, updates)
        metrics = {"loss": loss, "objective": total}
        accuracy = _accuracy(logits, y)
        if accuracy is not None:
            metrics["accuracy"] = accuracy
        monitored = _read_state(new_inner, "grad_norm")
        metrics["grad_norm"] = global_norm(grads) if monitored is None else monitored
        lr = _read_state(new_inner, "learning_rate")
        if lr is not None and jnp.ndim(lr) == 0:
            metrics["lr"] = lr
        ok = finite & (bad_labels == 0)
        if scaled:
            # An overflow of the scaled gradient is routine: skip the step, halve the scale,
            # go on. Only a non-finite loss, or an overflow at the smallest scale, stops.
            overflow = ~grads_finite & jnp.isfinite(total)
            finite = jnp.isfinite(total) & (grads_finite | (loss_scale.scale > 1.0))
            new_scale = update_loss_scale(loss_scale, grads_finite)
            metrics.update(loss_scale=loss_scale.scale, overflow=overflow)
        if skip_nonfinite or scaled:
            keep = lambda new, old: jnp.where(ok, new, old)
            new_params = jax.tree.map(keep, new_params, params)
            new_inner = jax.tree.map(keep, new_inner, inner)
        new_state = LossScaledState(new_inner, new_scale) if scaled else new_inner
        metrics.update(finite=finite, nonfinite=nonfinite, bad_labels=bad_labels)
        if layer_norms:
            metrics["layer_grad_norms"] = _layer_norms(grads)
        return new_params, new_state, metrics

    def locate_nonfinite(params, batch, key):
        """Where this step's objective or gradient first turns non-finite on ``batch``:
        :func:`funcbp.find_nonfinite`, eagerly (the trainer calls it after a bad step)."""
        from funcbp.debug import find_nonfinite

        return find_nonfinite(objective, params, *inputs(batch, key), argnums=0, has_aux=True)

    def init_opt_state(params):
        """The state ``step`` takes: ``optimizer.init(params)`` (with the loss scale, f16)."""
        state = optimizer.init(params)
        return LossScaledState(state, init_loss_scale()) if scaled else state

    train_step = jax.jit(step, donate_argnums=(0, 1)) if jit else step
    train_step.locate_nonfinite = locate_nonfinite
    train_step.init_opt_state = init_opt_state
    return train_step


def make_eval_step(
    apply_fn: ApplyFn, loss_fn: LossFn, *, jit: bool = True, precision: str = "f32"
) -> Callable[[Any, Batch], dict]:
    """Build ``eval_step(params, batch) -> {"loss", "accuracy", "count", "bad_labels"}``.

    ``loss`` and ``accuracy`` are means over the batch in inference mode
    (``apply_fn(..., train=False)``, no dropout, no augmentation); ``count`` is the batch
    size, for weighting batch means; ``bad_labels`` counts integer labels outside
    ``[0, classes)`` (:func:`funcbp.train.evaluate` refuses a batch with any). ``accuracy`` is
    left out for targets that are not class labels; ``precision`` as in
    :func:`make_train_step`.

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
    dtype = compute_dtype(precision)

    def eval_step(params, batch):
        x, y = batch
        if precision == "f32":
            logits = apply_fn(params, x, train=False)
        else:
            logits = cast_floating(apply_fn(cast_floating(params, dtype), cast_floating(x, dtype),
                                            train=False), jnp.float32)
        _check_concrete_labels(logits, y)
        out = {"loss": loss_fn(logits, y)}
        accuracy = _accuracy(logits, y)
        if accuracy is not None:
            out["accuracy"] = accuracy
        out.update(count=jnp.asarray(jnp.shape(x)[0], jnp.int32), bad_labels=_bad_labels(logits, y))
        return out

    return jax.jit(eval_step) if jit else eval_step
