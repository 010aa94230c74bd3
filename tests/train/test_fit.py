"""The trainer end to end: resume bit for bit, the NaN guard, the run directory, the CLI."""

from __future__ import annotations

import json
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import nn
from funcbp.cli import main
from funcbp.train import (
    ConfigChangeError,
    NonFiniteError,
    TrainConfig,
    fit,
    get_model,
    load_checkpoint,
    make_optimizer,
    models,
    read_metrics,
    resume,
)

# Small and quick: the MLP on the digits, 4 steps of 256 per epoch.
TINY = dict(model="mlp", batch_size=256, epochs=3, patience=None, lr=0.1)
QUIET = dict(quiet=True, log=lambda line: None)


class Interrupt(Exception):
    pass


def _stop_after(epoch):
    def callback(record):
        if record["epoch"] == epoch:
            raise Interrupt
    return callback


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_resume_equals_uninterrupted_bit_for_bit(tmp_path):
    # Dropout (wide_mlp) and random shifts (augment, on by default) use the per-step keys, so a
    # wrong key after resuming shows.
    config = TrainConfig(**{**TINY, "model": "wide_mlp"})
    assert config.augment
    straight = fit(config, run_dir=tmp_path / "straight", **QUIET)
    with pytest.raises(Interrupt):
        fit(config, run_dir=tmp_path / "broken", callbacks=[_stop_after(1)], **QUIET)
    assert [r["epoch"] for r in read_metrics(tmp_path / "broken")] == [1]
    resumed = resume(tmp_path / "broken", **QUIET)
    for a, b in zip(_leaves(straight.params), _leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(straight.opt_state), _leaves(resumed.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.test == {**straight.test, "elapsed_s": resumed.test["elapsed_s"]}
    drop = ("train_time_s", "epoch_time_s", "elapsed_s", "examples_per_s", "compile_time_s")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]
    assert strip(read_metrics(tmp_path / "broken")) == strip(read_metrics(tmp_path / "straight"))


@pytest.mark.slow
def test_resume_refuses_a_config_edited_to_another_model(tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 1})
    fit(config, run_dir=tmp_path / "run", **QUIET)
    with pytest.raises(FileExistsError, match="resume"):  # fit never overwrites a run
        fit(config, run_dir=tmp_path / "run", **QUIET)
    (tmp_path / "run" / "config.json").write_text(
        json.dumps({**config.to_json(), "model": "wide_mlp"}))
    # The checkpoint's own config is the truth: the edit is refused before any loading.
    with pytest.raises(ConfigChangeError, match=r"model \('mlp' -> 'wide_mlp'\)") as err:
        resume(tmp_path / "run", **QUIET)
    assert "latest.ckpt" in str(err.value) and "config.json" in str(err.value)


@pytest.mark.slow
def test_early_stopping_stops_and_tests_the_best_parameters(tmp_path):
    # lr = 0: the validation loss never improves after epoch 1, so patience 2 stops at epoch 3.
    config = TrainConfig(**{**TINY, "epochs": 6, "lr": 0.0, "patience": 2})
    result = fit(config, run_dir=tmp_path / "run", **QUIET)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.test["params_from"] == "best (epoch 1)"
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt",
                           like={"params": result.params})
    assert best.epoch == 1
    for a, b in zip(_leaves(best.tree["params"]), _leaves(result.params), strict=True):
        np.testing.assert_array_equal(a, b)


def _bomb(num_classes=10):
    """An MLP plus a (1, 1) leaf ``t`` that adds ``0 * sqrt(t)`` to the logits.

    The L1 penalty walks ``t`` down by ``lr * l1 = 0.25`` per step from 1.0 (the data
    gradient of ``t`` is exactly 0 while ``t > 0``), so at the 5th step ``t == 0`` exactly:
    the loss stays finite but d/dt = 0 * inf = NaN, in ``t`` only.
    """
    def init(key, in_shape):
        return in_shape, {"t": jnp.ones((1, 1))}

    def apply(params, x, *, key=None, train=False):
        return x + 0.0 * jnp.sqrt(params["t"])

    bomb = nn.Layer(init, apply, "bomb")
    return nn.serial(nn.Flatten(), nn.Dense(num_classes), bomb)


@pytest.mark.slow
def test_nan_guard_names_step_and_leaf_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "bomb", _bomb)
    config = TrainConfig(model="bomb", batch_size=256, epochs=3, lr=0.25, momentum=0.0,
                         schedule="constant", l1=1.0, l2=0.0, augment=False, patience=None)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError) as err:
        fit(config, run_dir=run, **QUIET)
    message = str(err.value)
    # 1258 training digits // 256 = 4 steps per epoch: step 5 is epoch 2, batch 1.
    assert "at step 5 (epoch 2, batch 1)" in message
    assert "non-finite gradients in bomb_0/t;" in message
    assert "dense_0" not in message.split("non-finite gradients in")[1].split(";")[0]
    # ...and where the NaN started: the step replayed eagerly through funcbp.find_nonfinite.
    assert "where it started: the VJP rule of 'sqrt' at" in message
    assert f"last good checkpoint is {run / 'checkpoints' / 'latest.ckpt'} (epoch 1, step 4)" \
        in message
    # The last good checkpoint is intact and holds t after 4 steps: 1 - 4 * 0.25 = 0.
    _, params = get_model("bomb").init(jax.random.key(0), (1, 8, 8, 1))
    tx, _ = make_optimizer(config, steps_per_epoch=4)
    ckpt = load_checkpoint(run / "checkpoints" / "latest.ckpt",
                           like={"params": params, "opt_state": tx.init(params)})
    assert ckpt.epoch == 1 and ckpt.step == 4
    assert float(ckpt.tree["params"]["bomb_0"]["t"][0, 0]) == 0.0
    records = read_metrics(run)
    assert [r["type"] for r in records] == ["epoch", "nonfinite"]
    assert records[-1]["step"] == 5


