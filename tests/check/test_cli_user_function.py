"""funcbp check MODULE:FUNCTION: exit 2 when the user's code raises, 1 only for a wrong gradient."""

from __future__ import annotations

import textwrap

import pytest

from funcbp.check.cli import main_check

USER = textwrap.dedent("""
    import jax.numpy as jnp

    def shape_bug(w, x):
        return jnp.sum(x @ w)          # (4, 3) @ (2, 3): raises inside jax

    def raises(w):
        raise RuntimeError("model not initialised\\nsecond line")

    def bad_sample(key):
        raise KeyError("no such data set")
""")


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_fns.py"
    path.write_text(USER)
    return path


@pytest.mark.parametrize("fn, args, says", [
    ("shape_bug", "f32[2,3] f32[4,3]", "TypeError: dot_general requires contracting dimensions"),
    ("raises", "f32[2]", "RuntimeError: model not initialised"),
])
def test_a_function_that_raises_exits_2_with_first_line_and_shapes(user_file, capsys, fn, args,
                                                                    says):
    assert main_check([f"{user_file}:{fn}", "--args", args]) == 2
    err = capsys.readouterr().err
    assert f"your function {user_file}:{fn} raised {says}" in err
    assert "second line" not in err
    assert f"arguments: {', '.join(args.split())}" in err
    assert "status 1 means a gradient is wrong" in err


def test_a_raising_sample_or_import_exits_2(user_file, tmp_path, capsys):
    assert main_check([f"{user_file}:raises", "--sample", f"{user_file}:bad_sample"]) == 2
    assert "--sample function" in capsys.readouterr().err
    broken = tmp_path / "broken_mod.py"
    broken.write_text("import numpy\nraise ValueError('bad config at import')\n")
    assert main_check([f"{broken}:f", "--args", "f32[2]"]) == 2
    assert "importing" in (err := capsys.readouterr().err) and "bad config at import" in err
