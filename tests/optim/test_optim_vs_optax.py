"""funcbp.optim against optax: 50 steps of each transform, chain and alias, leaf by leaf.

Each case runs the same random gradient sequence over a nested pytree through funcbp's
transformation and optax's namesake (or a hand-written formula where optax has none),
applying the updates to the parameters so that parameter-dependent transforms see them
change, and compares every step's updates, the final parameters and the final states.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import optim

STEPS_JIT = 50
STEPS_EAGER = 6
# float32 rounding: identical formulas agree bit for bit when both run compiled; an eager
# step rounds a little differently from a compiled one, and 50 steps accumulate it.
RTOL, ULPS, EPS32 = 2e-6, 8, float(np.finfo(np.float32).eps)


def make_params(key: jax.Array) -> dict:
    k = jax.random.split(key, 5)
    return {
        "dense_0": {"w": jax.random.normal(k[0], (3, 4)), "b": jax.random.normal(k[1], (4,))},
        "blocks": [{"w": jax.random.normal(k[2], (4, 2))}, {"gain": jax.random.normal(k[3], ())}],
        "head": (jax.random.normal(k[4], (2,)),),
    }


def make_grads(key: jax.Array, params: dict, steps: int) -> list:
    """Random gradient trees whose global norm spans ~0.03 to ~30 (so clipping varies)."""
    treedef, shapes = jax.tree.structure(params), [jnp.shape(p) for p in jax.tree.leaves(params)]
    out = []
    for k in jax.random.split(key, steps):
        k_scale, *k_leaves = jax.random.split(k, 1 + len(shapes))
        factor = 10.0 ** jax.random.uniform(k_scale, (), minval=-2.0, maxval=1.0)
        leaves = [factor * jax.random.normal(kl, shape) for kl, shape in zip(k_leaves, shapes)]
        out.append(jax.tree.unflatten(treedef, leaves))
    return out


def run(tx, apply_updates, params, grads, jit: bool):
    """Run `tx` over `grads`; returns (per-step updates, final params, final state)."""

    traces = []

    def step(params, state, g):
        traces.append(1)  # runs once per trace under jit
        updates, state = tx.update(g, state, params)
        return updates, apply_updates(params, updates), state

    if jit:
        step = jax.jit(step)
    state = tx.init(params)
    history = []
    for g in grads:
        updates, params, state = step(params, state, g)
        history.append(updates)
    if jit:  # a second trace would mean the state's types drift from step to step
        assert len(traces) == 1, f"the jitted step was traced {len(traces)} times"
    return history, params, state


def assert_close(ours, ref, what: str, per_step: bool = False) -> None:
    """Leaf-by-leaf agreement to float32 rounding, naming the failing leaf.

    Tolerance: `RTOL * |ref| + ULPS * eps32 * scale`, with `scale` the largest magnitude in
    the whole reference tree (in each step's slice when `per_step`, leaves stacked as
    `(steps, ...)`): a value that cancels to near zero is judged on the scale of the
    numbers that produced it.
    """
    ours_flat, ours_def = jax.tree_util.tree_flatten_with_path(ours)
    ref_leaves, ref_def = jax.tree.flatten(ref)
    assert ours_def == ref_def, f"{what}: structures differ: {ours_def} vs {ref_def}"
    ref_leaves = [np.asarray(b, np.float64) for b in ref_leaves]
    if per_step:
        scale = np.max([np.max(np.abs(b.reshape(len(b), -1)), axis=1) for b in ref_leaves], axis=0)
    else:
        scale = max((float(np.max(np.abs(b))) for b in ref_leaves if b.size), default=0.0)
    for (path, a), b in zip(ours_flat, ref_leaves, strict=True):
        a = np.asarray(a, np.float64)
        assert a.shape == b.shape, f"{what}{jax.tree_util.keystr(path)}: {a.shape} vs {b.shape}"
        leaf_scale = np.reshape(scale, (-1,) + (1,) * (b.ndim - 1)) if per_step else scale
        tol = RTOL * np.abs(b) + ULPS * EPS32 * leaf_scale
        err = np.abs(a - b)
        if not np.all(err <= tol):  # NaN-safe: a NaN fails too
            bad = np.where(err <= tol, -np.inf, err / (tol + 1e-300))
            k = np.unravel_index(np.argmax(np.nan_to_num(bad, nan=np.inf)), err.shape)
            raise AssertionError(
                f"{what}{jax.tree_util.keystr(path)} at {k}: ours {a[k]!r}, reference {b[k]!r} "
                f"(|diff| {err[k]:.3g} > tol {tol[k]:.3g})"
            )


def l1_reference(l1):
    """The L1 subgradient term written directly: g + l1 * sign(p)."""
    return optax.stateless_with_tree_map(lambda g, p: g + l1 * jnp.sign(p))


def inv_sqrt(t):
    return 0.1 / jnp.sqrt(1.0 + t)


MASK_PREFIX = {"dense_0": {"w": True, "b": False}, "blocks": True, "head": False}
MASK_FN = lambda p: jax.tree.map(lambda x: jnp.ndim(x) > 1, p)

# (id, funcbp transformation, reference transformation)
CASES = [
    ("scale", lambda: optim.scale(-0.3), lambda: optax.scale(-0.3)),
    (
        "lr_number",
        lambda: optim.scale_by_learning_rate(0.1),
        lambda: optax.scale_by_learning_rate(0.1),
    ),
    (
        "lr_schedule",
        lambda: optim.scale_by_learning_rate(inv_sqrt),
        lambda: optax.scale_by_learning_rate(inv_sqrt),
    ),
    (
        "scale_by_schedule",
        lambda: optim.scale_by_schedule(inv_sqrt),
        lambda: optax.scale_by_schedule(inv_sqrt),
    ),
    ("trace", lambda: optim.trace(0.9), lambda: optax.trace(0.9)),
    (
        "trace_nesterov",
        lambda: optim.trace(0.8, nesterov=True),
        lambda: optax.trace(0.8, nesterov=True),
    ),
    ("sgd", lambda: optim.sgd(0.1), lambda: optax.sgd(0.1)),
    ("sgd_momentum", lambda: optim.sgd(0.05, momentum=0.9), lambda: optax.sgd(0.05, momentum=0.9)),
    (
        "sgd_nesterov",
        lambda: optim.sgd(0.05, 0.9, nesterov=True),
        lambda: optax.sgd(0.05, 0.9, nesterov=True),
    ),
    ("sgd_schedule", lambda: optim.sgd(inv_sqrt, 0.5), lambda: optax.sgd(inv_sqrt, 0.5)),
    (
        "sgd_warmup_cosine",
        lambda: optim.sgd(optim.warmup_cosine_decay_schedule(0.0, 0.1, 10, 40, 1e-3), 0.9),
        lambda: optax.sgd(optax.warmup_cosine_decay_schedule(0.0, 0.1, 10, 40, 1e-3), 0.9),
    ),
    ("momentum", lambda: optim.momentum(0.05, beta=0.8), lambda: optax.sgd(0.05, momentum=0.8)),
    (
        "nesterov",
        lambda: optim.nesterov(0.05, beta=0.8),
        lambda: optax.sgd(0.05, 0.8, nesterov=True),
    ),
    ("clip", lambda: optim.clip(0.5), lambda: optax.clip(0.5)),
    (
        "clip_by_global_norm",
        lambda: optim.clip_by_global_norm(1.0),
        lambda: optax.clip_by_global_norm(1.0),
    ),
    (
        "weight_decay",
        lambda: optim.add_decayed_weights(0.05),
        lambda: optax.add_decayed_weights(0.05),
    ),
    (
        "weight_decay_mask_tree",
        lambda: optim.add_decayed_weights(0.05, MASK_PREFIX),
        lambda: optax.add_decayed_weights(0.05, MASK_PREFIX),
    ),
    (
        "weight_decay_mask_fn",
        lambda: optim.add_decayed_weights(0.05, MASK_FN),
        lambda: optax.add_decayed_weights(0.05, MASK_FN),
    ),
    ("l1_decay", lambda: optim.add_l1_decay(0.02), lambda: l1_reference(0.02)),
    (
        "l1_decay_mask",
        lambda: optim.add_l1_decay(0.02, MASK_PREFIX),
        lambda: optax.masked(l1_reference(0.02), MASK_PREFIX),
    ),
    ("scale_by_adam", lambda: optim.scale_by_adam(), lambda: optax.scale_by_adam()),
    ("adam", lambda: optim.adam(1e-2), lambda: optax.adam(1e-2)),
    (
        "adam_options",
        lambda: optim.adam(inv_sqrt, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8),
        lambda: optax.adam(inv_sqrt, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8),
    ),
    (
        "chain_clip_wd_nesterov",
        lambda: optim.chain(
            optim.clip_by_global_norm(1.0),
            optim.add_decayed_weights(1e-3),
            optim.sgd(0.1, 0.9, nesterov=True),
        ),
        lambda: optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.add_decayed_weights(1e-3),
            optax.sgd(0.1, 0.9, nesterov=True),
        ),
    ),
    (
        "chain_clip_trace_schedule",
        lambda: optim.chain(
            optim.clip(0.3), optim.trace(0.5), optim.scale_by_learning_rate(inv_sqrt)
        ),
        lambda: optax.chain(
            optax.clip(0.3), optax.trace(0.5), optax.scale_by_learning_rate(inv_sqrt)
        ),
    ),
    (
        "chain_adamw",
        lambda: optim.chain(
            optim.scale_by_adam(),
            optim.add_decayed_weights(1e-2, MASK_FN),
            optim.scale_by_learning_rate(1e-2),
        ),
        lambda: optax.adamw(1e-2, weight_decay=1e-2, mask=MASK_FN),
    ),
    (
        "chain_nested",
        lambda: optim.chain(optim.chain(optim.clip(1.0), optim.trace(0.9)), optim.scale(-0.01)),
        lambda: optax.chain(optax.chain(optax.clip(1.0), optax.trace(0.9)), optax.scale(-0.01)),
    ),
    (
        "accumulate_sgd_k3",
        lambda: optim.accumulate(optim.sgd(0.1, 0.9), every_k=3),
        lambda: optax.MultiSteps(optax.sgd(0.1, 0.9), every_k_schedule=3).gradient_transformation(),
    ),
    (
        "accumulate_adam_k1",
        lambda: optim.accumulate(optim.adam(1e-2), every_k=1),
        lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=1).gradient_transformation(),
    ),
    (
        "accumulate_chain_k4",
        lambda: optim.accumulate(optim.chain(optim.clip_by_global_norm(0.5), optim.adam(1e-2)), 4),
        lambda: optax.MultiSteps(
            optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2)), 4
        ).gradient_transformation(),
    ),
    # Interoperability: funcbp parts inside optax's combinators, and optax's inside ours.
    (
        "ours_in_optax_chain",
        lambda: optax.chain(
            optim.clip_by_global_norm(1.0), optim.trace(0.9), optax.scale_by_learning_rate(inv_sqrt)
        ),
        lambda: optax.chain(
            optax.clip_by_global_norm(1.0), optax.trace(0.9), optax.scale_by_learning_rate(inv_sqrt)
        ),
    ),
    (
        "optax_in_our_chain",
        lambda: optim.chain(
            optax.clip_by_global_norm(1.0), optax.trace(0.9), optim.scale_by_learning_rate(inv_sqrt)
        ),
        lambda: optax.chain(
            optax.clip_by_global_norm(1.0), optax.trace(0.9), optax.scale_by_learning_rate(inv_sqrt)
        ),
    ),
    (
        "ours_in_optax_multisteps",
        lambda: optax.MultiSteps(optim.sgd(0.1, 0.9), 2).gradient_transformation(),
        lambda: optax.MultiSteps(optax.sgd(0.1, 0.9), 2).gradient_transformation(),
    ),
    (
        "optax_in_our_accumulate",
        lambda: optim.accumulate(optax.adam(1e-2), 2),
        lambda: optax.MultiSteps(optax.adam(1e-2), 2).gradient_transformation(),
    ),
    (
        "ours_in_optax_masked",
        lambda: optax.masked(optim.trace(0.9), MASK_FN),
        lambda: optax.masked(optax.trace(0.9), MASK_FN),
    ),
]


# The transforms behind AdamW, RMSProp, Adagrad, Lion and Adafactor, and the wrappers.
CASES += [
    (
        "scale_by_adam_nesterov",
        lambda: optim.scale_by_adam(b1=0.8, nesterov=True),
        lambda: optax.scale_by_adam(b1=0.8, nesterov=True),
    ),
    ("ema", lambda: optim.ema(0.9), lambda: optax.ema(0.9)),
    (
        "scale_by_rms_torch_bc",
        lambda: optim.scale_by_rms(0.99, 1e-6, 1.0, eps_in_sqrt=False, bias_correction=True),
        lambda: optax.scale_by_rms(0.99, 1e-6, 1.0, eps_in_sqrt=False, bias_correction=True),
    ),
    (
        "scale_by_stddev_eps_outside",
        lambda: optim.scale_by_stddev(0.8, 1e-6, eps_in_sqrt=False),
        lambda: optax.scale_by_stddev(0.8, 1e-6, eps_in_sqrt=False),
    ),
    ("scale_by_rss", lambda: optim.scale_by_rss(), lambda: optax.scale_by_rss()),
    ("scale_by_lion", lambda: optim.scale_by_lion(), lambda: optax.scale_by_lion()),
    (
        "factored_rms",
        lambda: optim.scale_by_factored_rms(min_dim_size_to_factor=2),
        lambda: optax.scale_by_factored_rms(min_dim_size_to_factor=2),
    ),
    (
        "weight_decay_schedule",
        lambda: optim.add_decayed_weights(inv_sqrt, MASK_PREFIX),
        lambda: optax.add_decayed_weights(inv_sqrt, MASK_PREFIX),
    ),
    (
        "masked_adam_fn",
        lambda: optim.masked(optim.adam(1e-2), MASK_FN),
        lambda: optax.masked(optax.adam(1e-2), MASK_FN),
    ),
    (
        "monitor_before_clip",
        lambda: optim.chain(
            optim.monitor_global_norm(), optim.clip_by_global_norm(1.0), optim.sgd(0.1, 0.9)
        ),
        lambda: optax.chain(
            optax.snapshot("grad_norm", optax.tree.norm),
            optax.clip_by_global_norm(1.0),
            optax.sgd(0.1, 0.9),
        ),
    ),
    (
        "inject_adamw_schedules",
        lambda: optim.inject_hyperparams(optim.adamw)(inv_sqrt, b1=lambda t: 0.9 - 0.5 / (t + 1)),
        lambda: optax.inject_hyperparams(optax.adamw)(inv_sqrt, b1=lambda t: 0.9 - 0.5 / (t + 1)),
    ),
]

# Compiled only: the aliases (chains of parts that also run eager above), other options of
# those parts, and the wrappers' variants.
JIT_ONLY_CASES = [
    (
        "scale_by_stddev_bc",
        # Compiled only: with bias correction the first step's v - m^2 is 0 up to rounding
        # (eps, inside the root, must outweigh it), and eager rounding differs there.
        lambda: optim.scale_by_stddev(0.8, 1e-2, bias_correction=True),
        lambda: optax.scale_by_stddev(0.8, 1e-2, bias_correction=True),
    ),
    (
        "scale_by_lion_smooth",
        lambda: optim.scale_by_lion(0.5, 0.9, mode="smooth", smooth_beta=3.0),
        lambda: optax.scale_by_lion(0.5, 0.9, mode="smooth", smooth_beta=3.0),
    ),
    (
        "scale_by_lion_refined",
        lambda: optim.scale_by_lion(mode="refined"),
        lambda: optax.scale_by_lion(mode="refined"),
    ),
    (
        "factored_rms_offset",
        lambda: optim.scale_by_factored_rms(decay_rate=0.6, step_offset=-3, epsilon=1e-20),
        lambda: optax.scale_by_factored_rms(decay_rate=0.6, step_offset=-3, epsilon=1e-20),
    ),
    (
        "clip_by_block_rms",
        lambda: optim.clip_by_block_rms(0.5),
        lambda: optax.clip_by_block_rms(0.5),
    ),
    (
        "param_block_rms",
        lambda: optim.scale_by_param_block_rms(0.5),
        lambda: optax.scale_by_param_block_rms(0.5),
    ),
    (
        "masked_trace_prefix",
        lambda: optim.masked(optim.trace(0.9), MASK_PREFIX),
        lambda: optax.masked(optax.trace(0.9), MASK_PREFIX),
    ),
    (
        "snapshot",
        lambda: optim.snapshot("max", lambda u: jax.tree.map(jnp.max, u)),
        lambda: optax.snapshot("max", lambda u: jax.tree.map(jnp.max, u)),
    ),
    (
        "inject_sgd",
        lambda: optim.inject_hyperparams(optim.sgd)(0.05, momentum=0.9, nesterov=True),
        lambda: optax.inject_hyperparams(optax.sgd)(0.05, momentum=0.9, nesterov=True),
    ),
    (
        "nadamw_mask_prefix",
        lambda: optim.adamw(1e-2, weight_decay=0.1, mask=MASK_PREFIX, nesterov=True),
        lambda: optax.nadamw(1e-2, weight_decay=0.1, mask=MASK_PREFIX),
    ),
    ("rmsprop", lambda: optim.rmsprop(1e-2), lambda: optax.rmsprop(1e-2)),
    (
        "rmsprop_centered",
        lambda: optim.rmsprop(1e-2, centered=True),
        lambda: optax.rmsprop(1e-2, centered=True),
    ),
    (
        "rmsprop_centered_nesterov_bc",
        lambda: optim.rmsprop(
            inv_sqrt, centered=True, momentum=0.8, nesterov=True, bias_correction=True
        ),
        lambda: optax.rmsprop(
            inv_sqrt, centered=True, momentum=0.8, nesterov=True, bias_correction=True
        ),
    ),
    (
        "rmsprop_torch",
        lambda: optim.rmsprop(1e-2, 0.99, eps=1e-8, eps_in_sqrt=False, initial_scale=1.0),
        lambda: optax.rmsprop(1e-2, 0.99, eps=1e-8, eps_in_sqrt=False, initial_scale=1.0),
    ),
    ("adagrad", lambda: optim.adagrad(0.1), lambda: optax.adagrad(0.1)),
    (
        "adagrad_schedule",
        lambda: optim.adagrad(inv_sqrt, initial_accumulator_value=0.0, eps=1e-10),
        lambda: optax.adagrad(inv_sqrt, initial_accumulator_value=0.0, eps=1e-10),
    ),
    ("lion", lambda: optim.lion(1e-3), lambda: optax.lion(1e-3)),
    (
        "lion_schedules_mask",
        lambda: optim.lion(inv_sqrt, 0.95, 0.98, weight_decay=lambda t: 1e-2, mask=MASK_PREFIX),
        lambda: optax.lion(inv_sqrt, 0.95, 0.98, weight_decay=lambda t: 1e-2, mask=MASK_PREFIX),
    ),
    ("adafactor", lambda: optim.adafactor(), lambda: optax.adafactor()),
    (
        "adafactor_factored",
        lambda: optim.adafactor(1e-2, min_dim_size_to_factor=2),
        lambda: optax.adafactor(1e-2, min_dim_size_to_factor=2),
    ),
    (
        "adafactor_all_options",
        lambda: optim.adafactor(
            inv_sqrt,
            min_dim_size_to_factor=3,
            decay_offset=-1,
            momentum=0.9,
            dtype_momentum=jnp.float32,
            weight_decay_rate=lambda t: 1e-3 * (t + 1),
            weight_decay_mask=MASK_FN,
            clipping_threshold=2.0,
        ),
        lambda: optax.adafactor(
            inv_sqrt,
            min_dim_size_to_factor=3,
            decay_offset=-1,
            momentum=0.9,
            dtype_momentum=jnp.float32,
            weight_decay_rate=lambda t: 1e-3 * (t + 1),
            weight_decay_mask=MASK_FN,
            clipping_threshold=2.0,
        ),
    ),
    (
        "adafactor_bare",
        lambda: optim.adafactor(
            1e-2, multiply_by_parameter_scale=False, clipping_threshold=None, factored=False
        ),
        lambda: optax.adafactor(
            1e-2, multiply_by_parameter_scale=False, clipping_threshold=None, factored=False
        ),
    ),
    (
        "inject_adafactor",
        lambda: optim.inject_hyperparams(optim.adafactor, static_args="min_dim_size_to_factor")(
            inv_sqrt, min_dim_size_to_factor=2
        ),
        lambda: optax.inject_hyperparams(optax.adafactor, static_args="min_dim_size_to_factor")(
            inv_sqrt, min_dim_size_to_factor=2
        ),
    ),
    (
        "from_name_rmsprop_inject",
        lambda: optim.from_name("RMSProp", 1e-2, inject=True, centered=True, momentum=0.9),
        lambda: optax.inject_hyperparams(optax.rmsprop)(1e-2, centered=True, momentum=0.9),
    ),
]

# optax's MultiSteps runs a lax.cond, compiled anew on every eager step (seconds): jit only.
EAGER_TOO_SLOW = {"ours_in_optax_multisteps"} | {name for name, *_ in JIT_ONLY_CASES}
RUNS = [
    pytest.param(seed, ours, ref, jit, id=f"{name}-{'jit' if jit else 'eager'}")
    for seed, (name, ours, ref) in enumerate(CASES + JIT_ONLY_CASES)
    for jit in (False, True)
    if jit or name not in EAGER_TOO_SLOW
]


@pytest.mark.parametrize("seed, make_ours, make_ref, jit", RUNS)
def test_matches_reference(seed, make_ours, make_ref, jit):
    key_p, key_g = jax.random.split(jax.random.key(seed))
    params = make_params(key_p)
    grads = make_grads(key_g, params, STEPS_JIT if jit else STEPS_EAGER)
    ours, params_ours, state_ours = run(make_ours(), optim.apply_updates, params, grads, jit)
    # The reference always runs compiled; eager and jit refer to our code.
    ref, params_ref, state_ref = run(make_ref(), optax.apply_updates, params, grads, True)
    stack = lambda history: jax.tree.map(lambda *u: np.stack(u), *history)  # leaves: (steps, ...)
    assert_close(stack(ours), stack(ref), "updates (steps, ...)", per_step=True)
    assert_close(params_ours, params_ref, "final params")
    # States use optax's field names and order, so their leaves line up one to one.
    state_leaves, ref_leaves = jax.tree.leaves(state_ours), jax.tree.leaves(state_ref)
    assert len(state_leaves) == len(ref_leaves)
    for a, b in zip(state_leaves, ref_leaves, strict=True):
        assert jnp.result_type(a) == jnp.result_type(b)
    assert_close(state_leaves, ref_leaves, "final state leaves")


def test_reference_differs_from_a_wrong_formula():
    """The comparison above is sharp: Nesterov vs plain momentum disagree far beyond RTOL."""
    params = make_params(jax.random.key(0))
    grads = make_grads(jax.random.key(1), params, 5)
    ours, *_ = run(optim.sgd(0.05, 0.9, nesterov=True), optim.apply_updates, params, grads, True)
    ref, *_ = run(optax.sgd(0.05, 0.9), optax.apply_updates, params, grads, True)
    with pytest.raises(AssertionError):
        assert_close(ours[-1], ref[-1], "last updates")


def _with_nonfinite(grads, bad_steps):
    out = list(grads)
    for i, t in enumerate(bad_steps):
        bad = jnp.nan if i % 2 == 0 else jnp.inf
        out[t] = jax.tree.map(lambda x: x, out[t])
        out[t]["blocks"][0]["w"] = out[t]["blocks"][0]["w"].at[1, 0].set(bad)
    return out


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_skip_nonfinite(jit):
    params = make_params(jax.random.key(2))
    clean = make_grads(jax.random.key(3), params, 20)
    bad_steps = [0, 4, 5, 11]
    grads = _with_nonfinite(clean, bad_steps)

    ours, params_ours, state = run(
        optim.skip_nonfinite(optim.sgd(0.05, 0.9)), optim.apply_updates, params, grads, jit
    )
    ref, params_ref, ref_state = run(
        optax.apply_if_finite(optax.sgd(0.05, 0.9), 10**6), optax.apply_updates, params, grads, True
    )
    stack = lambda history: jax.tree.map(lambda *u: np.stack(u), *history)
    assert_close(stack(ours), stack(ref), "updates (steps, ...)", per_step=True)
    assert_close(params_ours, params_ref, "final params")
    assert int(state.notfinite_count) == len(bad_steps) == int(ref_state.total_notfinite)
    assert bool(state.last_finite)
    assert_close(
        jax.tree.leaves(state.inner_state), jax.tree.leaves(ref_state.inner_state), "inner"
    )

    # Independent identity: skipping a step is the same as never seeing that gradient.
    kept = [g for t, g in enumerate(clean) if t not in bad_steps]
    _, params_kept, _ = run(optax.sgd(0.05, 0.9), optax.apply_updates, params, kept, True)
    assert_close(params_ours, params_kept, "params vs. never seeing the bad steps")
    for t in bad_steps:
        assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(ours[t]))


def test_skip_nonfinite_reports_last_step():
    tx = optim.skip_nonfinite(optim.sgd(0.1))
    state = tx.init({"w": jnp.ones(2)})
    _, state = tx.update({"w": jnp.array([1.0, jnp.inf])}, state)
    assert not bool(state.last_finite) and int(state.notfinite_count) == 1
    _, state = tx.update({"w": jnp.array([1.0, 2.0])}, state)
    assert bool(state.last_finite) and int(state.notfinite_count) == 1


def test_accumulate_is_sgd_on_the_mean():
    """Independent of optax: k micro-batches then one step = sgd on the mean gradient."""
    params = make_params(jax.random.key(4))
    grads = make_grads(jax.random.key(5), params, 12)
    k = 3
    ours, params_ours, state = run(
        optim.accumulate(optim.sgd(0.1, 0.9), k), optim.apply_updates, params, grads, True
    )
    means = [jax.tree.map(lambda *g: sum(g) / k, *grads[i : i + k]) for i in range(0, 12, k)]
    _, params_ref, _ = run(optax.sgd(0.1, 0.9), optax.apply_updates, params, means, True)
    assert_close(params_ours, params_ref, "params vs. sgd on mean gradients")
    assert int(state.gradient_step) == 4 and int(state.mini_step) == 0
    for t, u in enumerate(ours):
        moved = any(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(u))
        assert moved == (t % k == k - 1)


def test_extra_args_reach_optax_parts_of_our_chain():
    """optax.polyak_sgd needs `value=`; our chain forwards it and optax's scale ignores it."""
    params = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.25])}
    ours = optim.chain(optim.scale(2.0), optax.polyak_sgd(max_learning_rate=3.0))
    ref = optax.chain(optax.scale(2.0), optax.polyak_sgd(max_learning_rate=3.0))
    u, _ = ours.update(g, ours.init(params), params, value=jnp.array(0.7))
    r, _ = ref.update(g, ref.init(params), params, value=jnp.array(0.7))
    chex.assert_trees_all_close(u, r, rtol=1e-6)


