"""check_grads: passes on correct gradients, fails naming the leaf on planted wrong rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp
from funcbp.check import GradCheckError, check_grads, default_tolerances


def _params(key, sizes=(3, 4, 2)):
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"dense_{i}": {"w": jax.random.normal(k, (a, b)) / np.sqrt(a),
                           "b": 0.1 * jax.random.normal(jax.random.fold_in(k, 1), (b,))}
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))}


def _mlp_loss(p, x):
    h = jnp.tanh(x @ p["dense_0"]["w"] + p["dense_0"]["b"])
    return jnp.mean((h @ p["dense_1"]["w"] + p["dense_1"]["b"]) ** 2)


@jax.custom_vjp
def wrong_vjp_square(w):
    return w * w


# the true derivative is 2 w; this rule is wrong at one entry only, by a factor 1.5
wrong_vjp_square.defvjp(lambda w: (w * w, w),
                        lambda w, ct: (2 * w * ct * jnp.ones_like(w).at[1, 0].set(1.5),))


@jax.custom_jvp
def wrong_jvp_sin(x):
    return jnp.sin(x)


@wrong_jvp_sin.defjvp
def _wrong_jvp_sin_rule(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.sin(x), t * jnp.cos(x) * 1.01  # 1% too large


@jax.custom_vjp
def right_vjp_cube(x):
    return x ** 3


right_vjp_cube.defvjp(lambda x: (x ** 3, x), lambda x, ct: (3 * x * x * ct,))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_passes_on_a_correct_mlp(dtype):
    with jax.enable_x64(dtype == "float64"):
        p = jax.tree.map(lambda a: a.astype(dtype), _params(jax.random.key(0)))
        x = jax.random.normal(jax.random.key(1), (5, 3), dtype)
        report = check_grads(_mlp_loss, (p, x), argnums=0)
    assert report.passed, str(report)
    assert [leaf.path for leaf in report.leaves] == [
        "['dense_0']['b']", "['dense_0']['w']", "['dense_1']['b']", "['dense_1']['w']"]
    for leaf in report.leaves:
        assert leaf.dtype == dtype
        assert leaf.vs_jax.passed and leaf.vs_fd.passed
        assert leaf.vs_fd.dtype == "float64"  # finite differences always in float64 here
        assert leaf.vs_fd.max_rel_err < 1e-6


def test_passes_on_many_arguments_pytree_outputs_and_correct_custom_rules():
    x = jax.random.normal(jax.random.key(2), (3, 2))
    y = jax.random.normal(jax.random.key(3), (2,))

    def f(x, y, n):
        return {"a": right_vjp_cube(x) * y, "b": jax.nn.relu(x + 0.5).sum() * n}

    report = check_grads(f, (x, y, 3))  # an int argument is held fixed
    assert report.passed, str(report)
    assert [leaf.path for leaf in report.leaves] == ["args[0]", "args[1]"]
    assert report.skipped == ["args[2]"]


def test_a_planted_wrong_custom_vjp_fails_naming_the_leaf_and_the_index():
    p = _params(jax.random.key(4))

    def loss(p, x):
        return _mlp_loss(p, x) + jnp.sum(wrong_vjp_square(p["dense_1"]["w"]))

    report = check_grads(loss, (p, jax.random.normal(jax.random.key(5), (5, 3))), argnums=0)
    assert not report.passed
    assert [leaf.path for leaf in report.failures] == ["['dense_1']['w']"]
    bad = report.failures[0]
    assert bad.vs_jax.passed  # jax applies the same wrong rule: only the primal can tell
    assert not bad.vs_fd.passed and bad.vs_fd.worst == (1, 0)
    w = p["dense_1"]["w"]
    assert bad.vs_fd.ref == pytest.approx(
        float(jax.grad(loss)(p, jax.random.normal(jax.random.key(5), (5, 3)))["dense_1"]["w"][1, 0]
              - 0.5 * 2 * w[1, 0]), rel=1e-4)
    assert "custom_jvp/custom_vjp" in report.failure_message()
    with pytest.raises(GradCheckError, match=r"\['dense_1'\]\['w'\]"):
        check_grads(loss, (p, jnp.ones((5, 3))), argnums=0, raise_on_failure=True)


def test_a_planted_wrong_custom_jvp_fails_naming_the_leaf():
    p = {"a": jax.random.normal(jax.random.key(6), (4,)), "b": jnp.arange(3.0)}

    def loss(p):
        return jnp.sum(wrong_jvp_sin(p["a"]) ** 2) + jnp.sum(jnp.cos(p["b"]))

    report = check_grads(loss, (p,))
    assert [leaf.path for leaf in report.failures] == ["['a']"]
    assert report.failures[0].vs_jax.passed and not report.failures[0].vs_fd.passed
    assert report.failures[0].vs_fd.max_rel_err == pytest.approx(0.01, rel=0.02)


def test_a_deliberately_broken_registered_rule_fails_vs_jax_and_vs_fd():
    from funcbp.autodiff.rules import replaced_rule

    with replaced_rule(lax.tanh_p, lambda ct, x, *, out, **params: (ct * (1 - out * out) * 1.01,)):
        p = {"w1": jax.random.normal(jax.random.key(7), (3, 3)), "w2": jnp.arange(3.0)}

        def loss(p, x):
            return jnp.sum(jnp.tanh(x @ p["w1"])) + jnp.sum(jnp.sin(p["w2"]) * x[0])

        report = check_grads(loss, (p, jax.random.normal(jax.random.key(8), (2, 3))), argnums=0)
    assert [leaf.path for leaf in report.failures] == ["['w1']"]
    assert not report.failures[0].vs_jax.passed and not report.failures[0].vs_fd.passed
    assert "funcbp disagrees with jax" in report.failure_message()
    assert check_grads(loss, (p, jnp.ones((2, 3))), argnums=0).passed  # restored


def test_large_leaves_use_sampled_coordinates_and_directions_and_still_catch_errors():
    w = jax.random.normal(jax.random.key(9), (20, 30))

    def loss(w):
        return jnp.sum(wrong_jvp_sin(w))

    report = check_grads(loss, (w,), max_coords=8, num_directions=3)
    comp = report.leaves[0].vs_fd
    assert comp.checked == "8 of 600 coords + 3 directions"
    assert not comp.passed
    assert check_grads(lambda w: jnp.sum(jnp.sin(w) ** 2), (w,), max_coords=8).passed


def test_finite_differences_follow_the_precision_the_function_computes_in():
    def loss(x):
        return jnp.sum(jnp.sin(x.astype(jnp.float32)) ** 2)  # casts down internally

    report = check_grads(loss, (jnp.linspace(-1.0, 1.0, 5),))
    assert report.passed, str(report)
    assert report.fd_dtype == "float32"
    assert report.leaves[0].vs_fd.rtol == default_tolerances("float32", "fd")[0]


def test_tolerances_scale_with_the_dtype():
    r64, _ = default_tolerances("float64")
    r32, _ = default_tolerances("float32")
    r16, _ = default_tolerances("bfloat16")
    assert r64 < r32 < r16
    with jax.enable_x64(True):
        report = check_grads(lambda x: jnp.sum(jnp.exp(x)), (jnp.ones(3, jnp.float64),))
    assert report.leaves[0].vs_jax.rtol == r64


def test_the_report_prints_a_table_and_serialises():
    import json

    report = check_grads(lambda x: jnp.sum(wrong_jvp_sin(x)), (jnp.ones((2, 2)),))
    text = str(report)
    assert "FAIL" in text and "args[0]" in text and "fd max rel" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is False
    assert data["leaves"][0]["vs_fd"]["worst"] in ([0, 0], [0, 1], [1, 0], [1, 1])


def test_methods_can_be_chosen():
    report = check_grads(lambda x: jnp.sum(x ** 2), (jnp.ones(3),), methods=("jax",))
    assert report.leaves[0].vs_fd is None and report.leaves[0].vs_jax.passed


@pytest.mark.parametrize("call, error, match", [
    (lambda: check_grads(jnp.sin, jnp.ones(3)), TypeError, "tuple of positional arguments"),
    (lambda: check_grads(lambda i: i * 2, (jnp.arange(3),)), ValueError, "no float leaves"),
    (lambda: check_grads(jnp.sin, (jnp.ones(3),), argnums=2), ValueError, "out of range"),
    (lambda: check_grads(jnp.sin, (jnp.ones(3),), methods=("torch",)), ValueError, "methods"),
])
def test_bad_input_gets_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- any gradient, second order, forward mode, kinks (issue 15) -------------------------------

@jax.custom_vjp
def wrong_vjp_sin(x):
    return jnp.sin(x)


wrong_vjp_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, ct: (ct * jnp.cos(x) * 1.5,))


@jax.custom_jvp
def wrong_second_sin(x):
    return jnp.sin(x)


@wrong_second_sin.defjvp
def _wrong_second_sin_rule(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.sin(x), jnp.cos(lax.stop_gradient(x)) * t  # right slope, no curvature


def test_a_wrong_custom_vjp_is_caught_when_checking_jax_grad():
    report = check_grads(lambda x: jnp.sum(wrong_vjp_sin(x)), (jnp.linspace(0.1, 1.0, 3),),
                         grad_fn=jax.grad)
    leaf = report.leaves[0]
    assert report.grad_fn == "jax.grad" and leaf.vs_jax is None  # jax vs itself is skipped
    assert not leaf.vs_fd.passed and leaf.vs_fd.max_rel_err == pytest.approx(0.5, rel=0.02)
    assert "jax.grad disagrees with the primal computation" in report.failure_message()
    ok = check_grads(lambda x: jnp.sum(jnp.sin(x)), (jnp.linspace(0.1, 1.0, 3),),
                     grad_fn=jax.grad, against=("fd", lambda fun, argnums: funcbp.grad(
                         fun, argnums)))
    assert ok.passed and ok.leaves[0].vs_ref["ref"].max_rel_err < 1e-6


@pytest.mark.parametrize("grad_fn", [None, jax.grad], ids=["funcbp", "jax"])
def test_a_wrong_second_derivative_is_caught_by_order_2_only(grad_fn):
    f = lambda x: jnp.sum(wrong_second_sin(x))  # noqa: E731
    x = (jnp.array([0.3, 1.0]),)
    assert check_grads(f, x, grad_fn=grad_fn).passed  # the first derivative is right
    report = check_grads(f, x, grad_fn=grad_fn, order=2)
    assert not report.passed and report.leaves[0].passed
    second = report.second_order.leaves[0]
    assert second.path == "args[0]" and not second.vs_fd.passed
    assert second.vs_fd.ours == 0.0 and second.vs_fd.max_rel_err > 0.9  # no curvature at all
    assert "second order" in report.failure_message()


def test_second_order_batched_and_determinism_pass_on_a_correct_mlp():
    p = _params(jax.random.key(10), sizes=(2, 3, 1))
    x = jax.random.normal(jax.random.key(11), (2, 2))
    report = check_grads(_mlp_loss, (p, x), argnums=0, order=2, batched=True,
                         deterministic=True)
    assert report.passed, str(report)
    assert [c.name.split(":")[0] for c in report.checks] == ["batched", "deterministic"]
    assert report.second_order.passed and report.second_order.leaves[1].vs_fd.passed
    assert "Hessian-vector products" in str(report)


def test_forward_mode_catches_a_wrong_custom_jvp():
    report = check_grads(lambda x: wrong_jvp_sin(x) ** 2, (jnp.ones(3),), modes=("fwd",))
    assert not report.passed and report.leaves[0].vs_fd is None
    assert not report.checks[0].passed and report.checks[0].max_rel_err > 5e-3


@pytest.mark.parametrize("f, x, prim", [
    (lambda x: jnp.sum(jax.nn.relu(x) * jnp.arange(1.0, 4.0)), [0.0, 1.0, -1.0], "max"),
    (lambda x: jnp.sum(jnp.abs(x) + jnp.clip(x, -1.0, 1.0)), [0.0, 1.0, 2.0], "abs"),
    (lambda x: jnp.max(x) * 2.0, [3.0, 3.0, 3.0], "reduce_max"),  # a three-way tie
    (lambda x: jnp.sum(jnp.where(x > 0.5, x, 2 * x)), [0.5, 3.0, 2.0], "gt"),
])
def test_a_kink_on_the_stencil_is_a_warning_not_a_failure(f, x, prim):
    with pytest.warns(funcbp.check.GradCheckWarning, match="straddle a kink"):
        report = check_grads(f, (jnp.array(x),))
    assert report.passed, str(report)
    assert report.leaves[0].vs_fd.kinks and prim in report.leaves[0].vs_fd.kinks[0]
    assert "kink" in str(report)
    with pytest.raises(AssertionError):  # without the probe the same check fails
        assert check_grads(f, (jnp.array(x),), kinks=False).passed


def test_cli_checks_jax_grad_and_the_second_order(tmp_path, capsys):
    from funcbp.check.cli import main_check

    user = tmp_path / "user_rules.py"
    user.write_text(
        "import jax, jax.numpy as jnp\n"
        "from jax import lax\n"
        "@jax.custom_vjp\n"
        "def bad(x):\n"
        "    return jnp.sin(x)\n"
        "bad.defvjp(lambda x: (jnp.sin(x), x), lambda x, ct: (ct * jnp.cos(x) * 1.5,))\n"
        "@jax.custom_jvp\n"
        "def flat(x):\n"
        "    return jnp.sin(x)\n"
        "flat.defjvp(lambda p, t: (jnp.sin(p[0]), jnp.cos(lax.stop_gradient(p[0])) * t[0]))\n"
        "def bad_vjp(x):\n"
        "    return jnp.sum(bad(x))\n"
        "def bad_curvature(x):\n"
        "    return jnp.sum(flat(x))\n")
    assert main_check([f"{user}:bad_vjp", "--args", "f32[3]", "--grad-fn", "jax"]) == 1
    assert "jax.grad disagrees with the primal computation" in capsys.readouterr().out
    assert main_check([f"{user}:bad_curvature", "--args", "f32[2]"]) == 0
    assert main_check([f"{user}:bad_curvature", "--args", "f32[2]", "--order", "2",
                       "--modes", "rev,fwd"]) == 1
    assert "second order" in capsys.readouterr().out
    assert main_check([f"{user}:bad_vjp", "--args", "f32[3]", "--modes", "sideways"]) == 2
