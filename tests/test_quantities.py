"""funcbp.quantities against brute-force jax references (float64, rtol 1e-7).

References are independent of funcbp's walk: ``jax.vmap(jax.grad)`` of each example's scaled
loss for first-order quantities, ``diag(J^T H_f J)`` from ``jax.jacrev`` and ``jax.hessian`` of
the loss w.r.t. the output for the GGN, ``diag(jax.hessian)`` of the total loss, and the
Kronecker factors from their definitions with jax Jacobians.
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp
from funcbp.autodiff.extend import BatchMixingError, HessianUnsupportedError

FIRST = ("grad", "batch_grad", "batch_l2", "sum_grad_squared", "variance")


def _keys(n, seed=0):
    return list(jax.random.split(jax.random.key(seed), n))


# --- models: (apply, params, x, y, loss), built under float64 ------------------------------------

def mlp():
    k = _keys(6)
    B, D, H, C = 5, 4, 3, 3
    params = {"l1": {"w": jax.random.normal(k[0], (D, H)), "b": jax.random.normal(k[1], (H,))},
              "l2": {"w": jax.random.normal(k[2], (H, C)), "b": jax.random.normal(k[5], (C,))}}

    def apply(p, x):
        h = jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"])
        return h @ p["l2"]["w"] + p["l2"]["b"]

    return apply, params, jax.random.normal(k[3], (B, D)), \
        jax.random.randint(k[4], (B,), 0, C), "softmax_cross_entropy"


def cnn():
    k = _keys(6, 1)
    B = 3
    params = {"conv": {"w": 0.5 * jax.random.normal(k[0], (3, 3, 2, 3)),
                       "b": 0.1 * jax.random.normal(k[1], (3,))},
              "dense": {"w": 0.3 * jax.random.normal(k[2], (12, 4)), "b": jnp.zeros(4)}}

    def apply(p, x):  # strides, uneven padding and kernel dilation: the unfolding honours all
        h = lax.conv_general_dilated(x, p["conv"]["w"], (2, 1), ((1, 1), (0, 2)),
                                     rhs_dilation=(1, 2),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.sigmoid(h + p["conv"]["b"])                        # (B, 3, 3, 3)
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 1, 1, 1), "VALID")
        h = h.reshape(h.shape[0], -1)
        return h @ p["dense"]["w"] + p["dense"]["b"]

    return apply, params, jax.random.normal(k[3], (B, 5, 5, 2)), \
        jax.random.randint(k[4], (B,), 0, 4), "softmax_cross_entropy"


def resnet():
    """Normalisation-free residual block, MSE loss with two outputs."""
    k = _keys(6, 2)
    B, D, H = 4, 3, 4
    params = {"inp": {"w": jax.random.normal(k[0], (D, H))},
              "block": {"w": 0.5 * jax.random.normal(k[1], (H, H)), "b": jnp.ones(H) * 0.1},
              "out": {"w": jax.random.normal(k[2], (H, 2))}}

    def apply(p, x):
        h = x @ p["inp"]["w"]
        h = h + jnp.tanh(h @ p["block"]["w"] + p["block"]["b"])
        return (p["out"]["w"].T @ h.T).T       # the weight as dot_general's left operand

    return apply, params, jax.random.normal(k[3], (B, D)), \
        jax.random.normal(k[4], (B, 2)), "mse"


def embedding():
    """Embedding table gathered by batched token ids; sigmoid BCE on two logits."""
    k = _keys(5, 3)
    B, T, V, E = 4, 3, 6, 3
    params = {"embed": jax.random.normal(k[0], (V, E)),
              "head": {"w": jax.random.normal(k[1], (E, 2)), "b": jnp.zeros(2)}}

    def apply(p, ids):
        h = jnp.tanh(p["embed"][ids])                     # (B, T, E)
        return jnp.mean(h, axis=1) @ p["head"]["w"] + p["head"]["b"]

    return apply, params, jax.random.randint(k[2], (B, T), 0, V), \
        jax.random.bernoulli(k[3], 0.5, (B, 2)).astype(jnp.float64), \
        "sigmoid_binary_cross_entropy"


def rnn():
    """An Elman recurrence with lax.scan: the weights are shared across steps."""
    k = _keys(7, 4)
    B, T, D, H, C = 3, 4, 2, 3, 2
    params = {"wx": jax.random.normal(k[0], (D, H)), "wh": 0.5 * jax.random.normal(k[1], (H, H)),
              "b": 0.1 * jax.random.normal(k[2], (H,)), "out": jax.random.normal(k[3], (H, C))}

    def apply(p, x):
        def step(h, xt):
            h = jnp.tanh(xt @ p["wx"] + h @ p["wh"] + p["b"])
            return h, None
        h, _ = lax.scan(step, jnp.zeros((x.shape[0], H)), jnp.swapaxes(x, 0, 1))
        return h @ p["out"]

    return apply, params, jax.random.normal(k[4], (B, T, D)), \
        jax.random.randint(k[5], (B,), 0, C), "softmax_cross_entropy"


def jitted():
    """Layers inside jax.jit (a nested call), a sequence axis in the dense layer (T > 1)."""
    k = _keys(6, 5)
    B, T, D, H, C = 3, 4, 3, 5, 3

    @jax.jit
    def dense(w, b, x):
        return x @ w + b

    params = {"l1": {"w": jax.random.normal(k[0], (D, H)), "b": jnp.zeros(H)},
              "l2": {"w": jax.random.normal(k[1], (H, C)), "b": jnp.zeros(C)}}

    def apply(p, x):
        h = jax.nn.softplus(dense(p["l1"]["w"], p["l1"]["b"], x))   # (B, T, H)
        return dense(p["l2"]["w"], p["l2"]["b"], h.sum(1))

    return apply, params, jax.random.normal(k[2], (B, T, D)), \
        jax.random.randint(k[3], (B,), 0, C), "softmax_cross_entropy"


def remat_layernorm():
    """jax.checkpoint around a gelu layer, a custom_vjp function, LayerNorm (a mean over each
    example's features, not over the batch), a per-feature gain."""
    k = _keys(5, 6)

    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, ct: (2 * ct,))
    params = {"w1": jax.random.normal(k[0], (3, 5)), "w2": jax.random.normal(k[1], (5, 2)),
              "g": 1.2 * jnp.ones(5)}

    def apply(p, x):
        h = jax.checkpoint(lambda x, w: jax.nn.gelu(x @ w))(x, p["w1"])
        h = double(h) * p["g"]
        h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-5)
        return h @ p["w2"]

    return apply, params, jax.random.normal(k[2], (4, 3)), \
        jax.random.randint(k[3], (4,), 0, 2), "softmax_cross_entropy"


