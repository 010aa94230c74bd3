"""funcbp.optim schedules against optax's, at every step of a range, eager and compiled."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import optim

# (id, funcbp schedule, optax schedule); arguments chosen to hit each boundary convention.
CASES = [
    ("constant", optim.constant_schedule(0.3), optax.constant_schedule(0.3)),
    ("linear", optim.linear_schedule(0.1, 0.001, 30), optax.linear_schedule(0.1, 0.001, 30)),
    (
        "linear_begin",
        optim.linear_schedule(0.0, 1.0, 20, transition_begin=7),
        optax.linear_schedule(0.0, 1.0, 20, transition_begin=7),
    ),
    (
        "polynomial",
        optim.polynomial_schedule(1.0, 0.1, 2.5, 40, 5),
        optax.polynomial_schedule(1.0, 0.1, 2.5, 40, 5),
    ),
    (
        "piecewise",
        optim.piecewise_constant_schedule(0.1, {10: 0.5, 25: 0.1, 40: 2.0}),
        optax.piecewise_constant_schedule(0.1, {10: 0.5, 25: 0.1, 40: 2.0}),
    ),
    (
        "exponential",
        optim.exponential_decay(0.2, 7, 0.8),
        optax.exponential_decay(0.2, 7, 0.8),
    ),
    (
        "exponential_staircase_begin_end",
        optim.exponential_decay(0.2, 7, 0.5, transition_begin=5, staircase=True, end_value=0.01),
        optax.exponential_decay(0.2, 7, 0.5, transition_begin=5, staircase=True, end_value=0.01),
    ),
    (
        "exponential_growth_capped",
        optim.exponential_decay(0.01, 5, 1.5, end_value=0.05),
        optax.exponential_decay(0.01, 5, 1.5, end_value=0.05),
    ),
    ("cosine", optim.cosine_decay_schedule(0.1, 40), optax.cosine_decay_schedule(0.1, 40)),
    (
        "cosine_alpha_exponent",
        optim.cosine_decay_schedule(0.1, 33, alpha=0.1, exponent=2.0),
        optax.cosine_decay_schedule(0.1, 33, alpha=0.1, exponent=2.0),
    ),
    (
        "warmup_cosine",
        optim.warmup_cosine_decay_schedule(0.0, 0.1, 10, 50, end_value=1e-3),
        optax.warmup_cosine_decay_schedule(0.0, 0.1, 10, 50, end_value=1e-3),
    ),
    (
        "warmup_exponential",
        optim.warmup_exponential_decay_schedule(0.01, 0.1, 8, 6, 0.7, staircase=True),
        optax.warmup_exponential_decay_schedule(0.01, 0.1, 8, 6, 0.7, staircase=True),
    ),
    (
        "join",
        optim.join_schedules(
            [
                optim.constant_schedule(0.5),
                optim.linear_schedule(0.5, 0.0, 10),
                optim.cosine_decay_schedule(0.2, 9),
            ],
            [12, 30],
        ),
        optax.join_schedules(
            [
                optax.constant_schedule(0.5),
                optax.linear_schedule(0.5, 0.0, 10),
                optax.cosine_decay_schedule(0.2, 9),
            ],
            [12, 30],
        ),
    ),
]
STEPS = np.arange(0, 70)


@pytest.mark.parametrize("ours, ref", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_schedule_matches_optax(ours, ref):
    expected = np.array([float(ref(int(t))) for t in STEPS])
    # Python ints, one at a time (as a user calls it) ...
    eager = np.array([float(ours(int(t))) for t in STEPS])
    np.testing.assert_allclose(eager, expected, rtol=1e-6, atol=1e-9)
    # ... and int32 step counts inside jit, as scale_by_schedule calls it.
    compiled = jax.jit(jax.vmap(lambda t: jnp.asarray(ours(t), jnp.float32)))(
        jnp.asarray(STEPS, jnp.int32)
    )
    ref_compiled = jax.jit(jax.vmap(lambda t: jnp.asarray(ref(t), jnp.float32)))(
        jnp.asarray(STEPS, jnp.int32)
    )
    np.testing.assert_allclose(compiled, ref_compiled, rtol=1e-6, atol=1e-9)


def test_piecewise_boundary_takes_effect_at_the_boundary():
    s = optim.piecewise_constant_schedule(1.0, {10: 0.1})
    assert float(s(9)) == 1.0
    np.testing.assert_allclose(float(s(10)), 0.1, rtol=1e-7)


@pytest.mark.parametrize("step_size, gamma", [(1, 0.9), (7, 0.5), (10, 0.1)])
def test_step_decay_is_torch_steplr(step_size, gamma):
    """torch.optim.lr_scheduler.StepLR: lr = lr0 * gamma ** (epoch // step_size)."""
    s = optim.step_decay(0.3, step_size, gamma)
    expected = [0.3 * gamma ** (t // step_size) for t in STEPS]
    np.testing.assert_allclose([float(s(int(t))) for t in STEPS], expected, rtol=2e-6)


def test_warmup_cosine_hand_values():
    """Independent of optax: the warmup ramp, the peak and the cosine midpoint."""
    s = optim.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup_steps=10, decay_steps=110, end_value=0.2
    )
    np.testing.assert_allclose(float(s(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(s(60)), 0.2 + 0.8 * 0.5, rtol=1e-6)  # cos(pi/2) = 0
    np.testing.assert_allclose(float(s(500)), 0.2, rtol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: optim.cosine_decay_schedule(0.1, 0), "decay_steps"),
        (lambda: optim.piecewise_constant_schedule(0.1, {5: -0.5}), "scales >= 0"),
        (lambda: optim.step_decay(0.1, 0), "step_size"),
        (lambda: optim.join_schedules([optim.constant_schedule(1.0)], [3]), "one more schedule"),
    ],
)
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
