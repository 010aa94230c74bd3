"""The suite's models in PyTorch (CPU, float32), same shapes as :mod:`benchmarks.models`.

PyTorch is an optional reference (the ``bench`` extra): :func:`available` says whether it can
be imported, and nothing here is imported by the library or the test suite's other files.
"""

from __future__ import annotations

import os
import statistics
import time


def available() -> tuple[bool, str]:
    """``(True, version)`` if ``torch`` imports, else ``(False, reason)``."""
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means "no PyTorch column"
        return False, f"torch not importable ({type(e).__name__}: {e})"
    return True, torch.__version__


def _mlp(sizes, act):
    from torch import nn

    layers = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(m, n))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _cnn():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 10))


def _gru(in_dim, hidden):
    import torch
    from torch import nn

    class GRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(in_dim, hidden, batch_first=True)
            self.head = nn.Linear(hidden, 10)

        def forward(self, x):
            _, h = self.gru(x)
            return self.head(torch.squeeze(h, 0))
    return GRU()


def _transformer(d, heads=4, ff=512):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        """Mirrors models.transformer: pre-LN attention + tanh-GELU MLP, mean-pool, head."""

        def __init__(self):
            super().__init__()
            self.ln_0, self.ln_1 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp_0, self.mlp_1 = nn.Linear(d, ff), nn.Linear(ff, d)
            self.head = nn.Linear(d, 10)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln_0(x)).split(d, dim=-1)
            q, k, v = (a.reshape(b, t, heads, d // heads) for a in (q, k, v))
            scores = torch.einsum("bthd,bshd->bhts", q, k) / (d // heads) ** 0.5
            att = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)
            x = x + self.proj(att.reshape(b, t, d))
            x = x + self.mlp_1(F.gelu(self.mlp_0(self.ln_1(x)), approximate="tanh"))
            return self.head(x.mean(1))
    return Block()


def build(name: str, x_shape: tuple, **kwargs):
    """``(model, x, y)`` for the builder ``name`` and the JAX case's (batch-first) input shape.

    ``kwargs`` override the builder's sizes (``hidden`` of the MLP or GRU).
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp":
        hidden = kwargs.get("hidden", (512, 512))
        model, shape = _mlp((x_shape[1], *hidden, 10), nn.ReLU), x_shape
    elif name == "sigmoid_mlp":
        model, shape = _mlp((784,) + (256,) * 9 + (10,), nn.Sigmoid), x_shape
    elif name == "cnn":
        model, shape = _cnn(), (x_shape[0], x_shape[3], x_shape[1], x_shape[2])   # NHWC -> NCHW
    elif name == "gru":
        model, shape = _gru(x_shape[2], kwargs.get("hidden", 128)), x_shape
    elif name == "transformer":
        model, shape = _transformer(x_shape[2]), x_shape
    else:
        raise ValueError(f"no PyTorch model called {name!r} in benchmarks/torch_models.py")
    x = torch.randn(*shape, dtype=torch.float32)
    y = torch.randint(0, 10, (x_shape[0],))
    return model, x, y


def _timed(call, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(name: str, x_shape: tuple, *, reps: int = 20, compile: bool = True,
            **kwargs) -> dict:
    """Median seconds of PyTorch's gradient and SGD-momentum training step, eager and compiled.

    Args:
      name: the builder's name (``mlp``, ``cnn``, ``sigmoid_mlp``, ``gru``, ``transformer``).
      x_shape: the JAX case's input shape.
      reps: timed repetitions after warm-up.
      compile: also try ``torch.compile`` (its failure is reported, not raised).
      **kwargs: passed to :func:`build`.

    Returns:
      ``{"threads", "eager_grad_s", "eager_step_s", "compile_step_s" | "compile_na",
      "compile_time_s"}``.
    """
    import torch
    from torch.nn import functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    model, x, y = build(name, x_shape, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def grad_with(m):
        def call():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            return loss
        return call

    def step_with(m):
        grad = grad_with(m)

        def call():
            loss = grad()
            opt.step()
            return loss
        return call

    out = {"threads": torch.get_num_threads(),
           "eager_grad_s": _timed(grad_with(model), reps, 3),
           "eager_step_s": _timed(step_with(model), reps, 3)}
    if compile:
        try:
            compiled = torch.compile(model)
            t = time.perf_counter()
            step_with(compiled)()
            out["compile_time_s"] = time.perf_counter() - t
            out["compile_step_s"] = _timed(step_with(compiled), reps, 2)
        except Exception as e:  # noqa: BLE001 - torch.compile fails in many ways; report it
            out["compile_na"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    else:
        out["compile_na"] = "not run (--no-torch-compile)"
    return out