MODELS = {"mlp": mlp, "cnn": cnn, "resnet": resnet, "embedding": embedding, "rnn": rnn,
          "jit": jitted, "remat_layernorm": remat_layernorm}
#: which quantities each model is checked for (diag_hessian is refused for the recurrence)
SECOND = {"mlp": ("diag_ggn", "diag_hessian"), "cnn": ("diag_ggn", "diag_hessian"),
          "resnet": ("diag_ggn", "diag_hessian"), "embedding": ("diag_ggn", "diag_hessian"),
          "rnn": ("diag_ggn",), "jit": ("diag_ggn", "diag_hessian"),
          "remat_layernorm": ("diag_ggn",)}


# --- references -------------------------------------------------------------------------------

def _total_loss(loss, f, y, reduction):
    if loss == "softmax_cross_entropy":
        terms = -jnp.take_along_axis(jax.nn.log_softmax(f), y[:, None], 1)
    elif loss == "mse":
        terms = (f - y) ** 2
    else:
        terms = jnp.maximum(f, 0) - f * y + jnp.log1p(jnp.exp(-jnp.abs(f)))
    return jnp.mean(terms) if reduction == "mean" else jnp.sum(terms)


def _references(apply, params, x, y, loss, reduction="mean"):
    B = jax.tree.leaves(x)[0].shape[0]
    f0 = apply(params, x)
    count = {"softmax_cross_entropy": B}.get(loss, f0.size) if reduction == "mean" else 1

    def example_loss(p, xi, yi):
        f = apply(p, jax.tree.map(lambda v: v[None], xi))
        return _total_loss(loss, f, yi[None], "sum") / count

    bg = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, x, y)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    J = jax.jacrev(lambda v: apply(unravel(v), x))(flat).reshape(f0.size, -1)
    Hf = jax.hessian(lambda f: _total_loss(loss, f, y, reduction))(f0).reshape(f0.size, f0.size)
    ggn = jnp.einsum("ap,ab,bp->p", J, Hf, J)
    hess = jnp.diag(jax.hessian(lambda v: _total_loss(loss, apply(unravel(v), x), y,
                                                       reduction))(flat))
    sq = jax.tree.map(lambda g: g * g, bg)
    return {
        "grad": jax.tree.map(lambda g: g.sum(0), bg),
        "batch_grad": bg,
        "batch_l2": jax.tree.map(lambda g: g.reshape(B, -1).sum(1), sq),
        "sum_grad_squared": jax.tree.map(lambda g: g.sum(0), sq),
        "variance": jax.tree.map(lambda s, g: s.sum(0) / B - (g.sum(0) / B) ** 2, sq, bg),
        "diag_ggn": unravel(ggn),
        "diag_hessian": unravel(hess),
    }


