"""The README's code runs and computes what jax computes."""

import pathlib
import re

import chex
import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_example_runs_and_matches_jax():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    loss, w, x, y = ns["loss"], ns["w"], ns["x"], ns["y"]
    chex.assert_trees_all_close((ns["value"], ns["g"]), jax.value_and_grad(loss)(w, x, y))
    ref_hvp = jax.grad(lambda w: jnp.vdot(jax.grad(loss)(w, x, y), ns["g"]))(w)
    chex.assert_trees_all_close(ns["hvp"], ref_hvp, rtol=1e-5)


def test_readme_commands_exist_in_makefile_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^train:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