@pytest.mark.slow
def test_cli_end_to_end_writes_the_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--model", "mlp", "--epochs", "2", "--batch-size", "128",
                 "--run-dir", str(run), "--l1", "1e-5", "--clip-norm", "5", "--grad", "jax"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", out[-1])
    assert any(line.startswith("epoch   2/2") for line in out)
    for name in ("config.json", "metrics.jsonl", "summary.json", "loss.png", "accuracy.png",
                 "checkpoints/latest.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    for png in ("loss.png", "accuracy.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["epochs"], config["l1"], config["clip_norm"],
            config["grad"]) == ("mlp", 2, 1e-5, 5.0, "jax")
    records = read_metrics(run)
    assert [r["type"] for r in records] == ["epoch", "epoch", "test"]
    assert records[-1]["test_accuracy"] == pytest.approx(float(out[-1].split()[-1]), abs=1e-4)
    assert records[0]["step"] == 1258 // 128 and records[1]["step"] == 2 * (1258 // 128)
    # Eighteen steps of the MLP on the digits already beat chance (0.1) by far.
    assert records[-1]["test_accuracy"] > 0.3


@pytest.mark.parametrize("argv, says", [
    (["--resume", "RUN", "--run-dir", "elsewhere"], "drop --run-dir"),
    (["--allow-config-change", "epochs"], "only applies with --resume"),
])
def test_cli_resume_usage_errors(tmp_path, capsys, argv, says):
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    assert main(["train", *argv]) == 2
    assert says in capsys.readouterr().err


def test_cli_reports_a_bad_run_directory(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 1
    assert "config.json" in capsys.readouterr().err


def test_cli_rejects_unknown_model(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", "resnet9000"])
    assert exit_.value.code == 2
    assert "resnet9000" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, match", [
    ("data", "cifar", "choose one of digits"),
    ("schedule", "linear", "choose one of constant"),
    ("val_fraction", 1.5, r"in \[0, 1\)"),
    ("batch_size", 0, "positive integer"),
    ("clip_norm", -1.0, "must be > 0"),
    ("momentum", 1.5, r"in \[0, 1\)"),
    ("momentum", 1.0, r"in \[0, 1\)"),
    ("momentum", -0.1, r"in \[0, 1\)"),
    ("epochs", "3", "must be an integer"),
    ("lr", float("nan"), "finite number"),
    ("augment", "yes", "true or false"),
    ("patience", -1, "must be >= 0"),
])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}=.*{match}"):
        TrainConfig(**{field: value})


def test_patience_needs_a_validation_split():
    with pytest.raises(ValueError, match="TrainConfig.patience=3: .*val_fraction is 0"):
        TrainConfig(patience=3, val_fraction=0.0)
    TrainConfig(patience=0, val_fraction=0.0)  # 0: no early stopping, nothing to watch


@pytest.mark.parametrize("optimizer, lr, warns", [
    ("adam", 1e6, True), ("adam", 1e-3, False), ("sgd", 1e3, True), ("sgd", 0.05, False),
    ("sgd", 1e-8, True), ("sgd", 0.0, False),
])
def test_a_learning_rate_far_outside_the_usual_range_warns(optimizer, lr, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainConfig(optimizer=optimizer, lr=lr)
    said = [str(w.message) for w in caught if "usual range" in str(w.message)]
    assert bool(said) == warns, said
    if warns:
        assert f"TrainConfig.lr={lr:g} is far outside the usual range of {optimizer}" in said[0]


def test_cli_prints_the_warning_without_a_traceback(capsys, monkeypatch):
    import funcbp.train

    monkeypatch.setattr(funcbp.train, "fit", lambda *a, **k: None)
    assert main(["train", "--optimizer", "adam", "--lr", "1e6"]) == 0
    assert "funcbp train: warning: TrainConfig.lr=1e+06 is far outside" in capsys.readouterr().err


@pytest.mark.slow
def test_default_recipe_reaches_98_percent_on_the_digits(tmp_path):
    """The README's ``make train``: one seed must clear 0.975 (3-seed mean >= 0.98 recorded)."""
    result = fit(TrainConfig(), run_dir=tmp_path / "default", **QUIET)
    assert result.test["test_accuracy"] >= 0.975


def test_bench_runs_the_benchmark_suite_of_a_source_checkout(capsys, monkeypatch):
    import funcbp.cli as cli

    assert main(["bench", "--help"]) == 0                  # the suite's own --help
    assert "usage: python -m benchmarks" in capsys.readouterr().out
    called = []
    monkeypatch.setattr(cli, "_benchmarks_main", lambda: called.append)
    assert main(["bench", "--quick", "--case", "mlp"]) == 0
    assert called == [["--quick", "--case", "mlp"]]
    monkeypatch.setattr(cli, "_benchmarks_main", lambda: None)   # an installed package only
    assert main(["bench"]) == 2
    assert "runs from a source checkout" in capsys.readouterr().err
