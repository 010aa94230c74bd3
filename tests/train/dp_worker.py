"""Worker for the data-parallel tests; run as a script in a subprocess.

    python dp_worker.py devices N OUT          # 1-device vs N-device mesh in one process
    python dp_worker.py single OUT             # plain single-process run (reference)
    python dp_worker.py process ADDR P I OUT   # process I of P joined through jax.distributed
"""

from __future__ import annotations

import sys

import numpy as np

STEPS_DEVICES, STEPS_PROCESS, BATCH = 20, 10, 16


def problem():
    import jax
    import jax.numpy as jnp
    import optax

    import funcbp

    k = jax.random.split(jax.random.key(0), 3)
    params = {"dense_0": {"w": jax.random.normal(k[0], (10, 32)) * 0.3, "b": jnp.zeros(32)},
              "dense_1": {"w": jax.random.normal(k[1], (32, 4)) * 0.3, "b": jnp.zeros(4)}}
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(STEPS_DEVICES, BATCH, 10)).astype(np.float32)
    ys = rng.integers(0, 4, size=(STEPS_DEVICES, BATCH)).astype(np.int32)
    opt = optax.sgd(0.1, momentum=0.9)

    def loss(p, x, y):
        h = jnp.tanh(x @ p["dense_0"]["w"] + p["dense_0"]["b"])
        logits = h @ p["dense_1"]["w"] + p["dense_1"]["b"]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def step(p, s, batch, key):
        value, g = funcbp.value_and_grad(loss)(p, *batch)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, {"loss": value}

    return params, opt, step, xs, ys


def train(mesh, steps, shard_params=False):
    import jax

    from funcbp.train import parallel

    params, opt, step, xs, ys = problem()
    state = opt.init(params)
    fn = parallel.data_parallel(step, mesh, params, state, shard_params=shard_params)
    params, state = parallel.replicate(mesh, (params, state), shard_params)
    key = jax.random.key(1)
    for i in range(steps):
        params, state, _ = fn(params, state, parallel.shard_batch(mesh, (xs[i], ys[i])), key)
    return params


def flat(params):
    import jax

    return {jax.tree_util.keystr(p): np.asarray(jax.device_get(v))
            for p, v in jax.tree_util.tree_leaves_with_path(params)}


def main(argv):
    mode = argv[0]
    if mode == "devices":
        n, out = int(argv[1]), argv[2]
        import jax

        from funcbp.train import parallel
        assert len(jax.devices()) == n, jax.devices()
        one = flat(train(parallel.make_mesh(1), STEPS_DEVICES))
        many = flat(train(parallel.make_mesh(n), STEPS_DEVICES))
        sharded = flat(train(parallel.make_mesh(n), STEPS_DEVICES, shard_params=True))
        np.savez(out, **{f"one{k}": v for k, v in one.items()},
                 **{f"many{k}": v for k, v in many.items()},
                 **{f"sharded{k}": v for k, v in sharded.items()})
    elif mode == "single":
        from funcbp.train import parallel
        np.savez(argv[1], **flat(train(parallel.make_mesh(1), STEPS_PROCESS)))
    elif mode == "process":
        addr, nproc, pid, out = argv[1], int(argv[2]), int(argv[3]), argv[4]
        from funcbp.train import parallel
        assert parallel.initialize_distributed(addr, nproc, pid)
        import jax
        assert jax.process_count() == nproc
        np.savez(out, **flat(train(parallel.make_mesh(), STEPS_PROCESS)))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