def _close(got, ref, rtol, what):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(ref),
                            strict=True):
        scale = float(jnp.max(jnp.abs(b))) + 1e-300
        err = float(jnp.max(jnp.abs(a - b))) / scale
        assert a.shape == b.shape, f"{what}{jax.tree_util.keystr(path)}: {a.shape} vs {b.shape}"
        assert err < rtol, f"{what}{jax.tree_util.keystr(path)}: relative error {err:.2e}"


LIGHT = ("grad", "batch_l2", "variance", "diag_ggn")


@pytest.mark.parametrize("name", list(MODELS))
def test_quantities_match_jax_float64(name):
    """Under jax.jit: every quantity with batch_grad asked for (everything per example), and the
    light set alone (dense and conv weights take the reduced path): same numbers."""
    with jax.enable_x64(True):
        apply, params, x, y, loss = MODELS[name]()
        which = FIRST + SECOND[name]
        report: dict = {}

        @jax.jit
        def run(params, x, y):
            full = funcbp.quantities(apply, params, x, y, loss=loss, which=which)
            light = funcbp.quantities(apply, params, x, y, loss=loss, which=LIGHT, report=report)
            return full, light, _references(apply, params, x, y, loss)

        full, light, ref = run(params, x, y)
        for q in which:
            _close(full[q], ref[q], 1e-7, f"{name}/{q}")
        for q in LIGHT:
            _close(light[q], ref[q], 1e-7, f"{name}/{q} (reduced)")
    reduced = {k: v for k, v in report["paths"].items() if v.startswith(("dense", "conv"))}
    if name in ("mlp", "cnn"):
        weight = "['l2']['w']" if name == "mlp" else "['conv']['w']"
        assert reduced.get(weight) in ("dense: outer", "conv: unfold", "conv: gram"), reduced
    if name == "rnn":
        assert report["paths"]["['wh']"] == "per-example", report["paths"]
    if name == "embedding":  # repeated ids in an example (3, 3) share a row: the mask counts them
        assert report["paths"]["['embed']"] == "embedding: gram", report["paths"]


def test_eager():
    """Without jax.jit (op by op): the per-example path and the reduced path."""
    with jax.enable_x64(True):
        apply, params, x, y, loss = mlp()
        got = funcbp.quantities(apply, params, x, y, loss=loss, which=("batch_grad",))
        light = funcbp.quantities(apply, params, x, y, loss=loss, which=("batch_l2",))

        def example_loss(p, xi, yi):
            return _total_loss(loss, apply(p, xi[None]), yi[None], "sum") / x.shape[0]

        ref = jax.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0)))(params, x, y)
        _close(got["batch_grad"], ref, 1e-7, "eager/batch_grad")
        _close(light["batch_l2"], jax.tree.map(lambda g: (g * g).reshape(5, -1).sum(1), ref),
               1e-7, "eager/batch_l2")


