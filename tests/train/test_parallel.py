"""Data parallelism: 4 CPU devices in one process, and 2 processes through jax.distributed."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("dp_worker.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _env(devices: int | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    flags = os.environ.get("XLA_FLAGS", "").split()  # keep the suite's compile settings
    flags = [f for f in flags if "xla_force_host_platform_device_count" not in f]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _run(args, env, timeout=240):
    proc = subprocess.run([sys.executable, str(WORKER), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_four_devices_match_one_device_after_20_steps(tmp_path):
    out = tmp_path / "devices.npz"
    _run(["devices", "4", str(out)], _env(devices=4))
    data = np.load(out)
    names = [k[3:] for k in data.files if k.startswith("one")]
    assert names
    for n in names:
        np.testing.assert_allclose(data["many" + n], data["one" + n], rtol=2e-5, atol=2e-6,
                                   err_msg=f"replicated data-parallel differs at {n}")
        np.testing.assert_allclose(data["sharded" + n], data["one" + n], rtol=2e-5, atol=2e-6,
                                   err_msg=f"sharded-parameter data-parallel differs at {n}")
        # And training moved the parameters, so the comparison is not vacuous.
        assert not np.allclose(data["one" + n], 0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_all(procs, timeout):
    """Output of every worker; if one hangs, all are killed and the test fails cleanly."""
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"a distributed worker hung for {timeout} s; all were killed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log
    return logs


@pytest.mark.slow
def test_two_processes_over_gloo_match_single_process(tmp_path):
    ref = tmp_path / "single.npz"
    _run(["single", str(ref)], _env())
    addr = f"127.0.0.1:{_free_port()}"
    outs = [tmp_path / f"proc{i}.npz" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), "process", addr, "2", str(i),
                               str(outs[i])], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    _wait_all(procs, timeout=180)
    single = np.load(ref)
    a, b = np.load(outs[0]), np.load(outs[1])
    for k in single.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"processes disagree at {k}")
        np.testing.assert_allclose(a[k], single[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_indivisible_batch_gives_clear_error():
    from funcbp.train import parallel

    parallel.check_global_batch_size(7, parallel.make_mesh(1))  # one device: anything goes
    three_devices = type("FakeMesh", (), {"devices": np.zeros(3)})()
    with pytest.raises(ValueError, match="not divisible by the 3 devices.*multiple of 3"):
        parallel.check_global_batch_size(10, three_devices)


def test_asking_for_more_devices_than_exist_says_how():
    from funcbp.train import parallel

    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        parallel.make_mesh(64)


def _cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "funcbp.cli", "train", "--quiet", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kw)


@pytest.mark.slow
def test_cli_devices_flag_matches_single_device(tmp_path):
    """`funcbp train --devices 2` reaches the single-device run's test accuracy."""
    common = ["--model", "mlp", "--epochs", "1", "--batch-size", "64", "--no-augment"]
    runs = {}
    for name, extra, env in [("one", [], _env()), ("two", ["--devices", "2"], _env(devices=2))]:
        p = _cli([*common, *extra, "--run-dir", str(tmp_path / name)], env)
        out = p.communicate(timeout=240)[0]
        assert p.returncode == 0, out
        runs[name] = out.strip().splitlines()[-1]
    assert runs["one"].startswith("test accuracy:")
    assert abs(float(runs["one"].split()[-1]) - float(runs["two"].split()[-1])) <= 0.006


@pytest.mark.slow
def test_cli_two_processes_write_once_and_resume_with_one(tmp_path):
    """Two processes train through the CLI; process 0 writes; one process can resume it."""
    addr, run_dir = f"127.0.0.1:{_free_port()}", tmp_path / "run"
    common = ["--model", "mlp", "--epochs", "1", "--batch-size", "64", "--run-dir", str(run_dir),
              "--coordinator", addr, "--num-processes", "2"]
    procs = [_cli([*common, "--process-id", str(i)], _env()) for i in range(2)]
    logs = _wait_all(procs, timeout=240)
    last = [log.strip().splitlines()[-1] for log in logs]
    assert last[0] == last[1] and last[0].startswith("test accuracy:")
    assert (run_dir / "checkpoints" / "latest.ckpt").exists()
    p = _cli(["--resume", str(run_dir)], _env())
    out = p.communicate(timeout=240)[0]
    assert p.returncode == 0, out
    assert out.strip().splitlines()[-1] == last[0]
