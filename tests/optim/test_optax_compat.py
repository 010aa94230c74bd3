"""optax's own alias and combinator tests, written again with funcbp's constructors swapped in.

optax's `alias_test.py` runs each optimiser of a table (`_OPTIMIZERS_UNDER_TEST`) through a
set of contracts: it minimises a parabola and the Rosenbrock function, accepts unexpected
extra args, wraps in `inject_hyperparams`, keeps bfloat16 updates bfloat16, keeps its state's
dtypes, and runs under `optax.MultiSteps`. `ALIASES` below is the part of that table funcbp
covers (same names and keyword arguments); each test runs funcbp's optimiser and optax's side
by side. The type checks of optax's `combine_test.py`/`base_test.py` follow, then the
`add_decayed_weights` cases optax relies on (`fromage`'s schedule, `update(None, ...)`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import optim
from tests.optim.test_optim_vs_optax import assert_close, make_grads, make_params, run

# (id, funcbp factory, optax factory, kwargs): optax's _OPTIMIZERS_UNDER_TEST rows for the
# optimisers funcbp has, with optax's keyword arguments.
ALIASES = [
    ("adafactor_lr", optim.adafactor, optax.adafactor, {"learning_rate": 5e-3}),
    ("adafactor", optim.adafactor, optax.adafactor, {}),
    ("adagrad", optim.adagrad, optax.adagrad, {"learning_rate": 1.0}),
    ("adam", optim.adam, optax.adam, {"learning_rate": 1e-1}),
    ("adamw", optim.adamw, optax.adamw, {"learning_rate": 1e-1}),
    ("lion", optim.lion, optax.lion, {"learning_rate": 1e-2, "weight_decay": 1e-4}),
    ("nadam", functools.partial(optim.adam, nesterov=True), optax.nadam, {"learning_rate": 1e-2}),
    (
        "nadamw",
        functools.partial(optim.adamw, nesterov=True),
        optax.nadamw,
        {"learning_rate": 1e-2},
    ),
    ("rmsprop", optim.rmsprop, optax.rmsprop, {"learning_rate": 5e-3}),
    (
        "rmsprop_momentum",
        optim.rmsprop,
        optax.rmsprop,
        {"learning_rate": 5e-3, "momentum": 0.9},
    ),
    ("sgd", optim.sgd, optax.sgd, {"learning_rate": 1e-3, "momentum": 0.9}),
]
ALIAS_PARAMS = [pytest.param(ours, ref, kw, id=name) for name, ours, ref, kw in ALIASES]
NO_COMPLEX = {optax.lion}  # as in optax's test: Lion's sign is not defined for complex numbers


def parabola(dtype):
    final = jnp.array([1.0, -1.0, 1.0], dtype)
    if jnp.iscomplexobj(final):
        final = final * (1 + 1j)
    objective = lambda p: jnp.sum(jnp.real((p - final) * jnp.conj(p - final)))
    return jnp.array([-1.0, 10.0, 1.0], dtype), final, objective


def rosenbrock(dtype):
    a, b = 1.0, 100.0
    objective = lambda p: (a - p[0]) ** 2 + b * (p[1] - p[0] ** 2) ** 2
    return jnp.zeros(2, dtype), jnp.array([a, a**2], dtype), objective


STEPS = 10_000  # optax's test_optimization budget


def real_view(tree):
    """The leaves of `tree`, complex ones as (real, imag) pairs, for `assert_close`."""
    leaves = jax.tree.leaves(tree)
    return [jnp.stack([x.real, x.imag]) if jnp.iscomplexobj(x) else x for x in leaves]


@pytest.mark.parametrize("make_ours, make_ref, kwargs", ALIAS_PARAMS)
def test_optimization(make_ours, make_ref, kwargs):
    """optax's test_optimization: both minimise the targets, and agree on every iterate.

    All targets run in one compiled `fori_loop` per optimiser pair; funcbp's steps also
    pass an extra keyword arg (optax's test_optimizers_accept_extra_args).
    """
    targets = [(parabola, jnp.float32), (rosenbrock, jnp.float32)]
    if make_ref not in NO_COMPLEX:
        targets.append((parabola, jnp.complex64))
    problems = [target(dtype) for target, dtype in targets]
    ours, ref = make_ours(**kwargs), make_ref(**kwargs)

    def descend(tx, objective, x0, extra):
        def body(_, carry):
            x, state = carry
            g = jax.tree.map(jnp.conj, jax.grad(objective)(x))  # complex: conjugate, as optax
            u, state = tx.update(g, state, x, **extra)
            return optax.apply_updates(x, u), state

        return jax.lax.fori_loop(0, STEPS, body, (x0, tx.init(x0)))

    @jax.jit
    def solve_all():
        out = []
        for x0, _, objective in problems:
            out.append(descend(ours, objective, x0, {"unexpected_extra_arg": 1}))
            out.append(descend(ref, objective, x0, {}))
        return out

    results = solve_all()
    for i, (_, final, _) in enumerate(problems):
        (x_ours, s_ours), (x_ref, s_ref) = results[2 * i], results[2 * i + 1]
        np.testing.assert_allclose(x_ours, x_ref, rtol=1e-6, atol=1e-6)
        assert_close(real_view(s_ours), real_view(s_ref), "final state leaves")
        if kwargs.get("learning_rate") is not None:  # optax skips Adafactor without one
            np.testing.assert_allclose(x_ours, final, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("make_ours, make_ref, kwargs", ALIAS_PARAMS)
def test_alias_contracts(make_ours, make_ref, kwargs):
    """optax's inject_hyperparams, preserve_dtype, state-stability and gradient-accumulation
    tests, one step each, all in one compiled function per optimiser."""
    static = ("min_dim_size_to_factor",) if make_ref is optax.adafactor else ()
    tx = make_ours(**kwargs)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    injected = {
        "ours": optim.inject_hyperparams(make_ours, static_args=static)(**kwargs),
        "ours_in_optax_wrapper": optax.inject_hyperparams(make_ours, static_args=static)(**kwargs),
        "ref": optax.inject_hyperparams(make_ref, static_args=static)(**kwargs),
    }
    plain_ref = make_ref(**kwargs)
    multisteps = optax.MultiSteps(tx, every_k_schedule=4)

    @jax.jit
    def steps():
        params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
        grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
        out = {k: t.update(grads, t.init(params), params) for k, t in injected.items()}
        out["plain_ref"] = plain_ref.update(grads, plain_ref.init(params), params)
        for dtype in (jnp.bfloat16, jnp.float16):
            p = jnp.array([1.0, 2.0], dtype)
            state = tx.init(p)
            out[dtype.__name__] = (state, *tx.update(2 * p, state, p))
        p = jnp.array([1.0, 2.0], jnp.bfloat16)
        out["multisteps"] = multisteps.update(2 * p, multisteps.init(p), p)[0]
        return out

    out = steps()
    u_ref, s_ref = out["ref"]
    for wrapper in ("ours", "ours_in_optax_wrapper"):
        assert isinstance(injected[wrapper], optax.GradientTransformationExtraArgs)
        u, s = out[wrapper]
        assert_close(u, u_ref, f"{wrapper}: injected updates")
        assert_close(jax.tree.leaves(s), jax.tree.leaves(s_ref), f"{wrapper}: injected state")
        # Injected hyperparameters are float32 arrays, so `1 - b2` rounds differently from
        # the plain optimiser's Python float: optax's own test allows rtol 1e-3 there.
        for a, b in zip(u, out["plain_ref"][0], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3)
    for dtype in (jnp.bfloat16, jnp.float16):
        state, u, new_state = out[dtype.__name__]
        assert u.dtype == dtype, f"{dtype.__name__} gradients gave {u.dtype} updates"
        assert jax.tree.map(jnp.result_type, new_state) == jax.tree.map(jnp.result_type, state)
    # MultiSteps' lax.cond needs the inner state's types to hold; its first step is held back.
    np.testing.assert_array_equal(out["multisteps"], jnp.zeros(2, jnp.bfloat16))


# ---------------------------------------------------------------------- optax's type checks


def _extra_args_part(expected_loss):
    def update(updates, state, params=None, *, loss, **extra_args):
        assert loss == expected_loss
        return updates, state

    return optax.GradientTransformationExtraArgs(lambda p: (), update)


def test_chain_is_an_optax_extra_args_transformation():
    """optax combine_test test_extra_args / test_extra_args_chaining, with optim.chain."""
    params = {"a": jnp.array(1.0), "b": jnp.array(2.0)}
    tx = optim.chain(optim.adam(1e-3), _extra_args_part(expected_loss=1))
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    tx.update(params, tx.init(params), loss=1, ignored_kwarg="hi")

    plain = optim.scale(2.0)
    assert isinstance(plain, optax.GradientTransformation)
    assert not isinstance(plain, optax.GradientTransformationExtraArgs)
    chained = optim.chain(plain, plain)
    assert isinstance(chained, optax.GradientTransformation)
    assert isinstance(chained, optax.GradientTransformationExtraArgs)
    assert optax.with_extra_args_support(chained) is chained
    wrapped = optim.with_extra_args_support(plain)
    assert isinstance(wrapped, optax.GradientTransformationExtraArgs)
    assert wrapped.update(jnp.ones(1), wrapped.init(jnp.ones(1)), ignored_arg="hi")[0] == 2.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.adamw(1e-3),
        lambda: optim.masked(optim.trace(0.9), {"a": True, "b": False}),
        lambda: optim.inject_hyperparams(optim.sgd)(0.1),
        lambda: optim.from_name("lion", 1e-4),
    ],
    ids=["alias", "masked", "inject_hyperparams", "from_name"],
)
def test_wrappers_are_extra_args_transformations(make):
    tx = make()
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    tx.update(params, tx.init(params), params, unexpected_extra_arg=1)


def test_extra_args_positional_params():
    """optax combine_test test_extra_args_positional_params."""

    def update(updates, state, params=None):
        assert params is not None
        return updates, state

    def update_kwargs(updates, state, params=None, **extra_args):
        assert params is not None
        return updates, state

    t1 = optax.GradientTransformation(lambda p: (), update)
    t2 = optax.GradientTransformationExtraArgs(lambda p: (), update_kwargs)
    opt = optim.chain(t1, t2)
    params = {"a": jnp.array(1.0)}
    opt.update(params, opt.init(params), params, ignored_kwarg="hi")
    opt.update(params, opt.init(params), params=params, ignored_kwarg="hi")


# ------------------------------------------------------------ add_decayed_weights and fromage


def test_add_decayed_weights_of_none_is_none():
    """optax _adding_test test_none_argument: update(None, state, params) -> None."""
    weights = (jnp.ones(2), {"a": jnp.ones(2), "b": jnp.ones(2)})
    for wd in (0.1, lambda t: 0.1):
        tx = optim.add_decayed_weights(wd)
        updates, _ = tx.update(None, tx.init(weights), weights)
        assert updates is None
    assert optim.add_decayed_weights(0.1).update(None, 0, weights) == (None, 0)


def fromage_with_our_decay(learning_rate, min_norm=1e-6):
    """optax.fromage's body (alias.py) with funcbp's add_decayed_weights swapped in."""
    if not callable(learning_rate):
        mult = 1 / (1 + learning_rate**2) ** 0.5
        return optax.chain(
            optax.scale_by_trust_ratio(min_norm),
            optax.scale_by_learning_rate(learning_rate * mult),
            optim.add_decayed_weights(mult - 1),  # negative: fromage shrinks the weights
        )
    mult_lr = lambda count: 1 / (1 + learning_rate(count) ** 2) ** 0.5
    return optax.chain(
        optax.scale_by_trust_ratio(min_norm),
        optax.scale_by_learning_rate(lambda c: mult_lr(c) * learning_rate(c)),
        optim.add_decayed_weights(lambda c: mult_lr(c) - 1),
    )


@pytest.mark.parametrize(
    "learning_rate", [5e-3, lambda t: 0.1 / jnp.sqrt(1.0 + t)], ids=["constant", "schedule"]
)
def test_fromage_with_our_add_decayed_weights(learning_rate):
    params = make_params(jax.random.key(20))
    grads = make_grads(jax.random.key(21), params, 50)
    _, p_ours, s_ours = run(
        fromage_with_our_decay(learning_rate), optax.apply_updates, params, grads, True
    )
    _, p_ref, s_ref = run(optax.fromage(learning_rate), optax.apply_updates, params, grads, True)
    assert_close(p_ours, p_ref, "final params")
    assert_close(jax.tree.leaves(s_ours), jax.tree.leaves(s_ref), "final state leaves")


# ----------------------------------------------------- inject_hyperparams, monitor, from_name


def test_inject_hyperparams_manual_change_under_jit():
    """A learning rate written into the state mid-run acts at once, as in optax, and the
    jitted step is traced once."""
    params = make_params(jax.random.key(22))
    grads = make_grads(jax.random.key(23), params, 12)
    traces = []

    def make_step(tx, apply_updates):
        def step(p, s, g):
            traces.append(tx)
            u, s = tx.update(g, s, p)
            return apply_updates(p, u), s

        return jax.jit(step)

    runs = []
    for lib in (optim, optax):
        tx = lib.inject_hyperparams(lib.adamw)(learning_rate=1e-2, weight_decay=1e-3)
        step, p, s = make_step(tx, lib.apply_updates), params, tx.init(params)
        for t, g in enumerate(grads):
            if t == 6:
                s.hyperparams["learning_rate"] = jnp.asarray(1e-4, jnp.float32)
            p, s = step(p, s, g)
        runs.append((p, s))
    assert len(traces) == 2, "a jitted step was traced again after the change"
    (p_ours, s_ours), (p_ref, s_ref) = runs
    assert_close(p_ours, p_ref, "final params")
    assert_close(jax.tree.leaves(s_ours), jax.tree.leaves(s_ref), "final state leaves")
    assert optim.tree_get(s_ours, "learning_rate") == np.float32(1e-4)


def test_monitor_records_the_norm_before_clipping():
    params = make_params(jax.random.key(24))
    grads = make_grads(jax.random.key(25), params, 3)
    tx = optim.chain(optim.monitor_global_norm(), optim.clip_by_global_norm(0.01), optim.adam(1e-3))
    state = tx.init(params)
    assert optim.tree_get(state, "grad_norm") == 0.0
    step = jax.jit(tx.update)
    for g in grads:
        _, state = step(g, state, params)
    np.testing.assert_allclose(optim.tree_get(state, "grad_norm"), optax.tree.norm(g), rtol=1e-6)
    assert float(optax.tree.norm(g)) > 0.01  # so the clipped norm would have been different
    # bfloat16 gradients keep the recorded norm float32: the state's types do not drift.
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), g)
    _, s16 = optim.monitor_global_norm().update(bf16, optim.monitor_global_norm().init(params))
    assert optim.tree_get(s16, "grad_norm").dtype == jnp.float32


def test_tree_get_finds_one_value_or_says_where_the_many_are():
    tx = optim.inject_hyperparams(optim.adam)(learning_rate=1e-3)
    state = optim.chain(optim.monitor_global_norm(), tx).init({"w": jnp.ones(2)})
    assert optim.tree_get(state, "learning_rate") == np.float32(1e-3)
    assert optim.tree_get(state, "missing", default=-1) == -1
    with pytest.raises(KeyError, match=r"'count' occurs 2 times in the state \(state\[1\]\.count"):
        optim.tree_get(state, "count")


OPTAX_BY_NAME = {
    "sgd": optax.sgd,
    "momentum": functools.partial(optax.sgd, momentum=0.9),
    "nesterov": functools.partial(optax.sgd, momentum=0.9, nesterov=True),
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
    "lion": optax.lion,
    "adafactor": optax.adafactor,
}


def test_from_name_knows_the_optimizers_the_tests_cover():
    assert set(optim.OPTIMIZERS) == set(OPTAX_BY_NAME)


@pytest.mark.parametrize("name", list(OPTAX_BY_NAME))
def test_from_name_builds_the_alias(name):
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
    # from_name keeps dtypes and masks out of the injected state; optax's wrapper, told the same.
    static = ("min_dim_size_to_factor", "dtype_momentum") if name == "adafactor" else ()
    for inject in (False, True):
        ours = optim.from_name(name.upper(), 1e-2, inject=inject)
        ref = OPTAX_BY_NAME[name]
        ref = optax.inject_hyperparams(ref, static_args=static)(1e-2) if inject else ref(1e-2)
        u, s = ours.update(grads, ours.init(params), params)
        r, s_ref = ref.update(grads, ref.init(params), params)
        assert_close(u, r, f"from_name({name!r}, inject={inject}) updates")
        # Only the inner states: `momentum(lr, beta)` injects `beta` where optax.sgd's is
        # `momentum`, so the hyperparameter dicts sort differently.
        inner, inner_ref = (s.inner_state, s_ref.inner_state) if inject else (s, s_ref)
        assert_close(jax.tree.leaves(inner), jax.tree.leaves(inner_ref), "state leaves")
    assert optim.tree_get(s, "learning_rate") == np.float32(1e-2)


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda: optim.from_name("adamx", 1e-3), ValueError, "Did you mean 'adam'"),
        (lambda: optim.from_name("sgdm", 1e-3), ValueError, "choose one of sgd, momentum"),
        (lambda: optim.from_name(3, 1e-3), TypeError, "optimizer name must be a str"),
        (
            lambda: optim.from_name("rmsprop", 1e-3, b1=0.9),
            ValueError,
            "rmsprop does not take option 'b1'; its options are decay, eps",
        ),
        (lambda: optim.from_name("adamw", -1e-3), ValueError, "learning_rate must be a non-neg"),
        (lambda: optim.from_name("adam", 1e-3, b2=1.0), ValueError, r"b2 must be in \[0, 1\)"),
        (lambda: optim.from_name("adagrad", 1e-3, eps=0), ValueError, "eps must be > 0, got 0"),
        (lambda: optim.from_name("lion", 1e-3, b1="0.9"), TypeError, "b1 must be a number"),
        (
            lambda: optim.from_name("adafactor", 1e-3, inject=True, momentum=2.0),
            ValueError,
            r"momentum must be in \[0, 1\)",
        ),
    ],
)
def test_from_name_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_masked_refuses_array_masks_and_bad_structures():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(TypeError, match="needs a mask of Python booleans"):
        optim.masked(optim.trace(0.9), {"w": jnp.array([True, False]), "b": True}).init(params)
    with pytest.raises(ValueError, match="mask must be a tree of booleans"):
        optim.masked(optim.trace(0.9), {"w": True}).init(params)


def test_masked_state_has_optaxs_structure_and_works_with_map_params():
    """optax _masking_test test_masked_state_structure and its tree_map_params subtests."""
    params = {"a": [jnp.ones(1), (jnp.ones(2), jnp.ones(3))], "b": {"c": jnp.ones(4)}}
    mask = {"a": [True, (True, False)], "b": False}
    state = optim.masked(optim.trace(0.9), mask).init(params)
    ref = optax.masked(optax.trace(0.9), mask).init(params)
    assert jax.tree.structure(state.inner_state.trace) == jax.tree.structure(ref.inner_state.trace)
    tx = optim.masked(optim.trace(0.9), mask)
    mapped = optax.tree.map_params(tx, lambda v: v + 1, state)
    np.testing.assert_array_equal(mapped.inner_state.trace["a"][0], jnp.ones(1))


@jax.tree_util.register_pytree_node_class
class _CallableMask:
    """A callable pytree of booleans, like an equinox module used as a mask."""

    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, x):
        raise AssertionError("a mask tree must not be called")

    def tree_flatten(self):
        return (self.w, self.b), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def test_callable_pytree_mask_is_a_tree_not_a_function():
    """optax _masking_test test_mask_compatible_callable_pytree."""
    params = _CallableMask(jnp.ones(2), jnp.ones(2))
    for tx in (
        optim.masked(optim.scale(-1.0), _CallableMask(True, False)),
        optim.add_decayed_weights(1.0, mask=_CallableMask(True, False)),
    ):
        u, _ = tx.update(params, tx.init(params), params)
        assert float(jnp.abs(u.w - u.b).sum()) > 0  # w changed, b passed through
