"""A process for tests/train/test_faults.py to kill, and one that holds a run directory's lock.

    python crash_worker.py sweep OUT       kill a save at each of its file-system steps
    python crash_worker.py fit RUN CONFIG_JSON FILE STEP N
                                           train, SIGKILL at the N-th STEP of saving FILE
    python crash_worker.py hold RUN        take RUN's lock, print "locked", wait for stdin EOF

``sweep`` never starts jax's runtime (the trees are numpy arrays and no key is saved), so it can
``fork`` safely: for each step k of the save sequence a forked child saves epoch 3 over epochs
1 and 2 and SIGKILLs itself just before step k; the directory each child leaves is copied to
``OUT/k`` for the test to load in its own process. ``OUT/sweep.json`` lists the steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np

from funcbp.train import checkpoint


def tree(epoch: int) -> dict:
    """A different tree per epoch, with the dtypes a trainer saves."""
    rng = np.random.default_rng(epoch)
    return {"params": {"dense_0": {"w": rng.standard_normal((16, 8)).astype(np.float32),
                                   "b": rng.standard_normal(8).astype(np.float32)}},
            "opt_state": {"count": np.int32(epoch * 4),
                          "trace": rng.standard_normal(8).astype(np.float32)}}


def save(directory: Path, epoch: int) -> None:
    checkpoint.save_checkpoint(directory / "latest.ckpt", tree(epoch), step=4 * epoch,
                               epoch=epoch, keep_previous=True,
                               metadata={"history": list(range(epoch))})


def kill_at(target: int):
    count = [0]

    def hook(step: str, path: Path) -> None:
        if count[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
    return hook


def sweep(out: Path) -> None:
    assert len(os.listdir("/proc/self/task")) == 1, "fork needs a single-threaded process"
    base = out / "base"
    save(base, 1)
    save(base, 2)
    steps: list[str] = []
    checkpoint._before_step = lambda step, path: steps.append(f"{step} {path.name}")
    dry = out / "dry"
    shutil.copytree(base, dry)
    save(dry, 3)
    checkpoint._before_step = None
    results = []
    for k in range(len(steps) + 1):
        work = out / f"k{k}"
        shutil.copytree(base, work)
        pid = os.fork()
        if pid == 0:  # the child: save epoch 3, killed just before step k
            checkpoint._before_step = kill_at(k)
            save(work, 3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        results.append({"k": k, "before": steps[k] if k < len(steps) else "(completed)",
                        "killed": killed, "exit": os.waitstatus_to_exitcode(status)})
    (out / "sweep.json").write_text(json.dumps(results))


def fit_and_die(run: Path, config: str, name: str, step: str, n: int) -> None:
    from funcbp.train import TrainConfig, fit

    seen = [0]

    def hook(at: str, path: Path) -> None:
        if at == step and path.name.lstrip(".").startswith(name):
            seen[0] += 1
            if seen[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)

    checkpoint._before_step = hook
    fit(TrainConfig(**json.loads(config)), run_dir=run, quiet=True, log=lambda line: None)


def hold(run: Path) -> None:
    from funcbp.train.rundir import acquire_lock

    with acquire_lock(run):
        print("locked", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "sweep":
        sweep(Path(rest[0]))
    elif mode == "fit":
        fit_and_die(Path(rest[0]), rest[1], rest[2], rest[3], int(rest[4]))
    elif mode == "hold":
        hold(Path(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
