"""The benchmark suite's plumbing on tiny cases: subprocesses, JSON, FLOP counts, Markdown.

No timing is asserted (timings depend on the machine); what is checked is that every part
runs, lands in the JSON and the report, and that the FLOP counts match hand-written formulas.
"""

from __future__ import annotations

import importlib.util
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend.core import Primitive

import funcbp
from benchmarks import __main__ as bench_main
from benchmarks import ci_guard, flops, models, report, suite


def _mlp_train_flops(batch, sizes):
    """3x the forward matmuls, less the first layer's input gradient (by hand)."""
    fwd = [2 * batch * m * n for m, n in zip(sizes[:-1], sizes[1:])]
    return sum(fwd), 3 * sum(fwd) - fwd[0]


@pytest.mark.parametrize("batch,sizes", [(1024, (784, 512, 512, 10)), (3, (5, 7, 2))])
def test_flops_of_an_mlp_match_the_formula(batch, sizes):
    init, loss = models.mlp(sizes)                # shapes suffice: count() only traces
    params = jax.eval_shape(init, jax.random.key(0))
    x, y = jax.ShapeDtypeStruct((batch, sizes[0]), jnp.float32), jnp.zeros(batch, jnp.int32)
    got = flops.count(loss, params, x, y)
    assert (got.forward, got.train) == _mlp_train_flops(batch, sizes)