def test_reduction_sum_and_float32():
    with jax.enable_x64(True):
        apply, params, x, y, loss = mlp()
        ref = jax.jit(lambda p, x, y: _references(apply, p, x, y, loss, reduction="sum"))(
            params, x, y)
        got = jax.jit(lambda p, x, y: funcbp.quantities(
            apply, p, x, y, loss=loss, reduction="sum",
            which=("batch_grad", "diag_ggn", "diag_hessian")))(params, x, y)
        for q in ("batch_grad", "diag_ggn", "diag_hessian"):
            _close(got[q], ref[q], 1e-7, f"sum/{q}")
    p32, x32 = jax.tree.map(lambda v: np.asarray(v, np.float32), (params, x))
    y32 = np.asarray(y, np.int32)
    ref32 = jax.tree.map(lambda v: np.asarray(v, np.float32), ref)
    got = jax.jit(lambda p, x, y: funcbp.quantities(
        apply, p, x, y, loss=loss, reduction="sum", which=("batch_l2", "diag_ggn")))(
            p32, x32, y32)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(got))
    _close(got["diag_ggn"], ref32["diag_ggn"], 1e-5, "float32/diag_ggn")
    _close(got["batch_l2"], jax.tree.map(lambda g: (g * g).reshape(5, -1).sum(1),
                                         ref32["batch_grad"]), 1e-5, "float32/batch_l2")


