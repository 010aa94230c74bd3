"""funcbp check judges a disagreement with jax against float64 truth, not against jax alone."""

from __future__ import annotations

from jax import lax

import funcbp
from funcbp.autodiff import rules
from funcbp.check.rules import verify_rules


def test_saturated_tanh_passes_in_full_mode():
    """Full mode (2 seeds, every dtype) failed tanh on a false alarm: in float32 near |x| = 10
    both funcbp and jax round 1 - tanh^2, and funcbp is the nearer to float64 truth."""
    report = verify_rules(["tanh"], seeds=2, dtypes=("float32",))
    assert report.passed, str(report)


def test_a_slightly_wrong_rule_still_fails():
    """A rule off by 0.1% agrees with nothing: the float64 judge must not excuse it."""
    good = funcbp.VJP_RULES[lax.tanh_p]
    complex_ok = lax.tanh_p in rules.COMPLEX_RULES
    forward = rules.FORWARD_RULES.get(lax.tanh_p)
    funcbp.register_vjp_rule(lax.tanh_p, lambda ct, x, *, out, **params: (
        ct * (1.001 * (1 - out) * (1 + out)),), override=True)
    try:
        report = verify_rules(["tanh"], seeds=1, dtypes=("float32",))
    finally:  # restore the rule exactly: its complex flag and forward rule too
        funcbp.register_vjp_rule(lax.tanh_p, good, override=True, forward=forward,
                                 handles_complex=complex_ok)
    assert not report.passed
    assert "saturated (float32): argument 0" in str(report)
