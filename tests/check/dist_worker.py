"""Worker for tests/check/test_distributed.py; run in a subprocess with 4 forced CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python dist_worker.py OUT.json

Runs distributed_grad_check on a small MLP three ways (the trainer's sharded jit, a correct
shard_map with pmean, a planted psum where pmean was meant) and ``funcbp check --devices 4``,
and writes what each found as JSON.
"""

from __future__ import annotations

import json
import sys


def main(out: str) -> None:
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import PartitionSpec as P

    import funcbp
    from funcbp.check import distributed_grad_check
    from funcbp.check.cli import main_check

    k = jax.random.split(jax.random.key(0), 4)
    params = {"dense_0": {"w": jax.random.normal(k[0], (5, 8)), "b": jnp.zeros(8)},
              "dense_1": {"w": jax.random.normal(k[1], (8, 2))}}
    batch = (jax.random.normal(k[2], (16, 5)), jax.random.normal(k[3], (16, 2)))

    def loss(p, b):
        x, y = b
        h = jnp.tanh(x @ p["dense_0"]["w"] + p["dense_0"]["b"])
        return jnp.mean((h @ p["dense_1"]["w"] - y) ** 2)

    def per_device(reduce):
        def grads(p, b):
            def local(p, b):
                return reduce(funcbp.grad(loss)(p, b), "data")
            return jax.shard_map(local, in_specs=(P(), P("data")), out_specs=P(),
                                 check_vma=False)(p, b)
        grads.__name__ = f"shard_map with {reduce.__name__}"
        return grads

    found = {"devices": len(jax.devices())}
    for name, fn in (("sharded_jit", None), ("pmean", per_device(lax.pmean)),
                     ("psum", per_device(lax.psum))):
        report = distributed_grad_check(loss, params, batch, devices=4, parallel_grad_fn=fn)
        found[name] = report.to_dict()
        print(report)
    found["cli"] = main_check([f"{__file__}:cli_loss", "--args", "f32[5,2] f32[16,5] f32[16,2]",
                               "--argnums", "0", "--devices", "4"])
    found["cli_psum"] = main_check([f"{__file__}:cli_loss", "--args",
                                    "f32[5,2] f32[16,5] f32[16,2]", "--argnums", "0",
                                    "--devices", "4", "--parallel-grad",
                                    f"{__file__}:cli_psum_grad"])
    with open(out, "w") as f:
        json.dump(found, f)


def cli_loss(w, x, y):
    import jax.numpy as jnp

    return jnp.mean((jnp.tanh(x @ w) - y) ** 2)


def cli_psum_grad(w, batch):
    import jax
    from jax import lax
    from jax.sharding import PartitionSpec as P

    import funcbp

    def local(w, b):
        return lax.psum(funcbp.grad(lambda w, b: cli_loss(w, *b))(w, b), "data")
    return jax.shard_map(local, in_specs=(P(), P("data")), out_specs=P(), check_vma=False)(
        w, batch)


if __name__ == "__main__":
    main(sys.argv[1])
