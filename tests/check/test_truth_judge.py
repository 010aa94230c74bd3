"""funcbp check judges a disagreement with jax against float64 truth, not against jax alone."""

from __future__ import annotations

from jax import lax

from funcbp.autodiff import rules
from funcbp.check.rules import verify_rules


def test_saturated_tanh_passes_in_full_mode():
    """Full mode (2 seeds, every dtype) failed tanh on a false alarm: in float32 near |x| = 10
    both funcbp and jax round 1 - tanh^2, and funcbp is the nearer to float64 truth."""
    report = verify_rules(["tanh"], seeds=2, dtypes=("float32",))
    assert report.passed, str(report)


def test_a_slightly_wrong_rule_still_fails():
    """A rule off by 0.1% agrees with nothing: the float64 judge must not excuse it."""
    with rules.replaced_rule(lax.tanh_p, lambda ct, x, *, out, **params: (
            ct * (1.001 * (1 - out) * (1 + out)),)):
        report = verify_rules(["tanh"], seeds=1, dtypes=("float32",))
    assert not report.passed
    assert "saturated (float32): argument 0" in str(report)
