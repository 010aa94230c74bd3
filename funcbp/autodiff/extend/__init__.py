"""Passengers of the backward walk: per-example and curvature quantities (``funcbp.quantities``).

- :mod:`.batch_axes`: where each value of a traced model keeps the example axis (static).
- :mod:`.carrier`: the :class:`~funcbp.autodiff.interpreter.Carrier` that moves columns of
  cotangents (gradient, loss-Hessian factors, residual factors) through the one backward walk,
  per example where a parameter meets the batch.
- :mod:`.sites`: dense and convolution weights and embedding tables, whose sums of squares are
  read off the layer's input and output columns without forming per-example gradients.
- :mod:`.curvature`: the residual terms of the exact diagonal Hessian, and its refusals.

Nothing here knows about losses or networks: the loss enters as the columns placed on the
model's output (see ``funcbp/quantities.py``).
"""

from funcbp.autodiff.extend.batch_axes import MIXED, Analysis, BatchMixingError, analyze
from funcbp.autodiff.extend.carrier import Pack, PassengerCarrier, Spec
from funcbp.autodiff.extend.curvature import HessianUnsupportedError

__all__ = ["MIXED", "Analysis", "BatchMixingError", "HessianUnsupportedError", "Pack",
           "PassengerCarrier", "Spec", "analyze"]
