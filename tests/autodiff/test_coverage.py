"""funcbp's rule table measured against jax's own list of differentiable primitives.

Reference: jax's AD tables (read, never called). The gate is ``funcbp.autodiff.coverage.STRICT``:
until it is True a gap is reported as an expected failure that names the missing primitives.
"""

import pytest

import funcbp
from funcbp.autodiff import coverage
from funcbp.autodiff.coverage import EXCLUDED, coverage_report, jax_differentiable_primitives


@pytest.fixture(scope="module")
def report():
    return coverage_report()


def test_scope_is_jaxs_differentiable_primitives():
    prims = jax_differentiable_primitives()
    # one from each corner of the public API, so a broken enumeration cannot pass quietly
    for name in ["tanh", "dot_general", "gather", "scan", "cond", "custom_jvp_call",
                 "custom_vjp_call", "remat2", "jit", "psum", "lu", "fft", "get", "shard_map"]:
        assert name in prims, f"'{name}' is missing from the enumeration of jax's primitives"
    # no input to differentiate, or no derivative in jax: out of scope
    for name in ["iota", "rng_bit_generator", "pmax", "population_count", "funcbp_tag"]:
        assert name not in prims, f"'{name}' should not be in scope"


def test_scope_does_not_depend_on_what_else_was_imported():
    before = set(jax_differentiable_primitives())
    import jax.experimental.sparse  # noqa: F401  (registers bcoo_* rules in jax's tables)

    assert set(jax_differentiable_primitives()) == before


def test_groups_partition_the_scope(report):
    covered, excluded, missing = report
    scope = set(jax_differentiable_primitives())
    assert set(covered) | set(excluded) | set(missing) == scope
    assert not set(covered) & set(missing)
    assert set(covered) <= {p.name for p in funcbp.VJP_RULES}
    assert "tanh" in covered and "random_bits" in excluded
    assert str(report).startswith("coverage against jax:")


def test_every_exclusion_has_a_reason():
    for name, reason in EXCLUDED.items():
        assert isinstance(reason, str) and len(reason) > 20, f"EXCLUDED['{name}']: say why"


def test_every_differentiable_primitive_has_a_rule_or_an_exclusion(report):
    """The gate: flip ``coverage.STRICT`` to True once the rules of issue 18 have landed."""
    problems = []
    if report.missing:
        problems.append(f"{len(report.missing)} primitives that jax differentiates have no "
                        f"funcbp rule and no entry in EXCLUDED: {', '.join(report.missing)}")
    if report.stale():
        problems.append(f"stale EXCLUDED entries (now covered, or no longer in jax): "
                        f"{', '.join(report.stale())}")
    if problems and not coverage.STRICT:
        pytest.xfail("; ".join(problems))
    assert not problems, "\n".join([*problems, "", str(report)])
