"""Losses, weight penalties and metrics: pure functions of arrays and parameter pytrees.

Losses compute one value per example (the batch is the first axis; any further axes of a
regression/binary target are averaged within the example) and then reduce over the batch
with ``reduction="mean"`` (default), ``"sum"`` or ``"none"``. Values match optax's
``squared_error``, ``sigmoid_binary_cross_entropy``, ``softmax_cross_entropy``,
``softmax_cross_entropy_with_integer_labels``, ``hinge_loss`` and ``l2_loss`` averaged the
same way. Losses on logits are stable for logits of any size (no NaN/inf in values or
gradients at +-1e4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

Reduction = Literal["mean", "sum", "none"]

__all__ = [
    "LabelRangeError",
    "Reduction",
    "accuracy",
    "binary_cross_entropy",
    "check_labels",
    "count_bad_labels",
    "default_weight_mask",
    "hinge",
    "l1_penalty",
    "l2_penalty",
    "mse",
    "sigmoid_binary_cross_entropy",
    "smooth_labels",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "top_k_accuracy",
]


class LabelRangeError(ValueError):
    """Integer class labels outside ``[0, classes)``; the message gives the count and range."""


def count_bad_labels(labels: ArrayLike, num_classes: int) -> jax.Array:
    """The number of integer labels outside ``[0, num_classes)``, as an int32 array.

    Works under ``jax.jit`` (the trainer returns it in the step's metrics and stops on a
    non-zero count); 0 for float (one-hot, soft or regression) labels.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> int(losses.count_bad_labels(jnp.array([0, 9, 10, -1]), 10))
      2
    """
    y = jnp.asarray(labels)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        return jnp.zeros((), jnp.int32)
    return jnp.sum((y < 0) | (y >= num_classes), dtype=jnp.int32)


def _range_message(bad: int, total: int, num_classes: int, low: int, high: int) -> str:
    return (f"{bad} of {total} labels are outside [0, {num_classes}) (smallest {low}, largest "
            f"{high}); the model has {num_classes} classes, so labels must be 0..{num_classes - 1}"
            f" (1-based labels? subtract 1)")


def check_labels(labels: ArrayLike, num_classes: int, name: str = "labels") -> None:
    """Raise :class:`LabelRangeError` if a concrete integer label is outside ``[0, classes)``.

    Does nothing for traced labels (inside ``jax.jit``: see :func:`count_bad_labels`) and for
    float labels.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> losses.check_labels(jnp.array([1, 10]), 10)
      Traceback (most recent call last):
      ...
      funcbp.losses.LabelRangeError: labels: 1 of 2 labels are outside [0, 10) (smallest 1, \
largest 10); the model has 10 classes, so labels must be 0..9 (1-based labels? subtract 1)
    """
    if isinstance(labels, jax.core.Tracer):
        return
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer) or y.size == 0:
        return
    bad = int(np.sum((y < 0) | (y >= num_classes)))
    if bad:
        raise LabelRangeError(f"{name}: " + _range_message(bad, y.size, num_classes,
                                                            int(y.min()), int(y.max())))


def _reduce(per_example: jax.Array, reduction: Reduction) -> jax.Array:
    if reduction == "mean":
        return jnp.mean(per_example)
    if reduction == "sum":
        return jnp.sum(per_example)
    if reduction == "none":
        return per_example
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _per_example(elementwise: jax.Array) -> jax.Array:
    """Average an elementwise loss over every axis but the first (the batch)."""
    return jnp.mean(elementwise, axis=tuple(range(1, elementwise.ndim)))


def _same_shape(name: str, a: jax.Array, b: jax.Array, an: str, bn: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: {an} has shape {a.shape} but {bn} has shape {b.shape}; "
                         f"they must match")


def mse(predictions: ArrayLike, targets: ArrayLike, reduction: Reduction = "mean"
        ) -> jax.Array:
    """Mean squared error, ``mean_i (p_i - t_i)^2`` (mean of ``optax.squared_error``).

    Args:
      predictions: ``(batch, ...)``.
      targets: same shape.
      reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` for one value per example.

    Returns:
      A scalar, or ``(batch,)`` with ``reduction="none"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> float(losses.mse(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0])))
      2.5
    """
    p, t = jnp.asarray(predictions), jnp.asarray(targets)
    _same_shape("mse", p, t, "predictions", "targets")
    return _reduce(_per_example(jnp.square(p - t)), reduction)


def binary_cross_entropy(probs: ArrayLike, labels: ArrayLike, reduction: Reduction = "mean",
                         eps: float = 1e-7) -> jax.Array:
    """Binary cross-entropy from probabilities, ``-(y log p + (1 - y) log(1 - p))``.

    ``p`` is clipped to ``[eps, 1 - eps]`` so that ``p = 0`` or ``1`` stays finite (with zero
    gradient outside the clip). Prefer :func:`sigmoid_binary_cross_entropy` on logits.

    Args:
      probs: predicted probabilities ``(batch, ...)``.
      labels: targets in ``[0, 1]``, same shape.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
      eps: clipping margin.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> round(float(losses.binary_cross_entropy(jnp.array([0.5]), jnp.array([1.0]))), 4)
      0.6931
    """
    p, y = jnp.asarray(probs), jnp.asarray(labels)
    _same_shape("binary_cross_entropy", p, y, "probs", "labels")
    p = jnp.clip(p, eps, 1 - eps)
    return _reduce(_per_example(-(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))), reduction)


def sigmoid_binary_cross_entropy(logits: ArrayLike, labels: ArrayLike,
                                 reduction: Reduction = "mean") -> jax.Array:
    """Binary cross-entropy from logits, ``-(y log sigmoid(x) + (1 - y) log sigmoid(-x))``.

    Same as ``optax.sigmoid_binary_cross_entropy``; ``log sigmoid(x) = -softplus(-x)`` is
    computed without overflow, and the gradient is ``sigmoid(x) - y``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> float(losses.sigmoid_binary_cross_entropy(jnp.array([1e4]), jnp.array([1.0])))
      0.0
    """
    x, y = jnp.asarray(logits), jnp.asarray(labels)
    _same_shape("sigmoid_binary_cross_entropy", x, y, "logits", "labels")
    # log sigmoid(x) = -softplus(-x) never overflows; jax's softplus is exact at the kink x=0.
    elementwise = -(y * jax.nn.log_sigmoid(x) + (1 - y) * jax.nn.log_sigmoid(-x))
    return _reduce(_per_example(elementwise), reduction)


def _log_softmax(logits: jax.Array) -> jax.Array:
    # The max is a constant shift (softmax does not depend on it), so no gradient through it.
    shifted = logits - lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, reduction: Reduction = "mean"
                          ) -> jax.Array:
    """Cross-entropy with one-hot or soft labels, ``-sum_c y_c log softmax(x)_c``.

    Args:
      logits: ``(batch, ..., classes)``.
      labels: probabilities over classes, same shape (rows summing to 1).
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (then shape ``logits.shape[:-1]``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> float(losses.softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]])))
      0.6931471824645996
    """
    x, y = jnp.asarray(logits), jnp.asarray(labels)
    _same_shape("softmax_cross_entropy", x, y, "logits", "labels")
    return _reduce(-jnp.sum(y * _log_softmax(x), axis=-1), reduction)


def softmax_cross_entropy_with_integer_labels(logits: ArrayLike, labels: ArrayLike,
                                              reduction: Reduction = "mean") -> jax.Array:
    """Cross-entropy with integer class labels, ``logsumexp(x) - x[label]``.

    Labels outside ``[0, classes)`` are refused: eagerly with :class:`LabelRangeError` naming
    their count and the range; under ``jax.jit``, where they cannot be seen, those examples'
    losses are NaN (optax gives NaN for ``label >= classes`` and a number for ``-1``), so
    the trainer's NaN guard and :func:`count_bad_labels` catch them.

    Args:
      logits: ``(batch, ..., classes)``.
      labels: integers of shape ``logits.shape[:-1]``.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
      LabelRangeError: a label is outside ``[0, classes)`` (concrete labels only).

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> logits = jnp.array([[2.0, 0.0, -1.0]])
      >>> l = losses.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0]))
      >>> round(float(l), 4)
      0.1698
    """
    x, y = jnp.asarray(logits), labels
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise TypeError(f"softmax_cross_entropy_with_integer_labels: labels must be integers, "
                        f"got dtype {jnp.result_type(y)}; for one-hot or soft labels use "
                        f"softmax_cross_entropy")
    if jnp.shape(y) != x.shape[:-1]:
        raise ValueError(f"softmax_cross_entropy_with_integer_labels: labels have shape "
                         f"{jnp.shape(y)} but logits {x.shape} need labels of shape "
                         f"{x.shape[:-1]}")
    classes = x.shape[-1]
    check_labels(y, classes, "softmax_cross_entropy_with_integer_labels")
    y = jnp.asarray(y)
    one_hot = jax.nn.one_hot(y, classes, dtype=x.dtype)
    per_example = -jnp.sum(one_hot * _log_softmax(x), axis=-1)
    # Traced labels cannot raise: make an out-of-range example's loss NaN, never a silent 0.
    valid = (y >= 0) & (y < classes)
    return _reduce(jnp.where(valid, per_example, jnp.nan), reduction)


def smooth_labels(labels: ArrayLike, alpha: float) -> jax.Array:
    """Label smoothing, ``(1 - alpha) * y + alpha / classes`` (as ``optax.smooth_labels``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> losses.smooth_labels(jnp.array([1.0, 0.0, 0.0, 0.0]), 0.5)
      Array([0.625, 0.125, 0.125, 0.125], dtype=float32)
    """
    y = jnp.asarray(labels)
    return (1.0 - alpha) * y + alpha / y.shape[-1]


def hinge(scores: ArrayLike, labels: ArrayLike, reduction: Reduction = "mean") -> jax.Array:
    """Binary hinge loss, ``max(0, 1 - y s)`` with labels ``y`` in ``{-1, +1}``.

    Same values as ``optax.hinge_loss``; labels ``{0, 1}`` must be mapped first (``2y - 1``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> float(losses.hinge(jnp.array([0.5, 2.0]), jnp.array([1.0, 1.0])))
      0.25
    """
    s, y = jnp.asarray(scores), jnp.asarray(labels)
    _same_shape("hinge", s, y, "scores", "labels")
    return _reduce(_per_example(jnp.maximum(0.0, 1.0 - y * s)), reduction)


# ---------------------------------------------------------------------------------- penalties

Mask = Any  # a pytree of bools shaped like params, or a callable params -> such a pytree


def default_weight_mask(params: Any) -> Any:
    """True for leaves with 2 or more dims (weights, kernels), False for 1-D/0-D leaves.

    Excludes biases and normalisation scales from weight decay, the usual choice.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> losses.default_weight_mask({"dense_0": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}})
      {'dense_0': {'b': False, 'w': True}}
    """
    return jax.tree.map(lambda leaf: jnp.ndim(leaf) >= 2, params)


def _masked_leaves(params: Any, mask: Mask | Callable[[Any], Any] | None) -> list[jax.Array]:
    leaves = jax.tree.leaves(params)
    if mask is None:
        return leaves
    mask_tree = mask(params) if callable(mask) else mask
    try:
        flags = jax.tree.structure(params).flatten_up_to(mask_tree)
    except (ValueError, TypeError) as err:
        raise ValueError(f"mask must have the same tree structure as params: {err}") from None
    return [leaf for leaf, keep in zip(leaves, flags, strict=True) if keep]


def _total(terms: list[jax.Array]) -> jax.Array:
    # Start from the first term, not a float32 zero, so the result keeps the params' dtype.
    return sum(terms[1:], terms[0]) if terms else jnp.zeros(())


def l1_penalty(params: Any, mask: Mask | None = None) -> jax.Array:
    """``sum |w|`` over every leaf of ``params`` that ``mask`` keeps (all leaves by default).

    Args:
      params: a pytree of arrays.
      mask: ``None`` (every leaf), a pytree of bools like ``params``, or a callable such as
        :func:`default_weight_mask` returning one.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> p = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0])}
      >>> float(losses.l1_penalty(p, mask=losses.default_weight_mask))
      3.0
    """
    return _total([jnp.sum(jnp.abs(w)) for w in _masked_leaves(params, mask)])


def l2_penalty(params: Any, mask: Mask | None = None) -> jax.Array:
    """``0.5 * sum w^2`` over the leaves ``mask`` keeps (``optax.l2_loss`` convention).

    Its gradient is ``w`` itself, so ``loss + wd * l2_penalty(params)`` is weight decay with
    coefficient ``wd`` under SGD.

    Args:
      params: a pytree of arrays.
      mask: ``None`` (every leaf), a pytree of bools like ``params``, or a callable such as
        :func:`default_weight_mask` returning one.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> float(losses.l2_penalty({"w": jnp.array([3.0, 4.0])}))
      12.5
    """
    return _total([0.5 * jnp.sum(jnp.square(w)) for w in _masked_leaves(params, mask)])


# ----------------------------------------------------------------------------------- metrics


def _integer_labels(name: str, logits: jax.Array, labels: Any) -> jax.Array:
    if jnp.shape(labels) == logits.shape:  # one-hot or soft labels
        return jnp.argmax(jnp.asarray(labels), axis=-1)
    if jnp.shape(labels) != logits.shape[:-1]:
        raise ValueError(f"{name}: labels have shape {jnp.shape(labels)}; logits {logits.shape} "
                         f"need integer labels {logits.shape[:-1]} or one-hot labels "
                         f"{logits.shape}")
    check_labels(labels, logits.shape[-1], name)
    return jnp.asarray(labels)


def _nan_if_bad(value: jax.Array, labels: jax.Array, classes: int) -> jax.Array:
    # Under jit an out-of-range label cannot raise; a NaN metric cannot pass for a real one.
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        return value
    return jnp.where(jnp.all((labels >= 0) & (labels < classes)), value, jnp.nan)


def accuracy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Fraction of examples whose ``argmax`` logit is the label.

    Args:
      logits: ``(batch, ..., classes)``.
      labels: integer labels ``logits.shape[:-1]``, or one-hot labels like ``logits``.

    Raises:
      LabelRangeError: an integer label is outside ``[0, classes)`` (concrete labels; under
        ``jax.jit`` the result is NaN instead).

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> float(losses.accuracy(jnp.array([[2.0, 1.0], [0.0, 3.0]]), jnp.array([0, 0])))
      0.5
    """
    x = jnp.asarray(logits)
    y = _integer_labels("accuracy", x, labels)
    return _nan_if_bad(jnp.mean(jnp.argmax(x, axis=-1) == y), y, x.shape[-1])


def top_k_accuracy(logits: ArrayLike, labels: ArrayLike, k: int) -> jax.Array:
    """Fraction of examples whose label is among the ``k`` largest logits.

    An example counts when fewer than ``k`` logits are strictly larger than the label's
    (so ties go in the label's favour). Out-of-range labels are refused as in
    :func:`accuracy`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from funcbp import losses
      >>> logits = jnp.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
      >>> float(losses.top_k_accuracy(logits, jnp.array([1, 2]), k=2))
      0.5
    """
    x = jnp.asarray(logits)
    if not 1 <= k <= x.shape[-1]:
        raise ValueError(f"k must be in [1, {x.shape[-1]}] for {x.shape[-1]} classes, got {k}")
    y = _integer_labels("top_k_accuracy", x, labels)
    label_logit = jnp.take_along_axis(x, jnp.clip(y, 0, x.shape[-1] - 1)[..., None], axis=-1)
    rank = jnp.sum(x > label_logit, axis=-1)
    return _nan_if_bad(jnp.mean(rank < k), y, x.shape[-1])
