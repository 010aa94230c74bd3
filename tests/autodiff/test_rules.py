"""Every registered VJP rule against jax.vjp (random cotangents) and finite differences."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax.extend import core

import funcbp
from funcbp.autodiff.trace import all_jaxprs
from funcbp.check.rules import of_float_args, pull_back
from tests.autodiff.cases import all_cases
from tests.jaxversion import lacks, skip_without

CASES = all_cases()


def _random_like(seed, tree):
    # numpy draws: a jax.random draw per new shape would cost a compilation per case
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    def draw(shape, dtype):  # complex outputs get complex cotangents (both parts random)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    return treedef.unflatten(
        [draw(jnp.shape(x), jnp.result_type(x))
         if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
         else np.zeros(jnp.shape(x), jax.dtypes.float0) for x in leaves])


def _sample(case, seed, dtype):
    return case.sample(jax.random.key(seed), jnp.dtype(dtype))


def _vjp_from_jvp(f, *primals):
    """``jax.vjp``'s contract from forward mode only: the Jacobian, one ``jax.jvp`` per input
    element (vmapped), contracted with the cotangent. For primitives jax cannot reverse."""
    def pullback(ct):
        cts = []
        for i, p in enumerate(primals):
            def column(t, i=i):
                tangents = [jnp.zeros_like(q) for q in primals]
                tangents[i] = t
                return jax.jvp(f, primals, tuple(tangents))[1]
            basis = jnp.eye(p.size, dtype=p.dtype).reshape((p.size, *p.shape))
            cols = jax.tree.leaves(jax.vmap(column)(basis))
            cts.append(sum(jnp.tensordot(c, g, g.ndim) for c, g in
                           zip(cols, jax.tree.leaves(ct), strict=True)).reshape(p.shape))
        return tuple(cts)
    return f(*primals), pullback


# Each case runs jitted in float32 (the production path) and eagerly in float64 (where the
# tolerance is tight enough to expose a slightly wrong formula): every mode and every dtype is
# covered at half the cost of the full cross product, which keeps the suite within budget.
MODES = [("jit", "float32"), ("eager", "float64")]


@pytest.mark.parametrize("wrap,dtype", MODES, ids=[f"{w}-{d}" for w, d in MODES])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule_matches_jax_vjp(case, dtype, wrap):
    skip_without(*case.jax_features, *case.reference_features)
    if dtype not in case.dtypes:
        dtype = case.dtypes[0]  # e.g. a bfloat16 case that only makes sense in float32
    seed = abs(hash((case.name, dtype))) % 2**31  # fresh inputs per case, reproducible per run
    with jax.enable_x64(dtype == "float64"):
        values = _sample(case, seed, dtype)
        cotangent = partial(_random_like, seed + 1)
        ours_of = lambda *v: pull_back(funcbp.vjp, case.fun, v, cotangent)  # noqa: E731
        ref_vjp = _vjp_from_jvp if case.reference == "jvp" else jax.vjp
        ref_fun = case.reference if callable(case.reference) else case.fun
        ref_of = lambda *v: pull_back(ref_vjp, ref_fun, v, cotangent)  # noqa: E731
        if wrap == "jit":  # one compilation computes both
            ours, ref = jax.jit(lambda *v: (ours_of(*v), ref_of(*v)))(*values)
        else:
            # funcbp runs eagerly, equation by equation; the reference is compiled once, since
            # jax's own backward run eagerly costs a compilation per operation
            ours, ref = ours_of(*values), jax.jit(ref_of)(*values)
        rtol, atol = (case.rtol, case.atol) if dtype == "float32" else (case.x64_rtol, 1e-12)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol),
                     ours, ref)


def _fd_cases(cases):
    """One finite-difference check per operation family (the case-name prefix: conv_*, scan_*,
    cumsum_*, ...). Every case is already compared with jax at rtol 1e-9 in float64; finite
    differences add a reference independent of jax, and one per family keeps the suite fast."""
    seen, picked = set(), []
    for c in cases:
        family = c.name.split("_")[0]
        if c.fd and "float64" in c.dtypes and family not in seen:
            seen.add(family)
            picked.append(c)
    return picked


FD_CASES = _fd_cases(CASES)


@pytest.mark.parametrize("case", FD_CASES, ids=[c.name for c in FD_CASES])
def test_rule_matches_finite_differences(case):
    skip_without(*case.jax_features)
    with jax.enable_x64(True):
        values = _sample(case, 7, "float64")
        f, dyn = of_float_args(case.fun, values)
        f_jit = jax.jit(f)
        pull = jax.jit(lambda a, ct: funcbp.vjp(f, *a)[1](ct))

        def f_vjp(*a):  # funcbp.vjp's contract, compiled once instead of dispatched op by op
            return f_jit(*a), lambda ct: pull(a, ct)

        jax.test_util.check_vjp(f_jit, f_vjp, dyn, atol=1e-6, rtol=1e-6, eps=case.fd_eps)


def _primitives(jaxpr: core.Jaxpr, seen: set) -> set:
    seen.update(eqn.primitive for j in all_jaxprs(jaxpr) for eqn in j.eqns)
    return seen


def _abstract_sample(case):
    dtype = jnp.dtype(case.dtypes[0])
    return jax.eval_shape(lambda key: case.sample(key, dtype), jax.random.key(0))


def test_every_registered_rule_has_a_case():
    covered: set = set()
    for case in CASES:
        if lacks(*case.jax_features):
            continue  # the installed jax cannot run it; its primitive must have another case
        try:  # abstract inputs: tracing needs shapes only, and skips compiling the samplers
            shapes = _abstract_sample(case)
            jaxpr = jax.make_jaxpr(case.fun)(*shapes)
        except Exception:  # a case whose function needs concrete values
            jaxpr = jax.make_jaxpr(case.fun)(*_sample(case, 0, case.dtypes[0]))
        _primitives(jaxpr.jaxpr, covered)
    missing = sorted(p.name for p in funcbp.VJP_RULES if p not in covered)
    assert not missing, f"registered rules with no test case in tests/autodiff/cases: {missing}"


def test_a_planted_wrong_rule_is_caught():
    """The comparison above is sharp enough to notice a subtly wrong rule."""
    from jax import lax

    from funcbp.autodiff.rules import replaced_rule

    with replaced_rule(lax.tanh_p, lambda ct, x, *, out, **p: (ct * (1 - out * out * 1.001),)):
        x = jax.random.normal(jax.random.key(0), (5,))
        ours = funcbp.grad(lambda x: jnp.sum(jnp.tanh(x)))(x)
        ref = jax.grad(lambda x: jnp.sum(jnp.tanh(x)))(x)
        with pytest.raises(AssertionError):
            np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-6)
