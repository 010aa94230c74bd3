"""Peak memory of a compiled training step with and without ``jax.checkpoint``, funcbp vs jax.

A deep tanh MLP (default 16 layers of 1024, batch 512) is differentiated with
``value_and_grad``; each layer is optionally wrapped in ``jax.checkpoint``. The step is compiled
with ``jax.jit(...).lower(...).compile()`` and XLA's ``memory_analysis()`` gives the bytes of
temporaries (``temp_size_in_bytes``: everything live inside the step that is neither an argument
nor an output, i.e. the activations kept for the backward pass) and, where the backend reports
it, the peak. Nothing is executed, so the measurement is exact and takes seconds on CPU.

Two structures of the same network are measured:

- ``scan``: the layers' weights are stacked and the network is a ``lax.scan`` over layers. What
  a step keeps for the backward pass is the scan's stacked residuals, so the saving of
  ``jax.checkpoint`` is structural and shows on every backend.
- ``loop``: a Python loop of layers (one unrolled program). Whether recomputation lowers the
  peak here is up to XLA's scheduler and buffer assignment (a memory-aware scheduler on GPU;
  XLA:CPU reports no saving for jax's own checkpoint either).

Run::

    .venv/bin/python -m benchmarks.remat_memory [--layers 16 --width 1024 --batch 512]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
from jax import lax

import funcbp


def make_loss(structure: str, checkpoint: bool):
    """Mean squared output of an MLP whose layers are ``tanh(h @ w + b)``."""
    def layer(h, wb):
        w, b = wb
        return jnp.tanh(h @ w + b), None

    block = jax.checkpoint(layer) if checkpoint else layer

    def loss(params, x):
        if structure == "scan":
            return jnp.mean(lax.scan(block, x, params)[0] ** 2)
        h = x
        for wb in params:
            h = block(h, wb)[0]
        return jnp.mean(h ** 2)

    return loss


def measure(value_and_grad, structure: str, layers: int, width: int, batch: int,
            checkpoint: bool) -> dict:
    """Compiles one step and returns its memory analysis in MiB."""
    w = jax.ShapeDtypeStruct((width, width), jnp.float32)
    b = jax.ShapeDtypeStruct((width,), jnp.float32)
    if structure == "scan":
        params = (jax.ShapeDtypeStruct((layers, width, width), jnp.float32),
                  jax.ShapeDtypeStruct((layers, width), jnp.float32))
    else:
        params = [(w, b) for _ in range(layers)]
    x = jax.ShapeDtypeStruct((batch, width), jnp.float32)
    step = jax.jit(value_and_grad(make_loss(structure, checkpoint)))
    stats = step.lower(params, x).compile().memory_analysis()
    mib = 2.0 ** 20
    return {
        "peak_mib": stats.peak_memory_in_bytes / mib,
        "temp_mib": stats.temp_size_in_bytes / mib,
        "argument_mib": stats.argument_size_in_bytes / mib,
        "output_mib": stats.output_size_in_bytes / mib,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = []
    for structure in ("scan", "loop"):
        for name, vg in [("funcbp", funcbp.value_and_grad), ("jax", jax.value_and_grad)]:
            for ckpt in (False, True):
                row = {"structure": structure, "library": name, "checkpoint": ckpt,
                       **measure(vg, structure, args.layers, args.width, args.batch, ckpt)}
                rows.append(row)
    activation = args.batch * args.width * 4 / 2.0 ** 20
    print(f"device: {jax.devices()[0].platform}; MLP {args.layers} x {args.width}, batch "
          f"{args.batch} (one activation = {activation:.1f} MiB)")
    print(f"{'structure':9} {'library':8} {'checkpoint':>10} {'temp MiB':>10} {'peak MiB':>10} "
          f"{'args MiB':>10} {'out MiB':>9}")
    for r in rows:
        print(f"{r['structure']:9} {r['library']:8} {str(r['checkpoint']):>10} "
              f"{r['temp_mib']:10.1f} {r['peak_mib']:10.1f} {r['argument_mib']:10.1f} "
              f"{r['output_mib']:9.1f}")
    by = {(r["structure"], r["library"], r["checkpoint"]): r["temp_mib"] for r in rows}
    for structure in ("scan", "loop"):
        for lib in ("funcbp", "jax"):
            ratio = by[(structure, lib, True)] / max(by[(structure, lib, False)], 1e-9)
            print(f"{structure}: {lib} with checkpoint keeps {ratio:.2f}x the temporaries of "
                  f"the plain step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
