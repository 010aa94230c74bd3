"""Fault injection: each promise of docs/training.md's "what funcbp promises under faults".

Bit flips over every header byte of a real checkpoint, SIGKILL at every step of the save
sequence, a run killed while saving and resumed bit for bit, two runs into one directory,
edited and damaged run files, labels out of range, a full disk.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from funcbp import losses
from funcbp.cli import main
from funcbp.train import (
    CheckpointError,
    CheckpointWriteError,
    ConfigChangeError,
    RunDirError,
    RunLockedError,
    TrainConfig,
    checkpoint,
    fit,
    get_model,
    load_checkpoint,
    make_optimizer,
    newest_checkpoint,
    read_metrics,
    remove_temporary_files,
    resume,
    rundir,
)

fit_module = importlib.import_module("funcbp.train.fit")  # the module; funcbp.train.fit is fit()
loop_module = importlib.import_module("funcbp.train.loop")  # the training loop and its bar

# The MLP on the digits: 4 steps of 256 per epoch, 2 epochs; random shifts use the step keys.
TINY = dict(model="mlp", batch_size=256, epochs=2, lr=0.1)
WORKER = Path(__file__).with_name("crash_worker.py")
TIMING = ("train_time_s", "epoch_time_s", "elapsed_s", "examples_per_s", "compile_time_s")


def _env():
    root = str(Path(checkpoint.__file__).resolve().parents[2])
    return {**os.environ, "JAX_PLATFORMS": "cpu", "OPENBLAS_NUM_THREADS": "1",
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


class _Bar:
    """Stands in for the tqdm bar; remembers what it was told."""

    def __init__(self, *args, **kwargs):
        self.n, self.said = 0, []

    def set_postfix_str(self, text, refresh=True):
        self.said.append(text)

    def set_postfix(self, **kwargs):
        self.said.append(kwargs)

    def update(self, n):
        self.n += n

    def close(self):
        pass


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by the xdist workers (the first to get here trains it):
    ``(final params and opt_state, run directory, what its progress bars were told)``."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's basetemp is a child of the session's: share that parent.
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "faults-ref"
    shared.mkdir(exist_ok=True)
    run, told = shared / "run", shared / "bars.json"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not told.exists():
            bars = []
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(loop_module, "_progress", lambda *a: bars.append(_Bar()) or bars[-1])
                fit(TrainConfig(**TINY), run_dir=run, quiet=True, log=lambda line: None)
            told.write_text(json.dumps([[str(x) for x in bar.said] for bar in bars]))
    model, tx = _model_and_optimizer()
    ckpt = load_checkpoint(run / "checkpoints" / "latest.ckpt", like=_like(model, tx))
    return ckpt.tree, run, json.loads(told.read_text())


def _model_and_optimizer():
    config = TrainConfig(**TINY)
    return get_model(config.model), make_optimizer(config, steps_per_epoch=1258 // 256)[0]


def _like(model, tx):
    _, params = model.init(jax.random.key(0), (1, 8, 8, 1))
    return {"params": params, "opt_state": tx.init(params)}


def _copy(reference, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference[1], run)
    return run


def _template(reference):
    return reference[0]


# --------------------------------------------------------------------- checkpoint bytes

def _outcome(path, like, original):
    try:
        ckpt = load_checkpoint(path, like=like)
    except CheckpointError:
        return "refused"
    try:
        assert (ckpt.step, ckpt.epoch, ckpt.metadata, ckpt.data_state) == original[1:5]
        _assert_same(ckpt.tree, original[0])
        _assert_same(jax.random.key_data(ckpt.key), jax.random.key_data(original[5]))
    except AssertionError:
        return "ALTERED"
    return "identical"


def test_every_header_bit_flip_is_refused(reference, monkeypatch):
    """Every byte before the payload (magic, length, JSON header) and the digest, one bit flipped
    at a time (bit i % 8 of byte i; all eight bits of the magic and length), and 400 sampled
    payload bytes: each must be refused with CheckpointError or load identically."""
    source = reference[1] / "checkpoints" / "latest.ckpt"
    raw = source.read_bytes()
    like = _template(reference)
    ckpt = load_checkpoint(source, like=like)
    original = (ckpt.tree, ckpt.step, ckpt.epoch, ckpt.metadata, ckpt.data_state, ckpt.key)
    header_end = len(checkpoint._MAGIC) + 8 + int.from_bytes(raw[12:20], "little")
    flips = [(i, b) for i in range(20) for b in range(8)]
    flips += [(i, i % 8) for i in range(20, header_end)]
    flips += [(i, b) for i in range(len(raw) - 32, len(raw)) for b in range(0, 8, 3)]
    rng = np.random.default_rng(0)
    flips += [(int(i), int(rng.integers(8)))
              for i in rng.choice(np.arange(header_end, len(raw) - 32), 400, replace=False)]
    counts: dict[str, int] = {}
    flipped = bytearray(raw)
    # The file's bytes come from memory: thousands of loads in a few seconds, no disk writes.
    monkeypatch.setattr(Path, "read_bytes", lambda self: bytes(flipped))
    for i, bit in flips:
        flipped[i] ^= 1 << bit
        try:
            result = _outcome(source, like, original)
        except Exception as err:  # anything but CheckpointError is a failure: name it
            result = f"raised {type(err).__name__}"
        flipped[i] ^= 1 << bit
        counts[result] = counts.get(result, 0) + 1
    monkeypatch.undo()
    print(f"\n{len(flips)} flips ({header_end} header bytes): {counts}")
    assert set(counts) <= {"refused", "identical"}, counts


def _rewrite(raw: bytes, edit) -> bytes:
    """A file ``save_checkpoint`` never writes: the header edited and the digest recomputed."""
    import hashlib

    start = len(checkpoint._MAGIC) + 8
    length = int.from_bytes(raw[len(checkpoint._MAGIC): start], "little")
    header = json.loads(raw[start: start + length])
    edit(header)
    head = json.dumps(header).encode()
    body = checkpoint._MAGIC + len(head).to_bytes(8, "little") + head + raw[start + length: -32]
    return body + hashlib.sha256(body).digest()


def _set(field, value):
    return lambda h: h.__setitem__(field, value)


@pytest.mark.parametrize("edit, says", [
    (_set("epoch", -1), "field 'epoch'"),
    (_set("step", "12"), "field 'step'"),
    (lambda h: h.pop("leaves"), "field 'leaves'"),
    (_set("metadata", [1]), "field 'metadata'"),
    (_set("key_impl", "no_such_prng"), "cannot read the payload"),
    (lambda h: h["leaves"][0].__setitem__("dtype", "float99"), "leaf 0"),
    (lambda h: h["leaves"][0].__setitem__("shape", [3]), "in the checkpoint but"),
    (_set("format", 7), "this funcbp reads formats 1, 2"),
], ids=["epoch", "step", "leaves", "metadata", "key_impl", "dtype", "shape", "format"])
def test_a_well_formed_file_with_a_bad_header_is_refused(reference, tmp_path, edit, says):
    """Never a KeyError, TypeError or jax ValueError: a CheckpointError naming the file."""
    raw = (reference[1] / "checkpoints" / "latest.ckpt").read_bytes()
    path = tmp_path / "edited.ckpt"
    path.write_bytes(_rewrite(raw, edit))
    with pytest.raises(CheckpointError, match=says) as err:
        load_checkpoint(path, like=_template(reference))
    assert str(path) in str(err.value)


def test_version_1_files_still_load(tmp_path):
    import hashlib
    import io

    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    buffer = io.BytesIO()
    np.savez(buffer, leaf_0=tree["w"])
    payload = buffer.getvalue()
    header = {"format": 1, "step": 3, "epoch": 1, "metadata": {"a": 1}, "key_impl": None,
              "leaves": [{"path": "w", "shape": [2, 3], "dtype": "float32"}],
              "payload_bytes": len(payload),
              "payload_sha256": hashlib.sha256(payload).hexdigest()}
    head = json.dumps(header).encode()
    raw = checkpoint._MAGIC + len(head).to_bytes(8, "little") + head + payload
    (tmp_path / "v1.ckpt").write_bytes(raw)
    ckpt = load_checkpoint(tmp_path / "v1.ckpt", like=tree)
    assert (ckpt.step, ckpt.epoch, ckpt.format) == (3, 1, 1)
    _assert_same(ckpt.tree, tree)
    (tmp_path / "v1.ckpt").write_bytes(raw[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "v1.ckpt", like=tree)


# ------------------------------------------------------------------ SIGKILL while saving

def test_sigkill_at_every_step_of_the_save_sequence(tmp_path):
    """A child process saves epoch 3 over epochs 2 (latest) and 1 (previous) and is SIGKILLed
    just before each file-system step in turn; what each leaves is then loaded here."""
    out = tmp_path / "sweep"
    subprocess.run([sys.executable, str(WORKER), "sweep", str(out)], check=True, env=_env(),
                   timeout=300)
    sys.path.insert(0, str(WORKER.parent))
    try:
        from crash_worker import tree
    finally:
        sys.path.remove(str(WORKER.parent))
    steps = json.loads((out / "sweep.json").read_text())
    assert [s["killed"] for s in steps] == [True] * (len(steps) - 1) + [False]
    seen = []
    for s in steps:
        work = out / f"k{s['k']}"
        latest = work / "latest.ckpt"
        remove_temporary_files(work)  # what the trainer does at its next start
        assert not [p.name for p in work.iterdir() if p.name.startswith(".")]
        newest = newest_checkpoint(latest)
        ckpt = load_checkpoint(newest, like=tree(0))
        _assert_same(ckpt.tree, tree(ckpt.epoch))          # complete and bit-exact
        assert ckpt.epoch in (2, 3)
        previous = checkpoint.previous_path(latest)
        if latest.exists() and previous.exists():          # "the one before" is the one before
            assert load_checkpoint(previous, like=tree(0)).epoch == ckpt.epoch - 1
        seen.append((s["before"].split()[0], newest.name, ckpt.epoch))
    print("\n" + "\n".join(f"killed before {b:9s} -> resume from {n} (epoch {e})"
                           for b, n, e in seen))
    assert seen[0][2] == 2 and seen[-1][2] == 3
    assert ("replace", "latest.previous.ckpt", 2) in seen  # the window between the renames


KILL_STEPS = ("write", "replace")


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """``funcbp train`` SIGKILLed during epoch 2's save of latest.ckpt, once before writing the
    new file and once between the rotation and the final rename (both killed runs at once)."""
    root = tmp_path_factory.mktemp("killed")
    procs = {step: subprocess.Popen(
        [sys.executable, str(WORKER), "fit", str(root / step), json.dumps(TINY), "latest.ckpt",
         step, "2"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for step in KILL_STEPS}
    for proc in procs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == -9, err[-2000:]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("step", KILL_STEPS)
def test_training_killed_while_saving_resumes_bit_for_bit(reference, killed_runs, tmp_path,
                                                          step):
    """Resumed, the killed run ends with the parameters, optimiser state and metrics of the run
    never killed."""
    run = tmp_path / "run"
    shutil.copytree(killed_runs / step, run)
    assert (run / rundir.LOCK_NAME).exists()               # left behind by the killed run
    lines = []
    resumed = resume(run, quiet=True, log=lines.append)
    _assert_same({"params": resumed.params, "opt_state": resumed.opt_state}, reference[0])
    assert _strip(read_metrics(run)) == _strip(read_metrics(reference[1]))
    text = "\n".join(lines)
    assert "taking over the lock of a run that is gone" in text
    assert "a temporary file left by an interrupted save" in text
    if step == "replace":
        assert "resuming from latest.previous.ckpt" in text
    assert not (run / rundir.LOCK_NAME).exists()


@pytest.fixture(scope="module")
def killed_async_run(tmp_path_factory):
    """``async_save``: epoch 2's save, on its background thread, SIGKILLed between the rotation
    of latest.ckpt and the rename of the new file (training itself had gone on meanwhile)."""
    root = tmp_path_factory.mktemp("killed-async")
    proc = subprocess.run(
        [sys.executable, str(WORKER), "fit", str(root / "run"),
         json.dumps({**TINY, "async_save": True}), "latest.ckpt", "replace", "2"],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    return root / "run"


@pytest.mark.slow
def test_a_background_save_killed_midway_leaves_the_previous_checkpoint(reference,
                                                                       killed_async_run,
                                                                       tmp_path):
    run = tmp_path / "run"
    shutil.copytree(killed_async_run, run)
    ckpts = run / "checkpoints"
    assert not (ckpts / "latest.ckpt").exists() and (ckpts / "latest.previous.ckpt").exists()
    lines = []
    resumed = resume(run, quiet=True, log=lines.append)
    assert "resuming from latest.previous.ckpt" in "\n".join(lines)
    _assert_same({"params": resumed.params, "opt_state": resumed.opt_state}, reference[0])
    assert _strip(read_metrics(run)) == _strip(read_metrics(reference[1]))


# ---------------------------------------------------------------- one run per directory

def test_a_second_run_into_the_same_directory_refuses(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, str(WORKER), "hold", str(run)], env=_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {holder.pid} "):
            fit(TrainConfig(**TINY), run_dir=run, quiet=True, log=lambda line: None)
        assert main(["train", "--run-dir", str(run), "--quiet"]) == 1
    finally:
        holder.communicate("", timeout=60)                 # releases the lock and exits
    assert not (run / rundir.LOCK_NAME).exists()
    # A holder killed outright leaves its lock; the next run takes it over, and says so.
    holder = subprocess.Popen([sys.executable, str(WORKER), "hold", str(run)], env=_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=60)
    said = []
    with rundir.acquire_lock(run, warn=said.append):
        assert json.loads((run / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"pid {holder.pid}" in said[0] and "is gone" in said[0]


# ---------------------------------------------------------- edited and damaged run files

def _edit_config(run, **fields):
    path = run / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_an_edited_config_is_refused_naming_the_fields(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    _edit_config(run, split_seed=1, seed=5)
    with pytest.raises(ConfigChangeError, match=r"in seed \(0 -> 5\), split_seed \(0 -> 1\): "
                                                r"these change the data"):
        resume(run, quiet=True, log=lambda line: None)
    _edit_config(run, split_seed=0, seed=0, epochs=3)
    with pytest.raises(ConfigChangeError, match=r"epochs \(2 -> 3\).*--allow-config-change "
                                                "epochs"):
        resume(run, quiet=True, log=lambda line: None)
    _edit_config(run, epochs=2)
    assert main(["train", "--resume", str(run), "--lr", "0.3", "--quiet"]) == 1
    assert "lr (0.1 -> 0.3)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--split-seed", "1", "--allow-config-change",
                 "split_seed"]) == 1
    err = capsys.readouterr().err
    assert "split_seed" in err and "data_dir, devices, epochs" in err and "may change" in err


def test_missing_or_truncated_run_files_are_restored_from_the_checkpoint(reference, tmp_path):
    """A truncated config.json is refused (deleting it is the fix: the checkpoint holds the
    config); a missing config.json or metrics.jsonl is rebuilt, each with a warning."""
    run = _copy(reference, tmp_path)
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(RunDirError, match=r"config.json: not valid JSON .*delete it and resume"):
        resume(run, quiet=True, log=lambda line: None)
    (run / "config.json").unlink()
    (run / "metrics.jsonl").unlink()
    said = []
    resume(run, quiet=True, log=said.append)
    for warning in ("config.json is missing; restored from the config saved in latest.ckpt",
                    "metrics.jsonl is missing; rebuilt the 2 epoch lines from the checkpoint"):
        assert any(warning in line for line in said), said
    assert json.loads((run / "config.json").read_text()) == json.loads(text)
    assert _strip(read_metrics(run)) == _strip(read_metrics(reference[1]))


@pytest.mark.slow
def test_a_partial_metrics_line_is_dropped_and_an_allowed_change_trains_on(reference,
                                                                           tmp_path):
    run = _copy(reference, tmp_path)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:-1]) + lines[-1][:25])  # killed writing the test line
    said = []
    result = resume(run, allow_config_change=["epochs"], epochs=3, quiet=True, log=said.append)
    assert any("metrics.jsonl: dropped a partial last line" in line for line in said), said
    records = read_metrics(run)
    assert [r["type"] for r in records] == ["epoch"] * 3 + ["test"]
    assert _strip(records[:2]) == _strip(read_metrics(reference[1])[:2])
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["epochs"] == 3


# ------------------------------------------------------------------------ full disk, I/O

def _fail_at(at, err):
    def hook(step, path):
        if step == at:
            raise OSError(err, os.strerror(err))
    return hook


@pytest.mark.parametrize("at, err, says", [
    ("write", errno.ENOSPC, "No space left on device); free disk space"),
    ("open", errno.EROFS, "Read-only file system); the file system is read-only"),
    ("rotate", errno.EACCES, "Permission denied); check the directory's permissions"),
    ("replace", errno.ENOSPC, "free disk space"),
])
def test_a_failed_save_names_the_file_and_keeps_the_previous(tmp_path, monkeypatch, at, err,
                                                             says):
    path = tmp_path / "latest.ckpt"
    checkpoint.save_checkpoint(path, {"w": np.ones(3)}, step=1, epoch=1, keep_previous=True)
    checkpoint.save_checkpoint(path, {"w": np.full(3, 2.0)}, step=2, epoch=2,
                               keep_previous=True)
    monkeypatch.setattr(checkpoint, "_before_step", _fail_at(at, err))
    with pytest.raises(CheckpointWriteError,
                       match=f"latest.ckpt: cannot .*{re.escape(says)}") as e:
        checkpoint.save_checkpoint(path, {"w": np.zeros(3)}, step=3, epoch=3,
                                   keep_previous=True)
    assert e.value.errno == err and "intact" in str(e.value)
    monkeypatch.undo()
    # After the rotation the epoch-1 file is gone; epoch 2 is moved back to latest.ckpt.
    rotated = at == "replace"
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["latest.ckpt"] if rotated else ["latest.ckpt", "latest.previous.ckpt"])
    ckpt = load_checkpoint(path, like={"w": np.ones(3)})
    assert ckpt.epoch == 2 and ckpt.tree["w"].tolist() == [2.0] * 3


class _HalfWriter:
    """A file whose write gets half the bytes onto disk, then the disk is full."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def tell(self):
        return self.f.tell()

    def truncate(self, n):
        return self.f.truncate(n)

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        self.f.flush()


