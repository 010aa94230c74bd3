"""`torch_sgd` against a plain numpy loop of torch.optim.SGD's documented algorithm.

PyTorch (docs of torch.optim.SGD, maximize=False), for t = 1, 2, ...:

    g = grad + weight_decay * p                          if weight_decay != 0
    if momentum != 0:
        b = g                                            if t == 1
        b = momentum * b + (1 - dampening) * g           otherwise
        g = g + momentum * b  if nesterov  else  b
    p = p - lr * g

torch itself is not installed; the loop below is the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import optim

STEPS = 50


def torch_sgd_reference(params, grads, lr, momentum, dampening, nesterov, weight_decay):
    """PyTorch's SGD as a numpy loop in float32; `lr` is a number or a function of the step."""
    p = [np.array(x, np.float32) for x in params]
    bufs = [None] * len(p)
    f32 = np.float32
    for t, grad in enumerate(grads):
        rate = f32(lr(t) if callable(lr) else lr)
        for i, g in enumerate(grad):
            g = np.array(g, np.float32)
            if weight_decay != 0:
                g = g + f32(weight_decay) * p[i]
            if momentum != 0:
                if bufs[i] is None:
                    bufs[i] = g.copy()
                else:
                    bufs[i] = f32(momentum) * bufs[i] + f32(1 - dampening) * g
                g = g + f32(momentum) * bufs[i] if nesterov else bufs[i]
            p[i] = p[i] - rate * g
    return p


def lr_schedule(t):
    return 0.1 * 0.5 ** (t // 10)  # StepLR(step_size=10, gamma=0.5), stepped every step


CONFIGS = [
    dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
    dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=1e-2),
    dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0),
    dict(momentum=0.9, dampening=0.5, nesterov=False, weight_decay=0.0),
    dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=5e-2),
    dict(momentum=0.8, dampening=0.0, nesterov=True, weight_decay=0.0),
    dict(momentum=0.8, dampening=0.0, nesterov=True, weight_decay=5e-2),
]


def _tree(leaves):
    return {"dense_0": {"w": leaves[0], "b": leaves[1]}, "out": [leaves[2]]}


@pytest.mark.parametrize("lr", [0.05, lr_schedule], ids=["constant_lr", "step_lr"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_torch_sgd_matches_numpy_pytorch_loop(cfg, lr):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (4, 2)]
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(STEPS)]

    expected = torch_sgd_reference(params, grads, lr, **cfg)

    ours_lr = (lambda t: 0.1 * 0.5 ** (t // 10)) if callable(lr) else lr
    tx = optim.torch_sgd(ours_lr, **cfg)
    p = _tree([jnp.asarray(x) for x in params])
    state = tx.init(p)

    @jax.jit
    def step(p, state, g):
        updates, state = tx.update(g, state, p)
        return optim.apply_updates(p, updates), state

    for g in grads:
        p, state = step(p, state, _tree([jnp.asarray(x) for x in g]))
    got = [p["dense_0"]["w"], p["dense_0"]["b"], p["out"][0]]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_without_dampening_is_optax_sgd(nesterov):
    """The documented identity: no dampening, no weight decay -> optax.sgd, schedule included."""
    params = {"w": jax.random.normal(jax.random.key(0), (5, 3))}
    keys = jax.random.split(jax.random.key(1), 30)
    sched = optax.cosine_decay_schedule(0.1, 30)
    ours, ref = (
        optim.torch_sgd(sched, momentum=0.9, nesterov=nesterov),
        optax.sgd(sched, 0.9, nesterov),
    )
    p_ours, p_ref, s_ours, s_ref = params, params, ours.init(params), ref.init(params)
    for k in keys:
        g = {"w": jax.random.normal(k, (5, 3))}
        u, s_ours = ours.update(g, s_ours, p_ours)
        p_ours = optim.apply_updates(p_ours, u)
        u, s_ref = ref.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    np.testing.assert_allclose(p_ours["w"], p_ref["w"], rtol=1e-6, atol=1e-7)


def test_dampening_changes_the_result():
    """Dampening is the one place torch differs from optax with momentum: the test would see it."""
    params = {"w": jnp.ones(3)}
    g = {"w": jnp.array([1.0, -2.0, 0.5])}
    damp, plain = optim.torch_sgd(0.1, momentum=0.9, dampening=0.5), optax.sgd(0.1, 0.9)
    s1, s2 = damp.init(params), plain.init(params)
    for _ in range(3):
        u1, s1 = damp.update(g, s1, params)
        u2, s2 = plain.update(g, s2, params)
    # torch: b = g, 0.9 g + 0.5 g = 1.4 g, 0.9 * 1.4 g + 0.5 g = 1.76 g
    # optax: m = g, 0.9 g + g = 1.9 g, 0.9 * 1.9 g + g = 2.71 g
    np.testing.assert_allclose(u1["w"], -0.1 * 1.76 * g["w"], rtol=1e-6)
    np.testing.assert_allclose(u2["w"], -0.1 * 2.71 * g["w"], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs", [dict(momentum=0.0, nesterov=True), dict(momentum=0.9, dampening=0.1, nesterov=True)]
)
def test_torch_nesterov_rules(kwargs):
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        optim.torch_sgd(0.1, **kwargs)
