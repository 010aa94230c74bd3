"""find_nonfinite, value_and_grad(debug_nans=True) and the trainer's NaN origin: each planted
failure is found where it was planted (primitive, line, phase, path, iteration)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp
from funcbp import losses, nn, optim
from funcbp.debug import NonFiniteError, find_nonfinite
from funcbp.train import make_train_step


def _line(fn, text: str) -> int:
    """The source line number of ``text`` inside ``fn``."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _body(h, x):
    z = h * x
    y = jnp.log(z)  # log(0) where x == 0
    return h + 0.1 * jnp.tanh(y), y


@jax.jit
def _block(w, xs):
    h, ys = lax.scan(_body, w, xs)
    return h, ys


def _deep_loss(w, xs):
    h, ys = _block(w, xs)
    return jnp.sum(h) + jnp.sum(ys)


def test_log_of_zero_deep_in_a_scan_is_found_with_its_line_and_iteration():
    xs = jnp.array([1.0, 2.0, 3.0, 0.0, 4.0])[:, None] * jnp.ones((5, 3))
    report = find_nonfinite(_deep_loss, jnp.ones(3), xs)
    site = report.first
    assert not report.value_finite and report.grads_finite is None
    assert (site.phase, site.primitive, site.iteration) == ("forward", "log", 3)
    assert site.where.split(":")[1] == str(_line(_body, "jnp.log(z)"))
    assert "jnp.log(z)" in site.source
    assert [f.primitive for f in site.path] == ["jit(_block)", "scan"]
    assert site.path[1].detail == "iteration 3"
    assert (site.inputs[0].min, site.inputs[0].max) == (0.0, 0.0)
    assert site.outputs[0].neginf == 3
    assert "scan [iteration 3]" in str(report)


def test_sqrt_of_zero_is_a_backward_rule_not_a_forward_equation():
    report = find_nonfinite(lambda x: jnp.sum(jnp.sqrt(x) * 2.0), jnp.array([0.0, 4.0]))
    site = report.first
    assert report.value_finite and report.grads_finite is False and report.stopped
    assert (site.phase, site.primitive) == ("backward", "sqrt")
    assert [s.phase for s in report.sites] == ["backward"]
    assert site.outputs[0].posinf == 1
    assert "the VJP rule of 'sqrt'" in str(report)


def test_masked_forward_inf_is_reported_and_the_backward_rule_blamed():
    f = lambda x: jnp.sum(jnp.where(x > 0, jnp.log(x), 0.0))  # noqa: E731
    report = find_nonfinite(f, jnp.array([0.0, 1.0]), all_sites=True)
    assert [(s.phase, s.primitive, s.masked) for s in report.sites] == [
        ("forward", "log", True), ("backward", "log", False)]
    assert report.first.phase == "backward"


def test_all_sites_records_every_origin_and_cond_and_while_paths():
    def f(x, n):
        a = lax.cond(x[0] > 0, lambda x: jnp.log(x - 1.0), lambda x: x, x)  # -inf at 1
        b = lax.while_loop(lambda c: c[1] < n, lambda c: (c[0] / (2.0 - c[1]), c[1] + 1.0),
                           (x, 0.0))[0]  # x / 0 in the third iteration
        return jnp.sum(a), jnp.sum(b)

    report = find_nonfinite(f, jnp.array([1.0, 3.0]), 4.0, all_sites=True)
    fwd = [s for s in report.sites if s.phase == "forward"]
    assert [(s.primitive, s.path[-1].detail) for s in fwd] == [("log", "branch 1"),
                                                              ("div", "iteration 2")]
    assert report.first.primitive == "log"
    assert find_nonfinite(f, jnp.array([1.0, 3.0]), 4.0).first.primitive == "log"


def test_finite_function_reports_nothing():
    report = find_nonfinite(lambda w: jnp.sum(jnp.tanh(w) ** 2), jnp.ones(3))
    assert report.first is None and report.value_finite and report.grads_finite
    assert "no equation or rule" in str(report)
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(lambda x: find_nonfinite(jnp.sin, x))(1.0)


def test_value_and_grad_debug_nans_raises_with_the_origin():
    f = lambda w, x: jnp.sum(jnp.sqrt(w * x))  # noqa: E731
    vg = funcbp.value_and_grad(f, debug_nans=True)
    value, g = vg(jnp.ones(2), jnp.ones(2))  # finite: the ordinary result
    np.testing.assert_allclose(g, 0.5 * np.ones(2))
    with pytest.raises(NonFiniteError) as err:
        vg(jnp.ones(2), jnp.array([0.0, 1.0]))
    assert err.value.report.first.primitive == "sqrt"
    assert err.value.report.first.phase == "backward"
    with pytest.raises(Exception, match="VJP rule of 'sqrt'"):  # under jit: from a callback
        jax.block_until_ready(jax.jit(vg)(jnp.ones(2), jnp.array([0.0, 1.0])))


def test_train_step_locates_the_nan_of_a_bad_batch():
    def init(key, in_shape):
        return in_shape, {"t": jnp.zeros((1, 1))}

    def apply(params, x, *, key=None, train=False):
        return x + 0.0 * jnp.sqrt(params["t"])  # d/dt = 0 * inf at t = 0

    model = nn.serial(nn.Flatten(), nn.Dense(3), nn.Layer(init, apply, "bomb"))
    _, params = model.init(jax.random.key(0), (1, 4))
    step = make_train_step(model.apply, losses.softmax_cross_entropy_with_integer_labels,
                           optim.sgd(0.1))
    batch, key = (jnp.ones((2, 4)), jnp.array([0, 1])), jax.random.key(1)
    report = step.locate_nonfinite(params, batch, key)
    assert (report.first.phase, report.first.primitive) == ("backward", "sqrt")
    assert report.first.where.split(":")[1] == str(_line(apply, "jnp.sqrt"))
