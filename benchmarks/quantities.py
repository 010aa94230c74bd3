"""``funcbp.quantities`` against the plain gradient step, the ``vmap(jax.grad)`` route and BackPACK.

Same process, same models, alternating timings (:func:`benchmarks.measure.alternate`); memory
is XLA's compiled memory analysis (temporaries: everything live inside the step that is neither
an argument nor an output). Ratios first: each quantity's time and memory over those of the
compiled gradient step (``jax.jit(funcbp.grad(loss))``) of the same model and batch.

- ``vmap``: the per-example route people write today, ``jax.vmap(jax.grad(example_loss))``
  followed by the reduction each first-order quantity needs.
- BackPACK: the same architecture in PyTorch (eager, ``torch.set_num_threads`` = the cores JAX
  uses), one forward and one backward with the extension (``backpack-for-pytorch``; skipped
  when absent).

Models: an MLP 784-512-256-10 (batch 256) and the suite's CNN (conv32-relu-pool-conv64-relu-pool-
dense10 on 28x28, batch 128), softmax cross-entropy.

Run::

    .venv/bin/python -m benchmarks.quantities [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import funcbp
from benchmarks.measure import alternate, memory

QUANTITIES = ("grad", "batch_grad", "batch_l2", "sum_grad_squared", "variance", "diag_ggn_mc",
              "kfac", "diag_ggn", "diag_hessian")
FIRST = ("batch_grad", "batch_l2", "sum_grad_squared", "variance")


def mlp(sizes=(784, 512, 256, 10)):
    def init(key):
        ks = jax.random.split(key, len(sizes))
        return {f"l{i}": {"w": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)}
                for i, (k, m, n) in enumerate(zip(ks, sizes[:-1], sizes[1:], strict=False))}

    def apply(p, x):
        h = x
        for i in range(len(sizes) - 1):
            h = h @ p[f"l{i}"]["w"] + p[f"l{i}"]["b"]
            if i < len(sizes) - 2:
                h = jax.nn.relu(h)
        return h

    return init, apply, (784,)


def cnn():
    def init(key):
        k = jax.random.split(key, 3)
        return {"c1": {"w": jax.random.normal(k[0], (3, 3, 1, 32)) / 3, "b": jnp.zeros(32)},
                "c2": {"w": jax.random.normal(k[1], (3, 3, 32, 64)) / 17, "b": jnp.zeros(64)},
                "d": {"w": jax.random.normal(k[2], (7 * 7 * 64, 10)) / 56, "b": jnp.zeros(10)}}

    def apply(p, x):
        h = x
        for c in ("c1", "c2"):
            h = lax.conv_general_dilated(h, p[c]["w"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(h + p[c]["b"])
            h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # PyTorch's flatten order
        return h @ p["d"]["w"] + p["d"]["b"]

    return init, apply, (28, 28, 1)


def _ce(f, y):
    # one-hot form: its VJP is a multiply (take_along_axis's would be a scatter, a few ms on
    # CPU that the quantities' own output gradient, softmax - onehot, does not pay)
    return -jnp.mean(jnp.sum(jax.nn.one_hot(y, f.shape[-1], dtype=f.dtype)
                             * jax.nn.log_softmax(f), axis=-1))


def contenders(apply, which_all):
    """name -> function(params, x, y, key) to jit."""
    out = {"grad step": lambda p, x, y, k: funcbp.grad(lambda p: _ce(apply(p, x), y))(p)}
    def one(q):
        return lambda p, x, y, k: funcbp.quantities(
            apply, p, x, y, loss="softmax_cross_entropy", which=(q,), key=k)[q]

    for q in which_all:
        out[q] = one(q)

    def per_example(p, x, y):
        B = x.shape[0]
        return jax.vmap(jax.grad(lambda p, xi, yi: _ce(apply(p, xi[None]), yi[None]) / B),
                        in_axes=(None, 0, 0))(p, x, y)

    reduce = {"batch_grad": lambda g: g,
              "batch_l2": lambda g: jax.tree.map(lambda v: jnp.sum(v.reshape(v.shape[0], -1) ** 2,
                                                                   1), g),
              "sum_grad_squared": lambda g: jax.tree.map(lambda v: jnp.sum(v * v, 0), g),
              "variance": lambda g: jax.tree.map(
                  lambda v: jnp.mean(v * v, 0) - jnp.mean(v, 0) ** 2, g)}
    for q in FIRST:
        out[f"vmap {q}"] = (lambda r: lambda p, x, y, k: r(per_example(p, x, y)))(reduce[q])
    return out


def torch_backpack(name: str, params, x, y, which, reps: int):
    """Seconds per forward+backward with each BackPACK extension (None where unavailable)."""
    try:
        import torch
        from backpack import backpack, extend
        from backpack import extensions as ext
    except ImportError:
        return {}
    torch.set_num_threads(os.cpu_count() or 1)
    if name == "mlp":
        layers, sizes = [], [784, 512, 256, 10]
        for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            layers.append(torch.nn.Linear(m, n))
            if i < 2:
                layers.append(torch.nn.ReLU())
        net = torch.nn.Sequential(*layers)
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        mods = [(m, f"l{i}") for i, m in enumerate(linears)]
        xt = torch.from_numpy(np.array(x))
    else:
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(7 * 7 * 64, 10))
        mods = [(net[0], "c1"), (net[3], "c2"), (net[7], "d")]
        xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        for m, key in mods:
            w = np.asarray(params[key]["w"])
            w = w.T if w.ndim == 2 else w.transpose(3, 2, 0, 1)
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            m.bias.copy_(torch.from_numpy(np.asarray(params[key]["b"])))
    net = extend(net)
    lossf = extend(torch.nn.CrossEntropyLoss())
    yt = torch.from_numpy(np.asarray(y)).long()
    exts = {"grad": None, "batch_grad": ext.BatchGrad, "batch_l2": ext.BatchL2Grad,
            "sum_grad_squared": ext.SumGradSquared, "variance": ext.Variance,
            "diag_ggn": ext.DiagGGNExact, "diag_ggn_mc": ext.DiagGGNMC, "kfac": ext.KFAC,
            "diag_hessian": ext.DiagHessian}
    out = {}
    for q in which:
        def step(q=q):
            net.zero_grad()
            loss = lossf(net(xt), yt)
            if exts[q] is None:
                loss.backward()
            else:
                with backpack(exts[q]()):
                    loss.backward()
        try:
            for _ in range(2):
                step()
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t)
            out[q] = statistics.median(ts)
        except Exception as err:  # an extension BackPACK does not support for this model
            out[q] = f"n/a ({type(err).__name__})"
    return out


def run(name: str, batch: int, *, reps: int, budget_s: float, which_all) -> dict:
    init, apply, in_shape = {"mlp": mlp, "cnn": cnn}[name]()
    k = jax.random.split(jax.random.key(0), 3)
    params = init(k[0])
    x = jax.random.normal(k[1], (batch, *in_shape))
    y = jax.random.randint(k[2], (batch,), 0, 10)
    key = jax.random.key(3)
    fns = contenders(apply, which_all)
    args = (params, x, y, key)
    compiled = {n: jax.jit(f) for n, f in fns.items()}
    mem = {n: memory(f, args).get("temp_bytes", float("nan")) for n, f in fns.items()}
    def bound(f):
        return lambda: f(*args)

    calls = {n: bound(f) for n, f in compiled.items()}
    times = alternate(calls, reps=reps, warmup=2, budget_s=budget_s)
    med = {n: statistics.median(v) for n, v in times.items()}
    base_t, base_m = med["grad step"], mem["grad step"]
    rows = {}
    for n in fns:
        rows[n] = {"s": med[n], "time_x": med[n] / base_t, "temp_MiB": mem[n] / 2**20,
                   "mem_x": mem[n] / base_m if base_m else float("nan")}
    bp = torch_backpack(name, params, x, y, which_all, reps=max(3, reps // 2))
    for q, t in bp.items():
        rows.setdefault(q, {})["backpack_s"] = t
    return {"model": name, "batch": batch, "rows": rows}


def table(res: dict) -> str:
    rows = res["rows"]
    lines = [f"### {res['model']} (batch {res['batch']})", "",
             "| quantity | time / grad step | memory / grad step | vmap route time | vmap route "
             "memory | funcbp s | BackPACK s | funcbp / BackPACK |",
             "|---|---|---|---|---|---|---|---|"]
    for q in ["grad step", *[q for q in QUANTITIES if q in rows and q != "grad step"]]:
        r = rows[q]
        v = rows.get(f"vmap {q}", {})
        bp = r.get("backpack_s")
        vs = f"{r['s'] / bp:.2f}" if isinstance(bp, float) else "-"
        lines.append(
            f"| {q} | {r['time_x']:.2f}x | {r['mem_x']:.2f}x | "
            + (f"{v['time_x']:.2f}x | {v['mem_x']:.2f}x" if v else "- | -")
            + f" | {r['s'] * 1e3:.1f} ms | "
            + (f"{bp * 1e3:.1f} ms" if isinstance(bp, float) else (bp or "-"))
            + f" | {vs} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches, few reps (smoke)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    which_all = QUANTITIES if not args.quick else ("grad", "batch_l2", "diag_ggn_mc")
    cases = [("mlp", 256), ("cnn", 128)] if not args.quick else [("mlp", 8), ("cnn", 4)]
    reps = 5 if args.quick else 20
    results = []
    for name, batch in cases:
        res = run(name, batch, reps=reps, budget_s=2 if args.quick else 30,
                  which_all=which_all)
        results.append(res)
        print(table(res), "\n", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"load": os.getloadavg(), "cpus": os.cpu_count(), "results": results}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
