"""The trainer's parts: metric writers read back, checkpoint management, optimisers by name
against optax, mixed precision, safetensors export."""

from __future__ import annotations

import errno
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import data as fdata
from funcbp import losses, optim
from funcbp.train import (
    CheckpointManager,
    CheckpointWriteError,
    TrainConfig,
    checkpoint,
    fit,
    load_checkpoint,
    load_safetensors,
    make_optimizer,
    make_train_step,
    read_event_file,
    save_safetensors,
)
from funcbp.train.precision import LossScaledState, LossScaleState, update_loss_scale

QUIET = dict(quiet=True, log=lambda line: None)


def init(key):
    k1, k2 = jax.random.split(key)
    return {"h": {"w": jax.random.normal(k1, (64, 16)) / 8.0, "b": jnp.zeros(16)},
            "out": {"w": jax.random.normal(k2, (16, 10)) / 4.0, "b": jnp.zeros(10)}}


def apply(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["h"]["w"] + params["h"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


@pytest.fixture(scope="module")
def digits():
    images, labels = fdata.load_digits()
    x = (images / 16.0).astype(np.float32).reshape(-1, 64)
    return x[:640], labels[:640].astype(np.int32)


# ------------------------------------------------------------------------ metric writers

@pytest.mark.slow
def test_writers_log_steps_epochs_and_histograms_and_read_back(digits, tmp_path):
    pytest.importorskip("tensorboardX")
    x, y = digits
    run = tmp_path / "run"
    result = fit(init, apply, "softmax_cross_entropy", (x, y), epochs=2, batch_size=64,
                 lr=0.1, log_every=3, histogram_every=1, clip_norm=0.5,
                 writers="jsonl,csv,tensorboard", run_dir=run, **QUIET)
    # 576 training examples: 9 steps of 64 per epoch; steps 3, 6, ..., 18 are logged.
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [3, 6, 9, 12, 15, 18]
    schedule = optim.cosine_decay_schedule(0.1, 18)
    for s in steps:  # the live learning rate of the step: the schedule at its count
        assert s["lr"] == pytest.approx(float(schedule(s["step"] - 1)), rel=1e-5)
        assert s["grad_norm"] > 0.5   # before clipping: the monitor, not the clipped norm
        assert set(s["grad_norm_layer"]) == {"h/b", "h/w", "out/b", "out/w"}
        total = np.sqrt(sum(v ** 2 for v in s["grad_norm_layer"].values()))
        assert total == pytest.approx(s["grad_norm"], rel=1e-5)
    rows = (run / "steps.csv").read_text().splitlines()
    assert rows[0] == "step,loss,accuracy,grad_norm,lr" and len(rows) == 7
    epochs = (run / "metrics.csv").read_text().splitlines()
    assert epochs[0].startswith("epoch,step,train_loss,train_accuracy,grad_norm,lr")
    assert len(epochs) == 3
    files = list((run / "tensorboard").iterdir())
    assert len(files) == 1
    events = read_event_file(files[0])
    scalars = {}
    for e in events:
        if "value" in e:
            scalars.setdefault(e["tag"], []).append((e["step"], e["value"]))
    assert [s for s, _ in scalars["train/loss"]] == [3, 6, 9, 12, 15, 18]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([s["loss"] for s in steps])
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([s["lr"] for s in steps])
    assert "grad_norm_layer/out/w" in scalars
    assert [v for _, v in scalars["epoch/val_loss"]] == pytest.approx(
        [r["val_loss"] for r in result.history])
    hist = {e["tag"]: e["histogram"] for e in events if "histogram" in e and e["step"] == 18}
    w = np.asarray(result.params["h"]["w"])
    assert hist["params/h/w"]["num"] == w.size
    assert hist["params/h/w"]["min"] == pytest.approx(w.min())
    assert hist["params/h/w"]["sum"] == pytest.approx(w.sum(), rel=1e-4, abs=1e-4)
    assert "grads/out/b" in hist


@pytest.mark.slow
def test_writers_cut_what_was_logged_after_the_checkpoint_on_resume(digits, tmp_path,
                                                                   monkeypatch):
    x, y = digits
    kwargs = dict(epochs=2, batch_size=64, lr=0.1, log_every=2, save_every_steps=4,
                  val_fraction=0.0, run_dir=tmp_path / "run", **QUIET)

    def stop(record):
        raise KeyboardInterrupt  # after epoch 1's save (step 10); steps 2..10 were logged

    with pytest.raises(KeyboardInterrupt):
        fit(init, apply, None, (x, y), callbacks=[stop], **kwargs)
    # The interrupted run logged up to step 10 and saved there; pretend it got further.
    with open(tmp_path / "run" / "steps.jsonl", "a") as f:
        f.write(json.dumps({"step": 12, "loss": 9.0}) + "\n" + '{"step": 14, "lo')
    fit(init, apply, None, (x, y), resume=True, **kwargs)
    logged = [json.loads(line)["step"]
              for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert logged == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]  # 640 examples: 10 steps an epoch
    rows = (tmp_path / "run" / "steps.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == logged


# -------------------------------------------------------------------- checkpoint manager

def test_manager_keeps_the_last_k_and_the_best(tmp_path):
    m = CheckpointManager(tmp_path, save_every_steps=5, keep_last=2, best_metric="val_accuracy")
    assert m.mode == "max" and m.should_save_step(10) and not m.should_save_step(7)
    for step in (5, 10, 15):
        m.save({"w": jnp.full(3, float(step))}, step=step, epoch=0, data_state={"batch": step})
    assert m.steps() == [10, 15]
    assert float(m.restore({"w": jnp.zeros(3)}, step=10).tree["w"][0]) == 10.0
    assert m.restore({"w": jnp.zeros(3)}).data_state == {"batch": 15}
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint of step 5"):
        m.restore(step=5)
    assert m.is_better(0.9, None) and m.is_better(0.9, 0.8) and not m.is_better(0.7, 0.8)
    assert CheckpointManager(tmp_path, best_metric="val_loss").is_better(0.7, 0.8)
    m.save_best({"w": jnp.ones(3)}, step=15, epoch=1, value=0.9)
    assert load_checkpoint(tmp_path / "best.ckpt").metadata == {"val_accuracy": 0.9}


def test_async_save_blocks_only_for_the_copy_and_reports_errors_later(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path, async_save=True)
    slow = []

    def sleepy(step, path):
        if step == "write":
            time.sleep(0.5)
            slow.append(path)

    monkeypatch.setattr(checkpoint, "_before_step", sleepy)
    start = time.perf_counter()
    m.save({"w": jnp.ones(1000)}, step=1, epoch=0)
    assert time.perf_counter() - start < 0.4 and not slow   # the write is still going on
    m.wait()
    assert slow and load_checkpoint(tmp_path / "latest.ckpt").step == 1

    def full(step, path):
        if step == "write":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "_before_step", full)
    m.save({"w": jnp.ones(1000)}, step=2, epoch=0)   # fails in the background...
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        m.wait()                                       # ...and says so here
    assert load_checkpoint(tmp_path / "latest.ckpt").step == 1   # the previous one intact


# ------------------------------------------------------------ optimisers in the trainer

OPTAX = {
    "sgd": lambda s, mask: optax.sgd(s, momentum=0.9, nesterov=True),
    "adamw": lambda s, mask: optax.adamw(s, weight_decay=0.05, mask=mask),
    "lion": lambda s, mask: optax.lion(s, weight_decay=0.01, mask=mask),
    "rmsprop": lambda s, mask: optax.rmsprop(s, centered=True),
    "adagrad": lambda s, mask: optax.adagrad(s),
    "adafactor": lambda s, mask: optax.adafactor(s, weight_decay_rate=0.01,
                                                  weight_decay_mask=mask),
}
OPTIONS = {"sgd": {}, "adamw": {"weight_decay": 0.05}, "lion": {"weight_decay": 0.01},
           "rmsprop": {"centered": True}, "adagrad": {}, "adafactor": {"weight_decay_rate": 0.01}}


@pytest.mark.parametrize("name", sorted(OPTAX))
def test_the_trainers_optimiser_is_optaxs_step_by_step(name):
    """``make_optimizer`` (monitor, clipping, the optimiser injected, no decay on biases) against
    optax's clip + alias with the same mask, 50 jitted steps of random gradients."""
    lr = 0.05 if name == "sgd" else 1e-3
    config = TrainConfig(optimizer=name, lr=lr, optimizer_options=OPTIONS[name],
                         clip_norm=1.0, schedule="warmup_cosine", epochs=5)
    ours, schedule = make_optimizer(config, steps_per_epoch=10)
    mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
    ref = optax.chain(optax.clip_by_global_norm(1.0), OPTAX[name](schedule, mask))
    params = {"dense": {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}}
    key = jax.random.key(0)
    s_ours, s_ref = ours.init(params), ref.init(params)
    step_ours = jax.jit(lambda g, s, p: ours.update(g, s, p))
    step_ref = jax.jit(lambda g, s, p: ref.update(g, s, p))
    p_ours = p_ref = params
    for t in range(50):
        k = jax.random.fold_in(key, t)
        g = {"dense": {"w": 3 * jax.random.normal(k, (3, 4)),
                       "b": 3 * jax.random.normal(jax.random.fold_in(k, 1), (4,))}}
        u_ours, s_ours = step_ours(g, s_ours, p_ours)
        u_ref, s_ref = step_ref(g, s_ref, p_ref)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
        p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, u_ref)
        assert float(optim.tree_get(s_ours, "grad_norm")) == pytest.approx(
            float(optax.tree.norm(g)), rel=1e-6)           # before clipping
        from funcbp.train.step import _read_state
        assert float(_read_state(s_ours, "learning_rate")) == pytest.approx(
            float(schedule(t)), rel=1e-5)


def test_weight_decay_skips_biases_unless_told(tmp_path):
    params = {"dense": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    for on, bias_moves in (("weights", False), ("all", True)):
        tx, _ = make_optimizer(TrainConfig(optimizer="adamw", lr=0.1, schedule="constant",
                                           optimizer_options={"weight_decay": 0.5},
                                           weight_decay_on=on), 1)
        u, _ = tx.update(zero, tx.init(params), params)
        assert float(u["dense"]["w"][0, 0]) == pytest.approx(-0.05)
        assert (float(u["dense"]["b"][0]) != 0.0) == bias_moves


# ------------------------------------------------------------------- mixed precision

def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_a_period():
    s = LossScaleState(jnp.float32(1024.0), jnp.int32(0))
    assert float(update_loss_scale(s, jnp.array(False)).scale) == 512.0
    s = LossScaleState(jnp.float32(1024.0), jnp.int32(1))
    grown = update_loss_scale(s, jnp.array(True), period=2)
    assert (float(grown.scale), int(grown.good_steps)) == (2048.0, 0)
    low = update_loss_scale(LossScaleState(jnp.float32(1.0), jnp.int32(0)), jnp.array(False))
    assert float(low.scale) == 1.0


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_mixed_precision_step_keeps_float32_master_weights(precision):
    model_params = {"w": jnp.ones((4, 3)) * 0.1, "b": jnp.zeros(3)}
    tx = optim.sgd(0.1)
    step = make_train_step(lambda p, x, key=None, train=False: x @ p["w"] + p["b"],
                           losses.softmax_cross_entropy_with_integer_labels, tx,
                           precision=precision)
    x, y = jnp.ones((8, 4)), jnp.arange(8) % 3
    state = step.init_opt_state(model_params)
    params, state, m = step(model_params, state, (x, y), jax.random.key(0))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    # The gradient through the casts is the float32 gradient to the compute dtype's precision.
    g = jax.grad(lambda p: losses.softmax_cross_entropy_with_integer_labels(
        x @ p["w"] + p["b"], y))({"w": jnp.ones((4, 3)) * 0.1, "b": jnp.zeros(3)})
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, {"w": jnp.ones((4, 3)) * 0.1,
                                                      "b": jnp.zeros(3)}, g)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=2e-3)
    if precision == "f16":
        assert isinstance(state, LossScaledState) and not bool(m["overflow"])
        # A scale so large that the scaled float16 gradient overflows: the step is skipped,
        # the scale halved, and training is not stopped (finite stays True).
        huge = LossScaledState(state.opt_state, LossScaleState(jnp.float32(2.0 ** 60),
                                                               jnp.int32(0)))
        before = jax.tree.map(jnp.copy, params)
        after, state2, m2 = step(params, huge, (x, y), jax.random.key(1))
        assert bool(m2["overflow"]) and bool(m2["finite"])
        assert float(state2.loss_scale.scale) == 2.0 ** 59
        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_bf16_digits_loss_curve_is_within_float32_seed_noise(tmp_path):
    """bf16 compute on float32 master weights trains the digits MLP like float32: its loss
    curve stays within the spread of float32 curves that differ only in their seed.

    Tolerance: at each epoch, |bf16(seed 0) - f32(seed 0)| must not exceed the largest
    difference between the float32 curves of seeds 0, 1, 2 (seed-to-seed noise: 0.036 to 0.14
    here, while bf16 stays within 0.0014 of float32), so a bf16 error bigger than the noise of
    choosing another seed fails."""
    base = dict(model="mlp", epochs=4, batch_size=64, lr=0.05, augment=False,
                writers="", **QUIET)
    curves = {}
    for precision, seed in (("f32", 0), ("f32", 1), ("f32", 2), ("bf16", 0)):
        result = fit(TrainConfig(precision=precision, seed=seed, **{
            k: v for k, v in base.items() if k not in ("quiet", "log")}),
            run_dir=tmp_path / f"{precision}-{seed}", quiet=True, log=lambda line: None)
        curves[precision, seed] = np.array([r["val_loss"] for r in result.history])
    f32 = np.stack([curves["f32", s] for s in range(3)])
    noise = f32.max(axis=0) - f32.min(axis=0)
    gap = np.abs(curves["bf16", 0] - curves["f32", 0])
    assert (gap <= noise).all(), (gap, noise)
    assert curves["bf16", 0][-1] < 0.75 * curves["bf16", 0][0]   # and it does train


