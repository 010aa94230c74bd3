"""Normalisation layers: ``LayerNorm`` (per example) and ``BatchNorm`` (per feature, with state).

BatchNorm's running statistics are explicit *state*, kept apart from the learned params:

    out_shape, params = model.init(key, in_shape)     # {"batchnorm_0": {"scale", "bias"}}
    state = model.init_state(in_shape)                # {"batchnorm_0": {"mean", "var"}}
    y, state = model.apply(params, x, train=True, state=state)   # batch stats, updated state
    y, _ = model.apply(params, x, train=False, state=state)      # running stats
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from funcbp.nn import initializers as init_lib
from funcbp.nn.initializers import Initializer
from funcbp.nn.layer import Layer, LayerError, ShapeError, check_floating, check_keys

__all__ = ["BatchNorm", "LayerNorm"]


def _affine_names(use_scale, use_bias):
    return [n for n, used in (("scale", use_scale), ("bias", use_bias)) if used]


def _affine_params(key, features, use_scale, use_bias, scale_init, bias_init):
    params = {}
    if use_scale:
        params["scale"] = scale_init(key, (features,))
    if use_bias:
        params["bias"] = bias_init(key, (features,))
    return params


def _apply_affine(layer, params, x_hat, use_scale, use_bias):
    features = x_hat.shape[-1]
    for name, used in (("scale", use_scale), ("bias", use_bias)):
        if used and params[name].shape != (features,):
            raise ShapeError("", f"{{param}} has shape {params[name].shape}, but input x has "
                                 f"{features} features on its last axis (shape {x_hat.shape}); "
                                 f"{layer} needs ({features},)", name)
    if use_scale:
        x_hat = x_hat * params["scale"]
    if use_bias:
        x_hat = x_hat + params["bias"]
    return x_hat


def LayerNorm(epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True,
              scale_init: Initializer | None = None, bias_init: Initializer | None = None
              ) -> Layer:
    """Normalise each example over its last axis: ``y = (x - mu) / sqrt(var + eps) * scale + bias``.

    ``mu`` and ``var`` (biased) are taken over the last axis of each example.

    Args:
      epsilon: added to the variance.
      use_scale, use_bias: whether to learn ``scale`` (init ones) and ``bias`` (init zeros).
      scale_init, bias_init: their initializers.

    Returns:
      A :class:`~funcbp.nn.Layer` named ``"layernorm"``, params ``{"scale", "bias"}`` of
      shape ``(features,)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> ln = nn.LayerNorm()
      >>> _, params = ln.init(jax.random.key(0), (1, 4))
      >>> y = ln.apply(params, jnp.array([[1.0, 2.0, 3.0, 4.0]]))
      >>> round(float(y.mean()), 5), round(float(y.var()), 3)
      (0.0, 1.0)
    """
    scale_init = scale_init or init_lib.ones()
    bias_init = bias_init or init_lib.zeros()
    names = _affine_names(use_scale, use_bias)

    def init(key, in_shape):
        return in_shape, _affine_params(key, in_shape[-1], use_scale, use_bias, scale_init,
                                        bias_init)

    def apply(params, x, *, key=None, train=False):
        check_keys(params, names, "")
        x = jnp.asarray(x)
        check_floating(x)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        x_hat = (x - mean) * lax.rsqrt(var + epsilon)
        return _apply_affine("LayerNorm", params, x_hat, use_scale, use_bias)

    return Layer(init, apply, "layernorm")


def BatchNorm(momentum: float = 0.9, epsilon: float = 1e-5, use_scale: bool = True,
              use_bias: bool = True, scale_init: Initializer | None = None,
              bias_init: Initializer | None = None) -> Layer:
    """Normalise each feature (last axis) over the batch and spatial axes, with running stats.

    Training: ``y = (x - mu_B) / sqrt(var_B + eps) * scale + bias`` with the batch's mean and
    (biased) variance over all axes but the last. With ``state`` passed, the running
    statistics update as ``mean <- momentum * mean + (1 - momentum) * mu_B`` (same for
    ``var``, biased, as flax). Evaluation normalises with the running ``mean``/``var``.

    ``apply(params, x, *, key=None, train=False, state=None)``:

    - ``state=None, train=True``: returns ``y`` (batch statistics, nothing to update);
    - ``state=s``: returns ``(y, new_state)`` (``new_state is s`` when ``train=False``);
    - ``state=None, train=False``: raises, since there are no running statistics to use.

    Args:
      momentum: decay of the running averages.
      epsilon: added to the variance.
      use_scale, use_bias: whether to learn ``scale`` (init ones) and ``bias`` (init zeros).
      scale_init, bias_init: their initializers.

    Returns:
      A stateful :class:`~funcbp.nn.Layer` named ``"batchnorm"``: params ``{"scale", "bias"}``,
      state ``{"mean": zeros, "var": ones}``, each of shape ``(features,)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp import nn
      >>> bn = nn.BatchNorm()
      >>> _, params = bn.init(jax.random.key(0), (1, 3))
      >>> state = bn.init_state((1, 3))
      >>> x = jax.random.normal(jax.random.key(1), (16, 3)) * 5 + 2
      >>> y, state = bn.apply(params, x, train=True, state=state)
      >>> y.shape, state["mean"].shape
      ((16, 3), (3,))
    """
    scale_init = scale_init or init_lib.ones()
    bias_init = bias_init or init_lib.zeros()
    names = _affine_names(use_scale, use_bias)

    def init(key, in_shape):
        return in_shape, _affine_params(key, in_shape[-1], use_scale, use_bias, scale_init,
                                        bias_init)

    def init_state(in_shape):
        return {"mean": jnp.zeros((in_shape[-1],)), "var": jnp.ones((in_shape[-1],))}

    def apply(params, x, *, key=None, train=False, state=None):
        check_keys(params, names, "")
        x = jnp.asarray(x)
        check_floating(x)
        features = x.shape[-1]
        if state is not None:
            check_keys(state, ["mean", "var"], "", "state")
            for name in ("mean", "var"):
                if state[name].shape != (features,):
                    raise ShapeError("", f"state {{param}} has shape {state[name].shape}, but "
                                         f"input x has shape {x.shape}: BatchNorm needs "
                                         f"({features},)", name)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
        elif state is None:
            raise LayerError("", "BatchNorm with train=False normalises with the running "
                                 "statistics: pass state=model.init_state(in_shape) (or the "
                                 "state returned by training) to apply")
        else:
            mean, var = state["mean"], state["var"]
        x_hat = (x - mean) * lax.rsqrt(var + epsilon)
        y = _apply_affine("BatchNorm", params, x_hat, use_scale, use_bias)
        if state is None:
            return y
        if not train:
            return y, state
        new_state = {"mean": momentum * state["mean"] + (1 - momentum) * mean,
                     "var": momentum * state["var"] + (1 - momentum) * var}
        return y, new_state

    return Layer(init, apply, "batchnorm", init_state, has_params=True, stateful=True)
