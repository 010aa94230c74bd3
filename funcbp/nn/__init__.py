"""funcbp.nn: layers as ``(init, apply)`` pairs of pure functions over plain dict params.

A network is either hand-written (``apply(params, x, *, key=None, train=False)`` over a nested
dict you build) or composed from these layers with :func:`serial`/:func:`parallel`; either
way ``params`` is a nested dict of arrays, e.g. ``{"dense_0": {"w": ..., "b": ...}}``.
Initializers live in ``funcbp.nn.init``. See ``docs/nn.md``.
"""

from funcbp.nn import initializers as init
from funcbp.nn.activations import (
    Elu,
    Gelu,
    LeakyRelu,
    LogSoftmax,
    Relu,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    Tanh,
    elementwise,
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from funcbp.nn.conv import Conv2D
from funcbp.nn.dense import Dense, Dropout, Flatten
from funcbp.nn.embedding import Embedding
from funcbp.nn.layer import (
    DTypeError,
    FanInConcat,
    FanInSum,
    FanOut,
    Identity,
    KeyRequiredError,
    Layer,
    LayerError,
    Params,
    ParamsError,
    ShapeError,
    State,
    is_stateful,
    output_shape,
    parallel,
    serial,
)
from funcbp.nn.normalization import BatchNorm, LayerNorm
from funcbp.nn.pooling import AvgPool2D, GlobalAvgPool, MaxPool2D
from funcbp.nn.recurrent import GRU, LSTM, SimpleRNN

__all__ = [
    # combinators and types
    "Layer", "Params", "State", "serial", "parallel", "is_stateful", "output_shape",
    "Identity", "FanOut", "FanInSum", "FanInConcat", "elementwise",
    # errors
    "LayerError", "ShapeError", "DTypeError", "ParamsError", "KeyRequiredError",
    # layers
    "Dense", "Flatten", "Dropout", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool",
    "LayerNorm", "BatchNorm", "Embedding", "SimpleRNN", "GRU", "LSTM",
    # activations: functions and layers
    "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "softmax",
    "log_softmax", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Gelu", "Silu", "Softplus",
    "Softmax", "LogSoftmax",
    # initializers
    "init",
]
