"""Samples per second of the compiled train step: funcbp vs jax.grad vs PyTorch, one process.

    python -m benchmarks.train_throughput [--reps 20] [--no-torch] [--no-compile]

The same MLP (784-512-512-10, batch 128) and CNN (two 3x3 convs with 2x2 max pooling, batch
128) as the suite; the JAX steps use funcbp.make_train_step's recipe (value_and_grad + SGD with
momentum 0.9, jitted, donated buffers) with funcbp's and with jax's gradients, alternating.
PyTorch (CPU, eager and torch.compile where it works) is timed after them in the same process.
"""

from __future__ import annotations

import argparse
import statistics

import jax

import funcbp
from benchmarks import models
from benchmarks.measure import alternate, stateful

CASES = {"mlp": ("mlp_784_512_512_10_b128", (128, 784)), "cnn": ("cnn_28x28_b128",
                                                                 (128, 28, 28, 1))}


def jax_steps(case: str):
    from funcbp import optim

    make, shape = models.CASES[CASES[case][0]]
    init, loss = make()
    params = init(jax.random.key(0))
    x, y = models.batch(shape)
    opt = optim.sgd(0.01, momentum=0.9)

    def step_with(grad_fn):
        def step(p, s, x, y):
            _, g = grad_fn(loss)(p, x, y)
            u, s = opt.update(g, s, p)
            return optim.apply_updates(p, u), s
        return jax.jit(step, donate_argnums=(0, 1))

    calls = {}
    for name, grad_fn in (("funcbp", funcbp.value_and_grad), ("jax", jax.value_and_grad)):
        p = jax.tree.map(lambda a: a.copy(), params)
        calls[name] = stateful(step_with(grad_fn), (p, opt.init(p)), x, y)
    return calls, shape


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = ap.parse_args(argv)
    print("| model | funcbp samples/s | jax samples/s | torch eager | torch.compile | "
          "funcbp/jax | funcbp/torch eager |\n|---|---|---|---|---|---|---|")
    for case in CASES:
        calls, shape = jax_steps(case)
        t = alternate(calls, reps=args.reps)
        med = {k: statistics.median(v) for k, v in t.items()}
        sps = {k: shape[0] / v for k, v in med.items()}
        torch_eager = torch_comp = None
        if not args.no_torch:
            from benchmarks import torch_models
            ok, why = torch_models.available()
            if ok:
                r = torch_models.measure(case, shape, reps=args.reps, compile=not args.no_compile)
                torch_eager = shape[0] / r["eager_step_s"]
                if "compile_step_s" in r:
                    torch_comp = shape[0] / r["compile_step_s"]
        fmt = lambda v: "n/a" if v is None else f"{v:.0f}"
        ratio = "n/a" if torch_eager is None else f"{sps['funcbp'] / torch_eager:.2f}"
        print(f"| {case} | {sps['funcbp']:.0f} | {sps['jax']:.0f} | {fmt(torch_eager)} | "
              f"{fmt(torch_comp)} | {sps['funcbp'] / sps['jax']:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