# ----------------------------------------------------------------------- safetensors

@pytest.mark.slow
def test_safetensors_export_round_trips_and_names_the_layers(digits, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    x, y = digits
    result = fit(init, apply, None, (x, y), epochs=1, batch_size=128, export_safetensors=True,
                 run_dir=tmp_path / "run", **QUIET)
    path = tmp_path / "run" / "params.safetensors"
    raw = st.load_file(str(path))                      # what another tool sees
    assert sorted(raw) == ["h.b", "h.w", "out.b", "out.w"]
    np.testing.assert_array_equal(raw["h.w"], np.asarray(result.params["h"]["w"]))
    back = load_safetensors(path, like=result.params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(result.params), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="tensor 'h.w' is float32\\[64, 16\\]"):
        load_safetensors(path, like={**result.params, "h": {"w": jnp.zeros((2, 2)),
                                                            "b": jnp.zeros(16)}})


def test_safetensors_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        save_safetensors(tmp_path / "p.safetensors", {"w": jnp.ones(2)})


@pytest.mark.slow
def test_f16_run_through_fit_scales_its_loss_and_resumes_inside_an_epoch(digits, tmp_path,
                                                                         monkeypatch):
    """float16 end to end: the loss scale lives in the checkpoint's optimiser state, the
    epoch lines report it, validation runs over an iterable of batches, and a run stopped
    inside an epoch resumes bit for bit."""
    x, y = digits
    val = [(x[i: i + 64], y[i: i + 64]) for i in range(0, 128, 64)]
    kwargs = dict(epochs=2, batch_size=64, lr=0.1, precision="f16", save_every_steps=4,
                  val_fraction=0.0, validation_data=val, writers="", **QUIET)
    straight = fit(init, apply, None, (x, y), run_dir=tmp_path / "straight", **kwargs)
    record = straight.history[-1]
    assert record["loss_scale"] == 2.0 ** 15 and record["overflow_steps"] == 0
    assert "val_accuracy" in record
    assert isinstance(straight.opt_state, LossScaledState)
    original = CheckpointManager.save

    def save_then_stop(self, tree, *, step, **kw):
        original(self, tree, step=step, **kw)
        if step == 12:
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(CheckpointManager, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            fit(init, apply, None, (x, y), run_dir=tmp_path / "broken", **kwargs)
    resumed = fit(init, apply, None, (x, y), run_dir=tmp_path / "broken", resume=True,
                  **kwargs)
    for a, b in zip(jax.tree.leaves((resumed.params, resumed.opt_state)),
                    jax.tree.leaves((straight.params, straight.opt_state)), strict=True):
        np.testing.assert_array_equal(a, b)