def test_flops_of_a_grouped_conv_and_a_scan():
    # conv: 2 * out_elems * kernel_spatial * in_channels_per_group; input is data (no gradient)
    w = jax.ShapeDtypeStruct((3, 3, 2, 6), jnp.float32)    # HWIO, 2 = 4 channels / 2 groups
    x = jax.ShapeDtypeStruct((5, 8, 8, 4), jnp.float32)

    def conv_loss(w, x):
        return jnp.sum(lax.conv_general_dilated(x, w, (1, 1), "VALID", feature_group_count=2,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")))
    got = flops.count(conv_loss, w, x)
    fwd = 2 * (5 * 6 * 6 * 6) * 9 * 2
    assert (got.forward, got.train) == (fwd, 2 * fwd)

    # scan: the body's matmul counts `length` times; the carry becomes active after step one
    def rnn_loss(wh, xs):
        h, _ = lax.scan(lambda h, xt: (jnp.tanh(h @ wh + xt), None), jnp.zeros((4, 3)), xs)
        return jnp.sum(h)
    got = flops.count(rnn_loss, jnp.ones((3, 3)), jnp.ones((7, 4, 3)))
    assert (got.forward, got.train) == (7 * 2 * 4 * 3 * 3, 7 * 3 * 2 * 4 * 3 * 3)


def test_a_missing_rule_is_reported_as_not_available():
    mystery_p = Primitive("mystery_for_bench")
    mystery_p.def_impl(lambda x: x)
    mystery_p.def_abstract_eval(lambda x: x)
    with pytest.raises(funcbp.UnsupportedPrimitiveError) as e:
        funcbp.grad(lambda x: mystery_p.bind(x))(1.0)
    assert suite._na(e.value) == "n/a (no rule for mystery_for_bench yet)"


def test_one_case_in_a_subprocess_writes_json_and_markdown(tmp_path):
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\nHand-written intro.\n\n<!-- suite:begin -->\nold\n"
                  "<!-- suite:end -->\n\nHand-written outro.\n")
    out = tmp_path / "suite.json"
    argv = ["--case", "tiny_mlp", "--quick", "--reps", "2", "--no-torch", "--no-specials",
            "--parts", "grad,step,memory,flops,hlo", "--markdown", str(md), "--json-out", str(out),
            "--docs-json", ""]
    bench_main.main(argv)
    saved = json.loads(out.read_text())
    (row,) = saved["cases"]
    assert "error" not in row and row["na"] == {}, row
    for part in ("grad", "step"):
        assert row[part]["reps"] == 2
        assert math.isclose(row[part]["ratio"], row[part]["funcbp_s"] / row[part]["jax_s"])
    assert row["flops"]["train"] == _mlp_train_flops(4, (16, 8, 10))[1]
    assert row["memory"]["funcbp"]["total_bytes"] > 0
    assert row["hlo"]["identical"] is True, row["hlo"]       # a ReLU MLP: jax's very program
    assert saved["machine"]["jax"] == jax.__version__
    assert saved["command"].endswith("--docs-json ''")
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written intro.") and "Hand-written outro." in text
    assert "old" not in text and text.count("<!-- suite:begin -->") == 1
    assert "| tiny_mlp | 4 |" in text and "same program as jax.grad's" in text
    # rewriting replaces the section instead of adding a second one
    report.write_markdown(md, saved)
    assert md.read_text().count("<!-- suite:begin -->") == 1


def test_markdown_file_is_created_when_missing(tmp_path):
    results = {"command": "python -m benchmarks", "date": "today", "settings": {"quick": True},
               "machine": {"platform": "test"}, "cases": [{"case": "x", "error": "boom"}]}
    report.write_markdown(tmp_path / "new.md", results)
    text = (tmp_path / "new.md").read_text()
    assert text.startswith("# Benchmarks") and "error: boom" in text


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_pytorch_reference_runs_in_its_own_process():
    row = suite.run_child("tiny_mlp", ["--quick", "--reps", "2", "--framework", "torch"],
                          timeout=120)
    assert row["eager_step_s"] > 0 and row["eager_grad_s"] > 0, row
    assert row["compile_na"].startswith("not run")


def test_pytorch_is_skipped_when_not_importable(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)     # import torch now fails
    row = suite.measure_torch(suite.get("tiny_mlp"), reps=2, compile=False)
    assert row["na"].startswith("torch not importable")


def test_ci_guard_fails_above_the_threshold_and_tolerates_missing_rules():
    def row(case, ratio):
        return {"case": case, "na": {}, "grad": {"ratio": 1.0, "funcbp_s": 1e-3, "jax_s": 1e-3},
                "step": {"ratio": ratio, "funcbp_s": ratio * 1e-3, "jax_s": 1e-3}}
    ok = [row("a", 1.4), {"case": "gru", "na": {"funcbp": "n/a (no rule for scan yet)"}}]
    assert all(v[3] for v in ci_guard.verdicts(ok, 1.5))
    bad = ok + [row("b", 1.6)]
    assert [v[:2] for v in ci_guard.verdicts(bad, 1.5) if not v[3]] == [("b", "step")]
    crashed = [{"case": "c", "error": "exit 1"}]
    assert not ci_guard.verdicts(crashed, 1.5)[0][3]
    assert "| b | train step | 1.60 | 1.00 | 1.600 | **NO** |" in ci_guard.table(bad, 1.5)


def test_paired_ratio_statistics():
    ours, ref = [2.0, 2.2, 1.8, 2.0], [1.0, 1.0, 1.0, 1.0]
    s = suite.measure.ratio_stats(ours, ref)
    assert s["ratio"] == pytest.approx(np.median(ours) / np.median(ref))
    q1, q3 = np.percentile(np.asarray(ours) / ref, [25, 75])
    assert s["noise"] == pytest.approx((q3 - q1) / 2)


def test_the_dense_step_target_accepts_a_slower_run_of_the_same_program():
    def row(case, ratio, identical):
        return {"case": case, "kind": "dense", "na": {}, "batch": 1,
                "step": {"ratio": ratio, "noise": 0.01}, "hlo": {"identical": identical}}
    check = lambda rows: report.targets({"cases": rows})[0]
    assert check([row("a", 1.04, True)])["pass"] is True        # same program: noise
    assert check([row("a", 1.04, False)])["pass"] is False      # a different program: slower
    assert check([row("a", 1.005, False)])["pass"] is True      # within the measured noise


def test_step_profile_names_the_instructions_that_take_the_time():
    from benchmarks import profile_step
    wall_ms, rows = profile_step.profile("tiny_mlp", "funcbp", steps=2)
    assert wall_ms > 0 and rows, rows
    assert all(r["ms"] >= 0 and r["shape"].startswith(("f32", "s32", "(")) for r in rows)
    # the MLP's matmuls appear, whether XLA left them as dots or fused them
    assert any("dot" in r["op"] for r in rows), [r["op"] for r in rows]


def test_ci_guard_covers_every_benchmark_case():
    from benchmarks.cases import CASES
    assert set(ci_guard.GUARD_CASES) == {n for n, c in CASES.items() if not c.hidden}
    assert "transformer_block_b32" in ci_guard.GUARD_CASES
