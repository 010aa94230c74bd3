"""Checkpoints: exact round trip, atomic writes, refusal of corrupt and mismatching files."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import nn, optim
from funcbp.train import CheckpointError, load_checkpoint, read_header, save_checkpoint


def _state(width=5, seed=0):
    model = nn.serial(nn.Dense(width), nn.relu, nn.Dense(3))
    _, params = model.init(jax.random.key(seed), (1, 4))
    tx = optim.chain(optim.clip_by_global_norm(1.0),
                     optim.sgd(optim.cosine_decay_schedule(0.1, 100), momentum=0.9))
    opt_state = tx.init(params)
    # Move the state off its initial values so a round trip that drops them would show.
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed + 1), p.shape), params)
    _, opt_state = tx.update(grads, opt_state, params)
    return {"params": params, "opt_state": opt_state}


def _assert_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact(tmp_path):
    tree = _state()
    tree["extra"] = {"half": jnp.arange(3, dtype=jnp.bfloat16), "count": jnp.int32(7)}
    key = jax.random.fold_in(jax.random.key(42), 3)
    path = save_checkpoint(tmp_path / "c" / "latest.ckpt", tree, step=123, epoch=4, key=key,
                           metadata={"note": "hi", "best": 0.25})
    template = jax.tree.map(jnp.zeros_like, tree)
    ckpt = load_checkpoint(path, like=template)
    _assert_equal(ckpt.tree, tree)
    assert (ckpt.step, ckpt.epoch, ckpt.metadata) == (123, 4, {"note": "hi", "best": 0.25})
    np.testing.assert_array_equal(jax.random.key_data(ckpt.key), jax.random.key_data(key))
    # The restored key draws the same numbers as the original.
    np.testing.assert_array_equal(jax.random.uniform(ckpt.key, (4,)),
                                  jax.random.uniform(key, (4,)))
    header = read_header(path)
    assert [leaf["path"] for leaf in header["leaves"]][:2] == ["extra/count", "extra/half"]


def test_optax_state_round_trips(tmp_path):
    params = {"w": jnp.ones((2, 2))}
    tx = optax.adam(1e-3)
    state = tx.init(params)
    save_checkpoint(tmp_path / "a.ckpt", state, step=1, epoch=0)
    _assert_equal(load_checkpoint(tmp_path / "a.ckpt", like=state).tree, state)


def _corrupt(path, how):
    raw = path.read_bytes()
    if how == "truncated_payload":
        path.write_bytes(raw[: len(raw) - 100])
    elif how == "truncated_header":
        path.write_bytes(raw[:40])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped_byte":
        i = len(raw) - 50
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :])
    elif how == "not_a_checkpoint":
        path.write_bytes(b"PK\x03\x04 some zip file")


@pytest.mark.parametrize("how, message", [
    ("truncated_payload", "truncated"),
    ("truncated_header", "truncated"),
    ("empty", "not a funcbp checkpoint"),
    ("flipped_byte", "SHA-256"),
    ("not_a_checkpoint", "not a funcbp checkpoint"),
])
def test_corrupt_checkpoint_is_refused_and_previous_kept(tmp_path, how, message):
    first, second = _state(seed=0), _state(seed=5)
    path = tmp_path / "latest.ckpt"
    save_checkpoint(path, first, step=10, epoch=1, keep_previous=True)
    save_checkpoint(path, second, step=20, epoch=2, keep_previous=True)
    _corrupt(path, how)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path, like=first)
    assert str(path) in str(err.value)
    previous = load_checkpoint(tmp_path / "latest.previous.ckpt", like=first)
    assert previous.step == 10
    _assert_equal(previous.tree, first)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file") as err:
        load_checkpoint(tmp_path / "nope.ckpt", like={})
    assert "nope.ckpt" in str(err.value)


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail_at):
    first, second = _state(seed=0), _state(seed=5)
    path = tmp_path / "latest.ckpt"
    save_checkpoint(path, first, step=10, epoch=1)

    def crash(*args, **kwargs):
        raise OSError("simulated crash: disk full")

    monkeypatch.setattr(os, fail_at, crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, second, step=20, epoch=2)
    monkeypatch.undo()
    ckpt = load_checkpoint(path, like=first)
    assert ckpt.step == 10
    _assert_equal(ckpt.tree, first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.ckpt"]  # no temp file left


def test_mismatching_shape_names_the_leaf(tmp_path):
    save_checkpoint(tmp_path / "c.ckpt", _state(width=5), step=1, epoch=1)
    with pytest.raises(CheckpointError, match=r"leaf 'params/dense_0/b' is float32\[5\] in "
                                              r"the checkpoint but float32\[6\]") as err:
        load_checkpoint(tmp_path / "c.ckpt", like=_state(width=6))
    assert "also: params/dense_0/w, params/dense_1/w, opt_state/" in str(err.value)


def test_missing_and_extra_leaves_are_named(tmp_path):
    tree = {"params": {"dense_0": {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}}}
    save_checkpoint(tmp_path / "c.ckpt", tree, step=1, epoch=1)
    bigger = {"params": {**tree["params"], "dense_1": {"w": jnp.ones((2, 2))}}}
    with pytest.raises(CheckpointError, match="'params/dense_1/w' of the model is missing"):
        load_checkpoint(tmp_path / "c.ckpt", like=bigger)
    smaller = {"params": {"dense_0": {"w": jnp.ones((2, 2))}}}
    with pytest.raises(CheckpointError, match="'params/dense_0/b' in the checkpoint is not"):
        load_checkpoint(tmp_path / "c.ckpt", like=smaller)


def test_dtype_mismatch_is_named(tmp_path):
    save_checkpoint(tmp_path / "c.ckpt", {"w": jnp.ones(3, jnp.float32)}, step=1, epoch=1)
    with pytest.raises(CheckpointError, match=r"'w' is float32\[3\] .* but float16\[3\]"):
        load_checkpoint(tmp_path / "c.ckpt", like={"w": jnp.ones(3, jnp.float16)})


def test_data_state_and_loading_without_a_template(tmp_path):
    """What a mid-epoch resume and a parameter export need (issue 17): the data order's state,
    and the leaves by path without building the model first."""
    tree = _state()
    state = {"epoch": 3, "batch": 17, "permutation_key": [1, 2]}
    path = save_checkpoint(tmp_path / "c.ckpt", tree, step=5, epoch=3, data_state=state)
    ckpt = load_checkpoint(path)
    assert ckpt.data_state == state and ckpt.format == 2
    flat = {k: np.asarray(v) for k, v in ckpt.tree.items()}
    np.testing.assert_array_equal(flat["params/dense_0/w"], tree["params"]["dense_0"]["w"])
    assert len(flat) == len(jax.tree.leaves(tree))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "d.ckpt", tree, step=1, epoch=1, metadata={"f": object()})
    assert not (tmp_path / "d.ckpt").exists()
