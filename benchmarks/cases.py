"""The suite's cases: a model, its input shape, and what kind of network it is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax

from benchmarks import models


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes:
      name: the ``--case`` name and the table's row label.
      make: ``() -> (init(key) -> params, loss(params, x, y))``.
      x_shape: the input batch's shape (batch first); labels are ``batch`` ints in [0, 10).
      kind: ``"dense"`` (MLPs, the recurrent and attention models) or ``"conv"``; the
        targets treat them differently.
      torch: the name of the matching builder in :mod:`benchmarks.torch_models`, or None.
      hidden: left out of the default run (tiny cases for the smoke test).
      torch_kwargs: size overrides for the PyTorch builder.
    """

    name: str
    make: Callable
    x_shape: tuple
    kind: str
    torch: str | None
    hidden: bool = False
    torch_kwargs: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.x_shape[0]


_MLP = (784, 512, 512, 10)
_SIGMOID = (784,) + (256,) * 9 + (10,)

CASES: dict[str, Case] = {c.name: c for c in [
    Case("mlp_784_512_512_10_b128", lambda: models.mlp(_MLP), (128, 784), "dense", "mlp"),
    Case("mlp_784_512_512_10_b1024", lambda: models.mlp(_MLP), (1024, 784), "dense", "mlp"),
    Case("cnn_28x28_b128", models.cnn, (128, 28, 28, 1), "conv", "cnn"),
    Case("sigmoid_mlp_10_layers_b128", lambda: models.mlp(_SIGMOID, jax.nn.sigmoid), (128, 784),
         "dense", "sigmoid_mlp"),
    Case("gru_64_steps_b128", models.gru, (128, 64, 64), "dense", "gru"),
    Case("transformer_block_b32", models.transformer, (32, 64, 128), "dense", "transformer"),
    # Tiny cases for tests/test_benchmarks_smoke.py: the plumbing, not the timings.
    Case("tiny_mlp", lambda: models.mlp((16, 8, 10)), (4, 16), "dense", "mlp", hidden=True,
         torch_kwargs={"hidden": (8,)}),
    Case("tiny_gru", lambda: models.gru(steps=3, in_dim=4, hidden=8), (2, 3, 4), "dense", "gru",
         hidden=True, torch_kwargs={"hidden": 8}),
]}

#: Cases that are not models: the matmul ceiling and the interpreter's per-equation overhead.
SPECIAL = ("matmul_ceiling", "interp_overhead")


def default_cases() -> list[str]:
    """The cases ``python -m benchmarks`` runs when none are named."""
    return [name for name, c in CASES.items() if not c.hidden]


def get(name: str) -> Case:
    """The case called ``name``, or a ValueError listing the known names."""
    if name not in CASES:
        raise ValueError(f"unknown benchmark case {name!r}; known cases: "
                         f"{', '.join(list(CASES) + list(SPECIAL))}")
    return CASES[name]