def test_a_metrics_line_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    rundir.append_jsonl(path, {"type": "epoch", "epoch": 1})
    before = path.read_bytes()
    monkeypatch.setattr(rundir, "open", lambda p, mode: _HalfWriter(open(p, mode)),
                        raising=False)
    with pytest.raises(RunDirError, match="metrics.jsonl: cannot append .*free disk space"):
        rundir.append_jsonl(path, {"type": "epoch", "epoch": 2, "pad": "x" * 100})
    assert path.read_bytes() == before
    monkeypatch.undo()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(
        OSError(errno.EROFS, os.strerror(errno.EROFS))))
    with pytest.raises(RunDirError, match="summary.json: cannot write it .*read-only"):
        rundir.write_json(tmp_path / "summary.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


@pytest.mark.slow
def test_disk_full_during_training_stops_cleanly(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    seen = []

    def full_at_second_latest(step, path):
        if step == "write" and "latest" in path.name:
            seen.append(path)
            if len(seen) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "_before_step", full_at_second_latest)
    argv = ["train", "--run-dir", str(run), "--quiet"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "funcbp train: CheckpointWriteError: " in err and "Traceback" not in err
    assert "No space left on device); free disk space" in err
    monkeypatch.undo()
    assert not (run / rundir.LOCK_NAME).exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt",
                                                                      "latest.ckpt"]
    model, tx = _model_and_optimizer()
    assert load_checkpoint(run / "checkpoints" / "latest.ckpt", like=_like(model, tx)).epoch == 1
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]  # the epoch-2 line was written


