"""serial/parallel: parameter naming, key splitting, state plumbing and error messages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import nn


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_serial_names_by_kind_and_matches_manual_composition():
    model = nn.serial(nn.Dense(5), nn.relu, nn.Dense(4), nn.Tanh(), nn.Dense(2))
    out_shape, params = model.init(jax.random.key(0), (1, 3))
    assert out_shape == (1, 2)
    assert sorted(params) == ["dense_0", "dense_1", "dense_2"]
    x = _x((6, 3))
    p = params
    h = jnp.maximum(x @ p["dense_0"]["w"] + p["dense_0"]["b"], 0)
    h = jnp.tanh(h @ p["dense_1"]["w"] + p["dense_1"]["b"])
    ref = h @ p["dense_2"]["w"] + p["dense_2"]["b"]
    np.testing.assert_allclose(model.apply(params, x), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), ref, rtol=1e-6, atol=1e-6)


def test_explicit_names_and_nesting():
    block = nn.serial(nn.Conv2D(3, 3), nn.relu, name="block")
    model = nn.serial(("stem", nn.Conv2D(4, 3)), block, block, nn.Flatten(),
                      ("head", nn.Dense(2)))
    _, params = model.init(jax.random.key(0), (1, 5, 5, 2))
    assert sorted(params) == ["block_0", "block_1", "head", "stem"]
    assert sorted(params["block_1"]) == ["conv2d_0"]
    assert params["block_1"]["conv2d_0"]["w"].shape == (3, 3, 3, 3)
    assert model.apply(params, _x((2, 5, 5, 2))).shape == (2, 2)


def test_duplicate_explicit_names_rejected():
    with pytest.raises(ValueError, match=r"\['a'\]"):
        nn.serial(("a", nn.Dense(2)), ("a", nn.Dense(2)))


def test_init_splits_keys_so_layers_differ():
    _, params = nn.serial(nn.Dense(4), nn.Dense(4)).init(jax.random.key(0), (1, 4))
    assert not np.allclose(params["dense_0"]["w"], params["dense_1"]["w"])


def test_serial_splits_apply_key_per_layer():
    model = nn.serial(nn.Dropout(0.5), nn.Dropout(0.5))
    x = jnp.ones((4, 256))
    key = jax.random.key(7)
    k0, k1 = jax.random.split(key)
    d = nn.Dropout(0.5)
    ref = d.apply({}, d.apply({}, x, key=k0, train=True), key=k1, train=True)
    np.testing.assert_array_equal(model.apply({}, x, key=key, train=True), ref)
    np.testing.assert_array_equal(model.apply({}, x, train=False), x)


def test_parallel_fanout_residual():
    res = nn.serial(nn.FanOut(2), nn.parallel(nn.Dense(3), nn.Identity()), nn.FanInSum())
    _, params = res.init(jax.random.key(0), (1, 3))
    assert sorted(params) == ["parallel_0"] and sorted(params["parallel_0"]) == ["dense_0"]
    x = _x((4, 3))
    p = params["parallel_0"]["dense_0"]
    np.testing.assert_allclose(res.apply(params, x), x @ p["w"] + p["b"] + x, rtol=1e-6)
    cat = nn.serial(nn.FanOut(2), nn.parallel(nn.Dense(2), nn.Dense(5)), nn.FanInConcat())
    out_shape, params = cat.init(jax.random.key(0), (1, 3))
    assert out_shape == (1, 7) and cat.apply(params, x).shape == (4, 7)


def test_stateful_serial_init_state_and_apply():
    model = nn.serial(nn.Conv2D(3, 3), nn.BatchNorm(0.5), nn.relu, nn.Flatten(),
                      nn.Dense(4), nn.BatchNorm(0.5), nn.Dense(2))
    assert nn.is_stateful(model) and not nn.is_stateful(nn.Dense(2))
    assert not nn.is_stateful(lambda params, x: x)
    _, params = model.init(jax.random.key(0), (1, 4, 4, 2))
    state = model.init_state((1, 4, 4, 2))
    assert jax.tree.map(jnp.shape, state) == {
        "batchnorm_0": {"mean": (3,), "var": (3,)}, "batchnorm_1": {"mean": (4,), "var": (4,)}}
    x = _x((5, 4, 4, 2))
    y, new = jax.jit(lambda p, x, s: model.apply(p, x, train=True, state=s))(params, x, state)
    assert y.shape == (5, 2) and jax.tree.structure(new) == jax.tree.structure(state)
    assert not np.allclose(new["batchnorm_0"]["mean"], 0.0)
    # the updated state is what a BatchNorm alone computes on the same input
    conv_p = params["conv2d_0"]
    h = nn.Conv2D(3, 3).apply(conv_p, x)
    _, bn_state = nn.BatchNorm(0.5).apply(params["batchnorm_0"], h, train=True,
                                          state=state["batchnorm_0"])
    np.testing.assert_allclose(new["batchnorm_0"]["mean"], bn_state["mean"], rtol=1e-5)
    # train without state returns y alone; eval needs state
    np.testing.assert_allclose(model.apply(params, x, train=True), y, rtol=1e-5, atol=1e-6)
    y_eval, same = model.apply(params, x, state=new)
    assert y_eval.shape == (5, 2)
    with pytest.raises(nn.LayerError, match="batchnorm_0.*state="):
        model.apply(params, x)


def test_stateless_models_have_empty_state():
    model = nn.serial(nn.Dense(2), nn.relu)
    assert model.init_state((1, 3)) == {} and not model.stateful


# ------------------------------------------------------------------------------------ errors


def _mlp():
    model = nn.serial(nn.Dense(4), nn.relu, ("head", nn.serial(nn.Dense(3), nn.Dense(2))))
    _, params = model.init(jax.random.key(0), (1, 5))
    return model, params


def test_wrong_input_shape_names_layer_path_and_both_shapes():
    model, params = _mlp()
    with pytest.raises(nn.ShapeError) as err:
        model.apply(params, jnp.ones((2, 6)))
    msg = str(err.value)
    assert "'dense_0/w'" in msg and "(2, 6)" in msg and "(5, 4)" in msg
    assert isinstance(err.value, ValueError) and err.value.path == "dense_0"


def test_wrong_param_shape_deep_in_the_tree():
    model, params = _mlp()
    params["head"]["dense_1"]["w"] = jnp.ones((3, 7))
    with pytest.raises(nn.ShapeError, match=r"'head/dense_1/w' has shape \(3, 7\)"):
        model.apply(params, jnp.ones((2, 5)))
    _, params = _mlp()
    params["head"]["dense_0"]["b"] = jnp.ones(4)
    with pytest.raises(nn.ShapeError, match=r"'head/dense_0/b' has shape \(4,\), expected \(3,\)"):
        model.apply(params, jnp.ones((2, 5)))


def test_missing_and_extra_keys():
    model, params = _mlp()
    del params["head"]["dense_1"]
    params["head"]["dense_9"] = {}
    with pytest.raises(nn.ParamsError, match=r"head: .*missing key\(s\) \['dense_1'\].*"
                                             r"unexpected key\(s\) \['dense_9'\]"):
        model.apply(params, jnp.ones((2, 5)))
    _, params = _mlp()
    del params["dense_0"]["b"]
    with pytest.raises(nn.ParamsError, match=r"dense_0: .*missing key\(s\) \['b'\]"):
        model.apply(params, jnp.ones((2, 5)))


def test_wrong_dtypes():
    model, params = _mlp()
    with pytest.raises(nn.DTypeError, match="dense_0.*int32"):
        model.apply(params, jnp.ones((2, 5), jnp.int32))
    emb = nn.serial(nn.Embedding(5, 3))
    _, params = emb.init(jax.random.key(0), (1, 2))
    with pytest.raises(nn.DTypeError, match="embedding_0.*float32"):
        emb.apply(params, jnp.ones((1, 2)))


def test_conv_shape_errors():
    model = nn.serial(nn.Conv2D(4, 3), nn.MaxPool2D(2))
    _, params = model.init(jax.random.key(0), (1, 6, 6, 3))
    with pytest.raises(nn.ShapeError, match=r"conv2d_0.*\(2, 6, 6, 2\).*'conv2d_0/w'"):
        model.apply(params, jnp.ones((2, 6, 6, 2)))
    with pytest.raises(nn.ShapeError, match=r"\(6, 6, 3\)"):
        model.apply(params, jnp.ones((6, 6, 3)))


def test_dropout_without_key_in_training():
    model = nn.serial(nn.Dense(3), nn.Dropout(0.1))
    _, params = model.init(jax.random.key(0), (1, 3))
    with pytest.raises(nn.KeyRequiredError, match="dropout_0.*key="):
        model.apply(params, jnp.ones((2, 3)), train=True)


def test_checks_cost_nothing_under_jit():
    model, params = _mlp()
    jaxpr = jax.make_jaxpr(lambda p, x: model.apply(p, x))(params, jnp.ones((2, 5)))
    prims = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
    assert prims <= {"dot_general", "add", "broadcast_in_dim", "custom_jvp_call", "pjit"}, prims
