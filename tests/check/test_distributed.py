"""distributed_grad_check and funcbp check --devices: 4 forced CPU devices in a subprocess; a
planted psum-where-pmean-was-meant is named with ratio 4 = the device count."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from funcbp.check import distributed_grad_check

WORKER = pathlib.Path(__file__).with_name("dist_worker.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "found.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
               + " --xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, str(WORKER), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()) | {"stdout": proc.stdout}


def test_the_trainers_sharded_gradient_and_a_correct_pmean_match_one_device(found):
    assert found["devices"] == 4
    for name in ("sharded_jit", "pmean"):
        assert found[name]["passed"], found["stdout"]
        assert all(abs(leaf["ratio"] - 1) < 1e-4 for leaf in found[name]["leaves"])
    assert found["cli"] == 0


def test_a_planted_mean_vs_sum_bug_is_reported_with_ratio_n(found):
    report = found["psum"]
    assert not report["passed"] and report["devices"] == 4
    assert [leaf["path"] for leaf in report["leaves"] if not leaf["passed"]] == [
        "['dense_0']['b']", "['dense_0']['w']", "['dense_1']['w']"]
    for leaf in report["leaves"]:
        assert leaf["ratio"] == pytest.approx(4.0, rel=1e-5)
        assert leaf["diagnosis"].startswith("ratio 4 = the device count")
    assert "psum instead of pmean" in found["stdout"]
    assert found["cli_psum"] == 1


def test_bad_input_gets_a_clear_error():
    loss = lambda p, b: jnp.mean(b @ p)  # noqa: E731
    with pytest.raises(ValueError, match="asked for 64 devices.*xla_force_host_platform"):
        distributed_grad_check(loss, jnp.ones(3), jnp.ones((64, 3)), devices=64)
    with pytest.raises(TypeError, match="loss function"):
        distributed_grad_check(None, jnp.ones(3), jnp.ones((4, 3)), devices=1)
    assert distributed_grad_check(loss, jnp.ones(3), jnp.ones((4, 3)), devices=1).passed
