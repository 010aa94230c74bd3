"""Your model on your data: a plain-function model on arrays, iterables and grain through
``fit``, the same through ``funcbp train`` with a config file, each resumed mid-epoch bit for
bit; the contract of ``--data path.npz`` and ``--model pkg.module:factory``."""

from __future__ import annotations

import json
import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import data as fdata
from funcbp.cli import main
from funcbp.train import (
    CheckpointManager,
    TrainConfig,
    fit,
    load_checkpoint,
    read_metrics,
    resume,
)
from funcbp.train.userdata import IterableData, resolve_data

QUIET = dict(quiet=True, log=lambda line: None)


class Interrupt(Exception):
    pass


def init(key):
    """A plain-function MLP 64 -> 32 -> 10 over a dict of arrays: the user's own model."""
    k1, k2 = jax.random.split(key)
    return {"h": {"w": jax.random.normal(k1, (64, 32)) / 8.0, "b": jnp.zeros(32)},
            "out": {"w": jax.random.normal(k2, (32, 10)) / 6.0, "b": jnp.zeros(10)}}


def apply(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["h"]["w"] + params["h"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


def loss(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


@pytest.fixture(scope="module")
def arrays():
    """The digits as the user's own arrays: float32 images (N, 8, 8), int labels; 20% test."""
    images, labels = fdata.load_digits()
    x = (images / 16.0).astype(np.float32).reshape(-1, 8, 8)
    (x_tr, y_tr), (x_te, y_te) = fdata.split(jax.random.key(3), x, labels.astype(np.int32),
                                             (0.8, 0.2), stratify=True)
    return np.asarray(x_tr), np.asarray(y_tr), np.asarray(x_te), np.asarray(y_te)


def _leaves(tree):
    return [np.asarray(v) for v in jax.tree.leaves(tree)]


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _interrupt_after_save(monkeypatch, at_step):
    """Stop the run right after its checkpoint of global step ``at_step`` is written."""
    original = CheckpointManager.save

    def save(self, tree, *, step, **kwargs):
        original(self, tree, step=step, **kwargs)
        if step == at_step:
            self.wait()
            raise Interrupt(f"stopped after the save of step {step}")

    monkeypatch.setattr(CheckpointManager, "save", save)


RUN = dict(epochs=3, batch_size=64, lr=0.1, save_every_steps=7, keep_last=2, l2=0.0)


@pytest.mark.slow
def test_plain_function_model_on_arrays_resumes_mid_epoch_bit_for_bit(arrays, tmp_path,
                                                                      monkeypatch):
    x, y, x_test, y_test = arrays
    straight = fit(init, apply, loss, (x, y), test_data=(x_test, y_test),
                   run_dir=tmp_path / "straight", **RUN, **QUIET)
    # 1438 * 0.9 = 1294 training examples: 20 steps of 64 per epoch; step 27 is inside epoch 2.
    assert [r["step"] for r in straight.history] == [20, 40, 60]
    assert straight.test["test_accuracy"] > 0.8
    with monkeypatch.context() as mp:
        _interrupt_after_save(mp, 28)
        with pytest.raises(Interrupt):
            fit(init, apply, loss, (x, y), test_data=(x_test, y_test),
                run_dir=tmp_path / "broken", **RUN, **QUIET)
    ckpt = load_checkpoint(tmp_path / "broken" / "checkpoints" / "latest.ckpt")
    assert (ckpt.step, ckpt.epoch, ckpt.data_state["batch"]) == (28, 1, 8)
    lines = []
    resumed = fit(init, apply, loss, (x, y), test_data=(x_test, y_test),
                  run_dir=tmp_path / "broken", resume=True, **RUN, quiet=True, log=lines.append)
    assert "resuming" in lines[0] and "batch 8 of epoch 2" in lines[0]
    _assert_same(resumed.params, straight.params)
    _assert_same(resumed.opt_state, straight.opt_state)
    timing = ("train_time_s", "epoch_time_s", "elapsed_s", "examples_per_s", "compile_time_s")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]
    assert strip(read_metrics(tmp_path / "broken")) == strip(read_metrics(tmp_path / "straight"))
    kept = CheckpointManager(tmp_path / "straight" / "checkpoints", keep_last=2).steps()
    assert kept == [56, 60]   # the last two saves: step 56 (mid-epoch) and the final epoch
    # Other data under the same run directory is refused, naming the split.
    with pytest.raises(ValueError, match="data differ .* in the train"):
        fit(init, apply, loss, (x[::-1].copy(), y[::-1].copy()), test_data=(x_test, y_test),
            run_dir=tmp_path / "broken", resume=True, **{**RUN, "epochs": 3}, **QUIET)


def _batches(x, y, size):
    return [(x[i: i + size], y[i: i + size]) for i in range(0, len(x) - size + 1, size)]


def test_data_forms_resolve_to_the_same_splits(arrays, tmp_path):
    x, y, x_test, y_test = arrays
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    a = resolve_data((x, y), val_fraction=0.1)
    b = resolve_data(str(path), val_fraction=0.1)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert (len(b.train.x), len(b.val.x), len(b.test.x)) == (1294, 144, 359)
    assert b.num_classes == 10 and b.example_shape == (8, 8)
    np.savez(path, x_train=x, y_train=y, x_val=x_test[:50], y_val=y_test[:50], x_test=x_test,
             y_test=y_test)
    assert len(resolve_data(str(path), val_fraction=0.1).val.x) == 50  # given: not split
    it = resolve_data(_batches(x, y, 64))
    assert isinstance(it.train, IterableData) and it.train.num_batches() == 22
    for bad, says in [({"x_train": x}, "x_train and y_train go together"),
                      ({"x_train": x, "y_train": y[:5]}, "has 1438 examples but y_train 5"),
                      ({"x_tran": x}, "needs x_train and y_train"),
                      ("data.csv", "ending in .npz"), (42, "expected \\(x, y\\) arrays")]:
        with pytest.raises((ValueError, TypeError), match=says):
            resolve_data(bad)
    np.savez(path, x_train=x, y_train=y)
    with pytest.raises(ValueError, match="missing array\\(s\\) x_test, y_test"):
        resolve_data(str(path))
    with pytest.raises(ValueError, match="one-shot iterator.*function epoch -> iterable"):
        resolve_data(b for b in _batches(x, y, 64))     # a generator object: one pass only


@pytest.mark.slow
@pytest.mark.parametrize("form", ["list", "grain"])
def test_iterable_data_resumes_mid_epoch_bit_for_bit(arrays, tmp_path, monkeypatch, form):
    """A list of batches is replayed up to the checkpoint's batch; a grain data set's iterator
    state (``get_state``) is stored in the checkpoint and restored."""
    x, y, x_test, y_test = arrays
    if form == "grain":
        grain = pytest.importorskip("grain")
        source = (grain.MapDataset.source([{"x": a, "y": b} for a, b in zip(x, y, strict=True)])
                  .shuffle(seed=1).batch(64, drop_remainder=True))
    else:
        source = _batches(x, y, 64)
    run = dict(epochs=2, lr=0.1, l2=0.0, save_every_steps=5, schedule="constant",
               val_fraction=0.0, batch_size=64)
    straight = fit(init, apply, loss, source, test_data=(x_test, y_test),
                   run_dir=tmp_path / "straight", **run, **QUIET)
    assert straight.history[-1]["step"] == 44
    with monkeypatch.context() as mp:
        _interrupt_after_save(mp, 30)
        with pytest.raises(Interrupt):
            fit(init, apply, loss, source, test_data=(x_test, y_test),
                run_dir=tmp_path / "broken", **run, **QUIET)
    state = load_checkpoint(tmp_path / "broken" / "checkpoints" / "latest.ckpt").data_state
    assert state["batch"] == 8
    assert (state["iterator"] is not None) == (form == "grain")
    resumed = fit(init, apply, loss, source, test_data=(x_test, y_test),
                  run_dir=tmp_path / "broken", resume=True, **run, **QUIET)
    _assert_same(resumed.params, straight.params)


FACTORY = '''
import jax, jax.numpy as jnp

def factory():
    def init(key, in_shape):
        w = jax.random.normal(key, (in_shape[1] * in_shape[2], 10)) / 8.0
        return (in_shape[0], 10), {"linear": {"w": w, "b": jnp.zeros(10)}}

    def apply(params, x, *, key=None, train=False):
        return x.reshape(x.shape[0], -1) @ params["linear"]["w"] + params["linear"]["b"]

    return init, apply
'''

CONFIG = '''
epochs = 2
batch_size = 64
lr = 0.5
schedule = "constant"
save_every_steps = 9

[optimizer]
name = "momentum"
beta = 0.8
'''


@pytest.mark.slow
def test_cli_trains_a_factory_on_an_npz_with_a_config_file_and_resumes(arrays, tmp_path,
                                                                     monkeypatch, capsys):
    x, y, x_test, y_test = arrays
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels.py").write_text(textwrap.dedent(FACTORY))
    (tmp_path / "run.toml").write_text(CONFIG)
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    argv = ["train", "--model", "mymodels:factory", "--data", "data.npz", "--config",
            "run.toml", "l2=0", "--quiet", "optimizer.beta=0.7"]
    assert main([*argv, "--run-dir", "straight"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", out[-1])
    assert float(out[-1].split()[-1]) > 0.8
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert (saved["model"], saved["data"], saved["epochs"], saved["optimizer"],
            saved["optimizer_options"], saved["l2"], saved["save_every_steps"]) == (
        "mymodels:factory", "data.npz", 2, "momentum", {"beta": 0.7}, 0.0, 9)
    assert 'name = "momentum"' in (tmp_path / "straight" / "config.toml").read_text()
    with monkeypatch.context() as mp:
        _interrupt_after_save(mp, 27)
        with pytest.raises(Interrupt):
            main([*argv, "--run-dir", "broken"])
    assert main(["train", "--resume", "broken", "--quiet"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.ckpt")
    b = load_checkpoint(tmp_path / "broken" / "checkpoints" / "latest.ckpt")
    assert a.step == b.step == 40
    _assert_same(a.tree, b.tree)
    # The resolved config file runs the same again.
    assert main(["train", "--config", "straight/config.toml", "--run-dir", "again",
                 "--quiet"]) == 0
    _assert_same(load_checkpoint(tmp_path / "again" / "checkpoints" / "latest.ckpt").tree,
                 a.tree)


@pytest.mark.parametrize("argv, says", [
    (["epochz=3"], "unknown key 'epochz' (did you mean 'epochs'?)"),
    (["optimizer=adamw", "optimizer.weight_decy=0.1"],
     "adamw has no option 'weight_decy' (did you mean 'weight_decay'?)"),
    (["--optimizer", "lion", "optimizer.b1=1.5"], "b1 must be in [0, 1)"),
    (["--config", "missing.toml"], "missing.toml: no such config file"),
    (["--data", "nothere.npz"], "nothere.npz: no such data file"),
    (["--model", "nomodule:factory", "--data", "d.npz"], "cannot import 'nomodule'"),
    (["precision=f8"], "TrainConfig.precision='f8': choose one of f32, bf16, f16"),
    (["histogram_every=1"], "histograms are written to TensorBoard: add tensorboard"),
    (["--data", "d.npz", "steps_per_epoch=3"], "steps_per_epoch=3 applies to data given as "
                                               "an iterable"),
])
def test_cli_names_the_bad_key(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "d.npz", x_train=np.zeros((8, 2), np.float32), y_train=np.zeros(8, int),
             x_test=np.zeros((2, 2), np.float32), y_test=np.zeros(2, int))
    assert main(["train", *argv, "--quiet", "--run-dir", "r"]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_labels_beyond_the_models_outputs_are_refused(arrays, tmp_path):
    x, y, _, _ = arrays
    with pytest.raises(ValueError, match="the model gives 10 outputs per example, but the "
                                         "labels go up to 10"):
        fit(init, apply, loss, (x, y + 1), run_dir=tmp_path / "r", **QUIET)


def test_a_regression_model_trains_without_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    lines = []
    result = fit({"w": jnp.zeros((3, 1))}, lambda p, x: x @ p["w"], "mse", (x, y),
                 test_data=(x[:64], y[:64]), epochs=3, batch_size=32, lr=0.05,
                 schedule="constant", momentum=0.0, l2=0.0, run_dir=tmp_path / "r",
                 quiet=True, log=lines.append)
    assert "train_accuracy" not in result.history[-1]
    assert result.history[-1]["val_loss"] < 0.1 * result.history[0]["train_loss"]
    assert lines[-1].startswith("test loss: ")
    assert TrainConfig.from_json(json.loads((tmp_path / "r" / "config.json").read_text())
                                 ).data == "<python>"
    with pytest.raises(ValueError, match="passed to fit from Python"):
        resume(tmp_path / "r", **QUIET)