def test_kfac_factors_from_their_definitions():
    """A = sum_i a_i a_i^T / B (layer input), G = sum_{m,i} d_mi d_mi^T with d the sampled loss
    gradients pulled back to the layer output by jax Jacobians."""
    with jax.enable_x64(True):
        apply, params, x, y, loss = mlp()
        key, M = jax.random.key(7), 3
        got = funcbp.quantities(apply, params, x, y, loss=loss, which=("kfac",), key=key,
                                mc_samples=M)["kfac"]
        B = x.shape[0]
        f = apply(params, x)
        S = funcbp.quantities.LOSSES[loss].sample(key, f, y, 1.0 / B, M)   # (M, B, C)
        h = jnp.tanh(x @ params["l1"]["w"] + params["l1"]["b"])
        # output of layer 1 -> logits, per example
        J1 = jax.vmap(jax.jacrev(lambda z: jnp.tanh(z) @ params["l2"]["w"]))(
            x @ params["l1"]["w"] + params["l1"]["b"])                       # (B, C, H)
        d1 = jnp.einsum("mbc,bch->mbh", S, J1)
        expect = {"l1": (x.T @ x / B, jnp.einsum("mbh,mbk->hk", d1, d1)),
                  "l2": (h.T @ h / B, jnp.einsum("mbc,mbd->cd", S, S))}
        for layer in ("l1", "l2"):
            assert got[layer]["b"] is None
            for a, b in zip(got[layer]["w"], expect[layer], strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_conv_kfac_input_factor_is_the_unfolded_input_second_moment():
    with jax.enable_x64(True):
        apply, params, x, y, loss = cnn()
        got = jax.jit(lambda p, x, y: funcbp.quantities(
            apply, p, x, y, loss=loss, which=("kfac",), key=jax.random.key(0)))(
                params, x, y)["kfac"]["conv"]["w"]
        # patches by hand: output (i, j) reads xp[2i + ki, j + 2 kj], in HWIO's (kh, kw, C)
        xp = jnp.pad(x, ((0, 0), (1, 1), (0, 2), (0, 0)))
        patches = jnp.stack([jnp.stack([xp[:, ki:ki + 5:2, 2 * kj:2 * kj + 3, :]
                                        for kj in range(3)], 3) for ki in range(3)], 3)
        patches = patches.reshape(-1, 18)
        np.testing.assert_allclose(got[0], patches.T @ patches / x.shape[0], rtol=1e-10)
        assert got[1].shape == (3, 3)


def test_diag_ggn_mc_converges_to_diag_ggn_at_the_right_scale():
    """The Monte-Carlo estimate's error shrinks like 1/sqrt(M); a factor-2 scaling (or a
    missing 1/sqrt(M)) would leave an error of order one, which the bound catches."""
    with jax.enable_x64(True):
        apply, params, x, y, loss = mlp()
        exact = jax.flatten_util.ravel_pytree(funcbp.quantities(
            apply, params, x, y, loss=loss, which=("diag_ggn",))["diag_ggn"])[0]
        errs = {}
        for M in (16, 4096):
            est = jax.flatten_util.ravel_pytree(funcbp.quantities(
                apply, params, x, y, loss=loss, which=("diag_ggn_mc",), key=jax.random.key(3),
                mc_samples=M)["diag_ggn_mc"])[0]
            errs[M] = float(jnp.linalg.norm(est - exact) / jnp.linalg.norm(exact))
        assert errs[4096] < 0.08, errs
        # 1/sqrt(M) predicts a ratio of 16; a scale off by 2 (or 1/2) would leave a relative
        # error of 1 (or 0.5) at any M, far above the 0.08 bound
        assert errs[16] / errs[4096] > 4, errs


@pytest.mark.parametrize("loss", ["mse", "sigmoid_binary_cross_entropy"])
def test_mc_sampling_scale_of_each_loss(loss):
    """E[S S^T] equals the loss Hessian w.r.t. the output (jax.hessian), per loss."""
    with jax.enable_x64(True):
        f = jax.random.normal(jax.random.key(0), (2, 3))
        y = jax.random.bernoulli(jax.random.key(1), 0.5, (2, 3)).astype(f.dtype)
        table = funcbp.quantities.LOSSES[loss]
        S = table.sample(jax.random.key(2), f, y, 1 / 6, 20000).reshape(20000, 6)
        H = jax.hessian(lambda f: _total_loss(loss, f, y, "mean"))(f).reshape(6, 6)
        np.testing.assert_allclose(S.T @ S, H, atol=0.04 * float(jnp.max(jnp.abs(H))))
        # the exact columns of every example share the column axis: blocks per example
        exact = table.sqrt(f, y, 1 / 6)
        blocks = jnp.einsum("kbi,kbj->bij", exact, exact)
        H4 = H.reshape(2, 3, 2, 3)
        np.testing.assert_allclose(blocks, jnp.stack([H4[0, :, 0], H4[1, :, 1]]), rtol=1e-10)
        np.testing.assert_allclose(H4[0, :, 1], 0, atol=1e-14)


def test_batchnorm_in_training_mode_is_refused_naming_the_primitive():
    k = _keys(3)
    params = {"w": jax.random.normal(k[0], (3, 4)), "out": jax.random.normal(k[1], (4, 2))}

    def apply(p, x):
        h = x @ p["w"]
        h = (h - jnp.mean(h, axis=0)) / jnp.sqrt(jnp.var(h, axis=0) + 1e-5)   # batch statistics
        return h @ p["out"]

    x, y = jax.random.normal(k[2], (5, 3)), jnp.array([0, 1, 0, 1, 1])
    with pytest.raises(BatchMixingError, match=r"reduce_sum.*test_quantities\.py"):
        funcbp.quantities(apply, params, x, y, loss="softmax_cross_entropy", which="batch_l2")
    got = funcbp.quantities(apply, params, x, y, loss="softmax_cross_entropy", which="grad")
    ref = jax.grad(lambda p: _total_loss("softmax_cross_entropy", apply(p, x), y, "mean"))(params)
    _close(got["grad"], ref, 1e-5, "batchnorm/grad")


def test_diag_hessian_refuses_a_weight_used_twice():
    w = jax.random.normal(jax.random.key(0), (3, 3))

    def apply(p, x):  # the same weight in two layers: cross terms reach the diagonal
        return jnp.tanh(x @ p["w"]) @ p["w"]

    x, y = jnp.ones((2, 3)), jnp.array([0, 1])
    with pytest.raises(HessianUnsupportedError, match="dot_general.*same parameter"):
        funcbp.quantities(apply, {"w": w}, x, y, loss="softmax_cross_entropy",
                          which="diag_hessian")
    # the GGN has no such terms: still exact, through the per-example path
    report: dict = {}

    @jax.jit
    def both(w):
        got = funcbp.quantities(apply, {"w": w}, x, y, loss="softmax_cross_entropy",
                                which="diag_ggn", report=report)["diag_ggn"]["w"]
        J = jax.jacrev(lambda v: apply({"w": v}, x))(w).reshape(6, 9)
        Hf = jax.hessian(lambda f: _total_loss("softmax_cross_entropy", f, y, "mean"))(
            apply({"w": w}, x)).reshape(6, 6)
        return got.reshape(-1), jnp.einsum("ap,ab,bp->p", J, Hf, J)

    np.testing.assert_allclose(*both(w), rtol=1e-5)
    assert report["paths"]["['w']"] == "per-example"


def test_diag_hessian_refuses_a_recurrence():
    apply, params, x, y, loss = rnn()
    with pytest.raises(HessianUnsupportedError, match="scan"):
        funcbp.quantities(apply, params, x, y, loss=loss, which="diag_hessian")


def test_a_custom_vjp_taking_a_parameter_is_refused_per_example():
    @jax.custom_vjp
    def scale(x, g):
        return x * g

    scale.defvjp(lambda x, g: (x * g, (x, g)), lambda r, ct: (ct * r[1], jnp.sum(ct * r[0], 0)))
    params = {"g": jnp.ones(3)}
    x, y = jnp.ones((2, 3)), jnp.array([0, 1])
    with pytest.raises(NotImplementedError, match="custom_vjp.*takes a parameter"):
        funcbp.quantities(lambda p, x: scale(x, p["g"]), params, x, y,
                          loss="softmax_cross_entropy", which="batch_l2")
    got = funcbp.quantities(lambda p, x: scale(x, p["g"]), params, x, y,
                            loss="softmax_cross_entropy", which="grad")["grad"]["g"]
    ref = jax.grad(lambda p: _total_loss("softmax_cross_entropy", scale(x, p["g"]), y,
                                         "mean"))(params)["g"]
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_bad_arguments_are_named():
    apply, params, x, y, loss = mlp()
    with pytest.raises(ValueError, match="unknown quantity"):
        funcbp.quantities(apply, params, x, y, loss=loss, which="hessian")
    with pytest.raises(ValueError, match="key"):
        funcbp.quantities(apply, params, x, y, loss=loss, which="kfac")
    with pytest.raises(ValueError, match="unknown loss"):
        funcbp.quantities(apply, params, x, y, loss="hinge", which="grad")


def test_summarize_reports_snr_and_percentiles(tmp_path):
    apply, params, x, y, loss = mlp()
    q = funcbp.quantities(apply, params, x, y, loss=loss, which=("grad", "batch_l2", "variance"))
    s = funcbp.quantities.summarize(q)
    bg = funcbp.quantities(apply, params, x, y, loss=loss, which="batch_grad")["batch_grad"]
    g1 = jnp.concatenate([bg["l1"]["w"].reshape(5, -1), bg["l1"]["b"]], 1)
    mean = g1.mean(0)
    snr = float(mean @ mean / jnp.sum(jnp.var(g1, axis=0)))
    assert s["l1/snr"] == pytest.approx(snr, rel=1e-4)
    norms = jnp.linalg.norm(g1, axis=1)
    assert s["l1/norm_p50"] == pytest.approx(float(jnp.median(norms)), rel=1e-4)
    path = funcbp.quantities.plot_summary([dict(s, step=0), dict(s, step=1)],
                                          str(tmp_path / "q.png"))
    assert (tmp_path / "q.png").stat().st_size > 1000 and path.endswith("q.png")
