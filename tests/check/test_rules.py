"""Rule verification (`funcbp check`): every registered rule passes; a broken one is caught."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest
from jax import lax
from jax.extend.core import Primitive

import funcbp
from funcbp.autodiff.rules import RULE_MODULES
from funcbp.check.cli import main_check, parse_args_spec
from funcbp.check.rules import samples, verify_rules


def test_check_cli_table_and_exit_code(capsys):
    """`funcbp check --only ...` prints the table and exits 0.

    The whole registry (`funcbp check`, a few CPU minutes) runs as its own CI step (`make
    check` in .ci/run); here a handful of rules keeps the path covered cheaply.
    """
    assert main_check(["--quick", "--only", "tanh,dot_general,reduce_max"]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out
    for name in ("tanh", "dot_general", "reduce_max"):
        assert f"\n{name} " in out


def test_edge_case_rules_verify():
    """A fast subset for every run: the rules whose edge cases matter most."""
    report = verify_rules(["max", "reduce_max", "abs", "sqrt"], seeds=1, dtypes=("float32",))
    assert report.passed, str(report)
    assert [r.status for r in report.rules] == ["ok"] * 4
    assert "ties" in report.rules[0].samples and "zeros (inf)" in report.rules[3].samples


def test_edge_cases_are_in_the_table():
    labels = {(s.prim, s.label) for s in samples()}
    for expected in [("max", "ties"), ("reduce_max", "ties"), ("abs", "zeros"),
                     ("sign", "zeros"), ("sqrt", "zeros (inf)"), ("reduce_prod", "zeros"),
                     ("reduce_max", "large logits"), ("reduce_sum", "empty axis"),
                     ("dot_general", "empty contraction"), ("squeeze", "size-1")]:
        assert expected in labels


def test_a_deliberately_broken_rule_is_reported():
    from funcbp.autodiff.rules import replaced_rule

    with replaced_rule(lax.sin_p, lambda ct, x, **params: (-ct * lax.cos(x),)):
        report = verify_rules(["sin", "cos"], seeds=1, dtypes=("float32",))
    status = {r.primitive: r.status for r in report.rules}
    assert status == {"sin": "FAIL", "cos": "ok"}
    assert not report.passed
    assert "FAIL sin: random (float32)" in str(report)


def test_a_rule_without_cases_is_listed_as_not_exercised():
    prim = Primitive("funcbp_test_unsampled")
    funcbp.register_vjp_rule(prim, lambda ct, x, **params: (ct,))
    try:
        report = verify_rules(["funcbp_test_unsampled", "neg"], seeds=1, dtypes=("float32",))
    finally:
        funcbp.VJP_RULES.pop(prim)
        RULE_MODULES.pop(prim, None)
    assert [r.status for r in report.rules] == ["not exercised", "ok"]
    assert report.passed
    assert report.counts() == {"ok": 1, "FAIL": 0, "not exercised": 1}


def test_json_output_and_exit_status(capsys):
    assert main_check(["--only", "exp,max", "--quick", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] and [r["primitive"] for r in data["rules"]] == ["exp", "max"]
    assert "ties" in data["rules"][1]["samples"]
    assert main_check(["--only", "no_such_primitive"]) == 2


USER_MODULE = textwrap.dedent("""
    import jax, jax.numpy as jnp

    @jax.custom_vjp
    def bad_sin(x):
        return jnp.sin(x)

    bad_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, ct: (-ct * jnp.cos(x),))

    def wrong(p, x):
        return jnp.sum(bad_sin(x @ p["w"]) + p["b"])

    def right(p, x):
        return jnp.sum(jnp.sin(x @ p["w"]) + p["b"])

    def sample(key):
        return {"w": jax.random.normal(key, (3, 2)), "b": jnp.zeros(2)}, jnp.ones((4, 3))
""")


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(USER_MODULE)
    return path


def test_user_function_from_a_file(user_module, capsys):
    spec = '[{"w": "f32[3,2]", "b": "f32[2]"}, "f32[4,3]"]'
    assert main_check([f"{user_module}:right", "--args", spec]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert main_check([f"{user_module}:wrong", "--args", spec, "--argnums", "0"]) == 1
    out = capsys.readouterr().out
    assert "['w']: vs finite differences" in out and "['b']" not in out.split("wrong gradients")[1]
    assert main_check([f"{user_module}:wrong", "--sample", f"{user_module}:sample", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    failing = [leaf["path"] for leaf in data["leaves"] if not leaf["vs_fd"]["passed"]]
    assert failing == ["args[0]['w']", "args[1]"]


def test_user_function_as_a_subprocess(user_module):
    """`python -m funcbp.check MODULE:FUNCTION` with a dotted module name from the cwd."""
    run = subprocess.run(
        [sys.executable, "-m", "funcbp.check", "user_model:wrong", "--sample", "user_model:sample",
         "--json"], cwd=user_module.parent, capture_output=True, text=True, timeout=300,
        env={"JAX_PLATFORMS": "cpu", "PATH": "", "PYTHONPATH": str(
            __import__("pathlib").Path(funcbp.__file__).parent.parent)})
    assert run.returncode == 1, run.stderr
    assert json.loads(run.stdout)["passed"] is False


@pytest.mark.parametrize("argv, match", [
    (["nocolon"], "MODULE:FUNCTION"),
    (["no_such_module_xyz:f", "--args", "f32[2]"], "cannot import"),
    (["json:nope", "--args", "f32[2]"], "no attribute"),
    (["json:dumps"], "--args SPEC"),
])
def test_cli_usage_errors(argv, match, capsys):
    assert main_check(argv) == 2
    assert match in capsys.readouterr().err


def test_input_specs():
    import jax

    key = jax.random.key(0)
    with jax.enable_x64(True):
        (tree, i, s), = [parse_args_spec('[{"a": ["f64[2]", 3.5]}, "i32[4]:5:7", "f32[]:pos"]',
                                         key)]
        assert tree["a"][0].dtype == jnp.float64
    assert tree["a"][0].shape == (2,) and tree["a"][1] == 3.5
    assert i.dtype == jnp.int32 and bool(((i >= 5) & (i < 7)).all())
    assert s.shape == () and 0.5 <= float(s) < 2.0
    assert [a.shape for a in parse_args_spec("f32[3,4] bf16[2]", key)] == [(3, 4), (2,)]
    with pytest.raises(ValueError, match="not an array spec"):
        parse_args_spec("float[3]", key)
