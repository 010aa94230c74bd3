"""The static batch-axis analysis: where each value keeps the example axis, and where examples
mix. Checked on jaxprs of small functions (tracing only, no compilation)."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from funcbp.autodiff.extend import MIXED, analyze


def _out_axis(fn, *args, batched):
    closed = jax.make_jaxpr(fn)(*args)
    an = analyze(closed.jaxpr, [0 if b else None for b in batched], [not b for b in batched])
    return an.axis(closed.jaxpr.outvars[0]), an


W = jnp.ones((3, 4))
X = jnp.ones((5, 3))

CASES = {  # name -> (fn, args, batched flags, expected output axis)
    "dense": (lambda w, x: x @ w, (W, X), (False, True), 0),
    "dense_transposed": (lambda w, x: (x @ w).T, (W, X), (False, True), 1),
    "weight_on_the_left": (lambda w, x: w.T @ x.T, (W, X), (False, True), 1),
    "reshape_keeps_batch": (lambda w, x: (x @ w).reshape(5, 2, 2), (W, X), (False, True), 0),
    "reshape_merges_batch": (lambda w, x: (x @ w).reshape(20), (W, X), (False, True), MIXED),
    "sum_over_features": (lambda w, x: jnp.sum(x @ w, axis=1), (W, X), (False, True), 0),
    "mean_over_batch": (lambda w, x: jnp.mean(x @ w, axis=0), (W, X), (False, True), MIXED),
    "bias_broadcast": (lambda w, x: x @ w + w[0], (W, X), (False, True), 0),
    "embedding": (lambda t, i: t[i], (jnp.ones((7, 3)), jnp.zeros((5, 2), jnp.int32)),
                  (False, True), 0),
    "cumsum_over_batch": (lambda w, x: jnp.cumsum(x @ w, axis=0), (W, X), (False, True), MIXED),
    # (5, 6, 3) sequences, batch first, scanned time-major: the carry picks up the batch axis
    "scan_over_time": (lambda w, x: lax.scan(lambda h, xt: (jnp.tanh(xt @ w + h), None),
                                             jnp.zeros((5, 4)),
                                             jnp.swapaxes(jnp.stack([x] * 6, 1), 0, 1))[0],
                       (W, X), (False, True), 0),
    "scan_over_batch": (lambda w, x: lax.scan(lambda h, xt: (h + xt @ w, None),
                                              jnp.zeros(4), x)[0], (W, X), (False, True), MIXED),
}


@pytest.mark.parametrize("name", list(CASES))
def test_output_axis(name):
    fn, args, batched, expected = CASES[name]
    axis, an = _out_axis(fn, *args, batched=batched)
    assert axis is expected or axis == expected, (axis, expected)
    if expected is MIXED:
        assert an.mixing, "a mixed active value must be reported"