def test_apply_updates_keeps_dtype():
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}
    updates = {"a": jnp.full(3, 0.25, jnp.float32), "b": jnp.full(2, 0.25, jnp.bfloat16)}
    out = optim.apply_updates(params, updates)
    assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32
    chex.assert_trees_all_equal(out, optax.apply_updates(params, updates))


def test_global_norm_matches_optax():
    params = make_params(jax.random.key(6))
    np.testing.assert_allclose(optim.global_norm(params), optax.tree.norm(params), rtol=1e-7)


def test_states_are_checkpointable_pytrees():
    """States flatten, unflatten and round-trip through numpy like any pytree."""
    import pickle

    params = make_params(jax.random.key(7))
    tx = optim.skip_nonfinite(optim.accumulate(optim.chain(optim.clip(1.0), optim.adam(1e-3)), 2))
    state = tx.init(params)
    g = make_grads(jax.random.key(8), params, 1)[0]
    _, state = jax.jit(tx.update)(g, state, params)
    leaves, treedef = jax.tree.flatten(state)
    restored = pickle.loads(
        pickle.dumps(jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves]))
    )
    assert jax.tree.structure(restored) == treedef
    chex.assert_trees_all_equal(jax.tree.leaves(restored), leaves)
    u1, _ = tx.update(g, state, params)
    u2, _ = tx.update(g, jax.tree.map(jnp.asarray, restored), params)
    chex.assert_trees_all_equal(u1, u2)
