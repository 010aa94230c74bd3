"""Input normalisation: scale to [0, 1], or standardise with training-split statistics.

The rule: statistics (mean, standard deviation) are computed on the **training split only**
and then applied unchanged to validation and test data, so nothing about the held-out data
leaks into training. Fit after ``split``, never before.

numpy inputs give numpy outputs (computed in float64, returned as float32); jax inputs give
jax outputs, and ``standardize`` and ``scale_to_unit`` run inside ``jax.jit``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["Standardizer", "fit_standardize", "scale_to_unit", "standardize"]


def _xp(x):
    """numpy for host arrays (and lists), jax.numpy for jax arrays and tracers."""
    return jnp if isinstance(x, jax.Array) else np


def scale_to_unit(x: ArrayLike, max_value: float) -> ArrayLike:
    """Map pixel values ``0..max_value`` to ``[0, 1]``: ``x / max_value`` in float32.

    Args:
      x: images (any shape), e.g. uint8 MNIST (``max_value=255``) or digits (``16``).
      max_value: the largest value the format allows (not the data's observed max, so that
        train and test are scaled alike).

    Returns:
      float32 array of the same shape.

    Examples:
      >>> import numpy as np
      >>> from funcbp.data import scale_to_unit
      >>> scale_to_unit(np.array([0, 8, 16], dtype=np.uint8), 16)
      array([0. , 0.5, 1. ], dtype=float32)
    """
    if not max_value > 0:
        raise ValueError(f"scale_to_unit: max_value must be positive, got {max_value}")
    xp = _xp(x)
    return (xp.asarray(x, dtype=xp.float32) / xp.float32(max_value)).astype(xp.float32)


class Standardizer(NamedTuple):
    """Mean and standard deviation fitted on a training split; call it to standardise.

    Examples:
      >>> import numpy as np
      >>> from funcbp.data import fit_standardize
      >>> stats = fit_standardize(np.array([[1.0], [3.0]]), per="feature")
      >>> stats(np.array([[1.0], [5.0]]))
      array([[-1.],
             [ 3.]], dtype=float32)
    """

    mean: ArrayLike
    std: ArrayLike

    def __call__(self, x: ArrayLike) -> ArrayLike:
        return standardize(x, self.mean, self.std)


def fit_standardize(
    x_train: ArrayLike,
    *,
    per: Literal["channel", "feature", "global"] = "channel",
    eps: float = 1e-6,
) -> Standardizer:
    """Mean and standard deviation of the training split, for ``standardize``.

    ``mean = E[x]``, ``std = sqrt(E[(x - mean)^2])`` (population), over the example axis and:

    - ``per="channel"``: every axis but the last (NHWC images: one value per channel);
    - ``per="feature"``: the example axis only (one value per pixel/feature);
    - ``per="global"``: all axes (one scalar).

    A ``std`` below ``eps`` (a constant feature, such as a border pixel that is always 0) is
    replaced by 1, as scikit-learn's ``StandardScaler`` does, so the feature is only centred
    rather than blown up by a tiny divisor.

    Args:
      x_train: the **training** split only; never validation or test data.
      per: which statistics to keep, as above.
      eps: threshold below which a standard deviation counts as zero.

    Returns:
      ``Standardizer(mean, std)``, float32, shaped to broadcast against ``x_train``
      (``(C,)``, ``x.shape[1:]`` or ``()``).

    Examples:
      >>> import numpy as np
      >>> from funcbp.data import fit_standardize, standardize
      >>> x_train = np.array([[0.0, 2.0], [2.0, 2.0]])
      >>> mean, std = fit_standardize(x_train, per="feature")
      >>> mean, std
      (array([1., 2.], dtype=float32), array([1., 1.], dtype=float32))
    """
    if isinstance(x_train, jax.Array):
        xp, x = jnp, x_train.astype(jnp.result_type(float))  # float64 only with jax_enable_x64
    else:
        xp, x = np, np.asarray(x_train, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"fit_standardize: x_train must have examples, got shape {x.shape}")
    axes = {"channel": tuple(range(x.ndim - 1)), "feature": (0,), "global": tuple(range(x.ndim))}
    if per not in axes:
        raise ValueError(f"per must be 'channel', 'feature' or 'global', got {per!r}")
    if per == "channel" and x.ndim < 2:
        raise ValueError(f"per='channel' needs a channel axis, got shape {x.shape}")
    mean = x.mean(axis=axes[per])
    std = x.std(axis=axes[per])
    std = xp.where(std < eps, 1.0, std)
    return Standardizer(mean.astype(xp.float32), std.astype(xp.float32))


def standardize(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> ArrayLike:
    """``(x - mean) / std`` in float32, with statistics from ``fit_standardize(x_train)``.

    Apply the same ``mean`` and ``std`` to the training, validation and test splits.

    Examples:
      >>> import numpy as np
      >>> from funcbp.data import standardize
      >>> standardize(np.array([1.0, 3.0]), 2.0, 0.5)
      array([-2.,  2.], dtype=float32)
    """
    on_device = any(isinstance(a, jax.Array) for a in (x, mean, std))
    xp = jnp if on_device else np
    x, mean, std = (xp.asarray(a, dtype=xp.float32) for a in (x, mean, std))
    return (x - mean) / std
