"""Named default models for the trainer and the CLI (``funcbp train --model NAME``).

Each entry builds a :class:`funcbp.nn.Layer` from the number of classes; the input shape is
given later, to ``init``. All of them take NHWC images and return logits.
"""

from __future__ import annotations

from collections.abc import Callable

from funcbp import nn

__all__ = ["MODELS", "get_model", "model_names"]


def mlp(num_classes: int = 10) -> nn.Layer:
    """ReLU MLP ``flatten -> 256 -> 128 -> classes`` with He-uniform weights."""
    he = nn.init.he_uniform()
    return nn.serial(
        nn.Flatten(),
        nn.Dense(256, w_init=he), nn.relu,
        nn.Dense(128, w_init=he), nn.relu,
        nn.Dense(num_classes, w_init=nn.init.glorot_uniform()),
    )


def wide_mlp(num_classes: int = 10) -> nn.Layer:
    """ReLU MLP ``flatten -> 512 -> 256 -> classes`` with dropout 0.2 (for 28x28 images)."""
    he = nn.init.he_uniform()
    return nn.serial(
        nn.Flatten(),
        nn.Dense(512, w_init=he), nn.relu, nn.Dropout(0.2),
        nn.Dense(256, w_init=he), nn.relu, nn.Dropout(0.2),
        nn.Dense(num_classes, w_init=nn.init.glorot_uniform()),
    )


def cnn(num_classes: int = 10) -> nn.Layer:
    """Two 3x3 conv blocks (32, 64 channels), each with 2x2 max-pooling, then 128 -> classes.

    Sized for 28x28 images (MNIST, Fashion-MNIST); dropout 0.3 before the classifier.
    """
    he = nn.init.he_uniform()
    return nn.serial(
        nn.Conv2D(32, 3, w_init=he), nn.relu, nn.MaxPool2D(2),
        nn.Conv2D(64, 3, w_init=he), nn.relu, nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dense(128, w_init=he), nn.relu, nn.Dropout(0.3),
        nn.Dense(num_classes, w_init=nn.init.glorot_uniform()),
    )


def digits_cnn(num_classes: int = 10) -> nn.Layer:
    """Small CNN for the 8x8 digits: conv 32, conv 64 (3x3, SAME), 2x2 max-pool, 128, classes.

    The default model of ``funcbp train``.
    """
    he = nn.init.he_uniform()
    return nn.serial(
        nn.Conv2D(32, 3, w_init=he), nn.relu,
        nn.Conv2D(64, 3, w_init=he), nn.relu, nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dense(128, w_init=he), nn.relu, nn.Dropout(0.25),
        nn.Dense(num_classes, w_init=nn.init.glorot_uniform()),
    )


MODELS: dict[str, Callable[[int], nn.Layer]] = {
    "mlp": mlp,
    "wide_mlp": wide_mlp,
    "cnn": cnn,
    "digits_cnn": digits_cnn,
}


def model_names() -> list[str]:
    """The names :func:`get_model` accepts."""
    return sorted(MODELS)


def get_model(name: str, num_classes: int = 10) -> nn.Layer:
    """The named default model, e.g. ``get_model("digits_cnn")``.

    Args:
      name: one of :func:`model_names` (``"mlp"``, ``"wide_mlp"``, ``"cnn"``, ``"digits_cnn"``).
      num_classes: size of the output (logits).

    Returns:
      A :class:`funcbp.nn.Layer`; call ``init(key, (1, H, W, C))`` for its parameters.

    Examples:
      >>> import jax
      >>> from funcbp.train import get_model
      >>> shape, params = get_model("mlp").init(jax.random.key(0), (1, 8, 8, 1))
      >>> shape
      (1, 10)
    """
    try:
        return MODELS[name](num_classes)
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(model_names())}"
        ) from None