# -------------------------------------------------------------------------------- labels

def test_labels_out_of_range_are_refused_before_training(tmp_path, monkeypatch):
    from funcbp import data

    images, labels = data.load_digits()
    monkeypatch.setattr(data, "load_digits", lambda: (images, labels + 1))  # 1-based labels
    with pytest.raises(losses.LabelRangeError,
                       match=r"digits train labels: \d+ of 1258 labels are outside \[0, 10\) "
                             r"\(smallest 1, largest 10\).*subtract 1"):
        fit(TrainConfig(**TINY), run_dir=tmp_path / "run", quiet=True, log=lambda line: None)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_labels_out_of_range_inside_training_stop_it_with_the_batch(tmp_path, monkeypatch):
    """Data that skipped the up-front check (e.g. a loader of the user's): the jitted step
    counts the bad labels, skips the update, and the trainer stops at that batch."""
    splits = fit_module.load_data(TrainConfig(**TINY))
    (x, y), val, test = splits
    y = y.copy()
    y[::10] = 10
    monkeypatch.setattr(fit_module, "load_data", lambda config: splits._replace(train=(x, y)))
    with pytest.raises(losses.LabelRangeError,
                       match=r"labels out of range at step 1 \(epoch 1, batch 1\): \d+ of 256 "
                             r"labels of the batch are outside \[0, 10\).*no checkpoint"):
        fit(TrainConfig(**TINY), run_dir=tmp_path / "run", quiet=True, log=lambda line: None)
    assert [r["type"] for r in read_metrics(tmp_path / "run")] == ["labels"]


# ------------------------------------------------------------------------ progress bar

def test_the_progress_bar_says_when_the_step_compiles(reference):
    _, run, bars = reference
    assert bars[0][0] == "compiling the training step..."
    assert bars[0][1].startswith("compiled in ")
    assert not any("compil" in said for said in bars[1])   # epoch 2 compiles nothing
    history = read_metrics(run)
    assert history[0]["compile_time_s"] > 0 and "compile_time_s" not in history[1]
