"""Data-parallel scaling: samples per second of a funcbp train step on 1, 2, 4 devices.

    python -m benchmarks.scaling [--devices 1 2 4] [--batch 1024] [--reps 20]

Each device count runs in its own process (on CPU, with
XLA_FLAGS=--xla_force_host_platform_device_count=N). On a GPU/TPU host, pass the counts you have.
Note: N virtual CPU devices share the machine's cores, so on CPU this measures the overhead of
sharding and all-reduce, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def measure(n: int, batch: int, reps: int) -> dict:
    import statistics
    import time

    import jax
    import optax

    import funcbp
    from benchmarks import models
    from funcbp.train import parallel

    init, loss = models.mlp((784, 512, 512, 10))
    params = init(jax.random.key(0))
    opt = optax.sgd(0.01, momentum=0.9)
    state = opt.init(params)

    def step(p, s, b, key):
        value, g = funcbp.value_and_grad(loss)(p, *b)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, {"loss": value}

    mesh = parallel.make_mesh(n)
    fn = parallel.data_parallel(step, mesh, params, state)
    params, state = parallel.replicate(mesh, (params, state))
    b = parallel.shard_batch(mesh, models.batch((batch, 784)))
    key = jax.random.key(0)
    for _ in range(3):
        params, state, m = fn(params, state, b, key)
    jax.block_until_ready(params)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        params, state, m = fn(params, state, b, key)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"devices": n, "platform": jax.devices()[0].platform, "global_batch": batch,
            "step_ms": 1e3 * med, "samples_per_s": batch / med}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.reps)))
        return
    print("| devices | platform | global batch | step ms | samples/s |\n|---|---|---|---|---|")
    for n in args.devices:
        env = dict(os.environ)
        if env.get("JAX_PLATFORMS", "cpu") == "cpu":
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        out = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--child", str(n),
                              "--batch", str(args.batch), "--reps", str(args.reps)],
                             env=env, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['devices']} | {r['platform']} | {r['global_batch']} | {r['step_ms']:.1f} | "
              f"{r['samples_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
