"""funcbp.quantities against BackPACK on the same weights (float32, rtol 1e-4).

Skipped where torch or backpack-for-pytorch is not importable; the benchmark environment has
both (``pip install torch==2.13.0 backpack-for-pytorch``). The quantities BackPACK computes
deterministically are compared leaf by leaf (weights transposed to PyTorch's layouts); KFAC's
input factor too (its output factor and DiagGGNMC depend on each library's random labels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcbp

# PyTorch warns that its backward hooks fire on module outputs (BackPACK's design)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

torch = pytest.importorskip("torch")
backpack = pytest.importorskip("backpack")
from backpack import extensions as ext  # noqa: E402

PAIRS = {  # funcbp name -> (BackPACK extension, attribute it fills)
    "grad": (None, "grad"),
    "batch_grad": (ext.BatchGrad, "grad_batch"),
    "batch_l2": (ext.BatchL2Grad, "batch_l2"),
    "sum_grad_squared": (ext.SumGradSquared, "sum_grad_squared"),
    "variance": (ext.Variance, "variance"),
    "diag_ggn": (ext.DiagGGNExact, "diag_ggn_exact"),
    "diag_hessian": (ext.DiagHessian, "diag_h"),
}


def _mlp(key):
    k = jax.random.split(key, 4)
    params = {"l1": {"w": 0.5 * jax.random.normal(k[0], (6, 5)), "b": 0.1 * jnp.ones(5)},
              "l2": {"w": 0.5 * jax.random.normal(k[1], (5, 3)), "b": jnp.zeros(3)}}

    def apply(p, x):
        return jax.nn.sigmoid(x @ p["l1"]["w"] + p["l1"]["b"]) @ p["l2"]["w"] + p["l2"]["b"]

    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Sigmoid(), torch.nn.Linear(5, 3))
    to_torch = {"l1": (net[0], "linear"), "l2": (net[2], "linear")}
    x = jax.random.normal(k[2], (8, 6))
    return apply, params, x, np.asarray(x), net, to_torch


def _cnn(key):
    k = jax.random.split(key, 4)
    params = {"conv": {"w": 0.4 * jax.random.normal(k[0], (3, 3, 2, 4)), "b": 0.1 * jnp.ones(4)},
              "dense": {"w": 0.3 * jax.random.normal(k[1], (36, 3)), "b": jnp.zeros(3)}}

    def apply(p, x):  # NHWC inside; flattened in PyTorch's (C, H, W) order
        h = lax.conv_general_dilated(x, p["conv"]["w"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.sigmoid(h + p["conv"]["b"])
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)
        return h @ p["dense"]["w"] + p["dense"]["b"]

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Sigmoid(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(36, 3))
    to_torch = {"conv": (net[0], "conv"), "dense": (net[4], "linear")}
    x = jax.random.normal(k[2], (6, 6, 6, 2))
    return apply, params, x, np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)), net, \
        to_torch


def _to_torch_layout(kind, w):
    w = np.asarray(w)
    return w.T if kind == "linear" else w.transpose(3, 2, 0, 1)  # HWIO -> OIHW


def _leaf_to_torch(kind, name, value, lead=0):
    """funcbp's leaf (maybe with ``lead`` batch axes) in PyTorch's layout."""
    v = np.asarray(value)
    if name == "b" or v.ndim == 1:
        return v
    if kind == "linear":
        return np.swapaxes(v, -1, -2)
    axes = list(range(lead)) + [lead + 3, lead + 2, lead + 0, lead + 1]
    return v.transpose(axes)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_shared_quantity_matches_backpack(model):
    apply, params, x, x_torch, net, to_torch = {"mlp": _mlp, "cnn": _cnn}[model](
        jax.random.key(0))
    y = np.asarray(jax.random.randint(jax.random.key(1), (x.shape[0],), 0, 3))
    with torch.no_grad():
        for layer, (mod, kind) in to_torch.items():
            mod.weight.copy_(torch.from_numpy(_to_torch_layout(kind, params[layer]["w"])))
            mod.bias.copy_(torch.from_numpy(np.asarray(params[layer]["b"])))
    net = backpack.extend(net)
    lossfunc = backpack.extend(torch.nn.CrossEntropyLoss())
    which = tuple(PAIRS) + ("kfac",)
    ours = jax.jit(lambda p, x, y: funcbp.quantities(
        apply, p, x, y, loss="softmax_cross_entropy", which=which, key=jax.random.key(2)))(
            params, x, y)
    # BackPACK: first-order extensions together, then each second-order one on its own pass
    passes = [[ext.BatchGrad(), ext.BatchL2Grad(), ext.SumGradSquared(), ext.Variance()],
              [ext.DiagGGNExact()], [ext.DiagHessian()], [ext.KFAC()]]
    theirs: dict = {}
    for extensions in passes:
        net.zero_grad()
        loss = lossfunc(net(torch.from_numpy(x_torch)), torch.from_numpy(y).long())
        with backpack.backpack(*extensions):
            loss.backward()
        for layer, (mod, _) in to_torch.items():
            for pname in ("w", "b"):
                param = mod.weight if pname == "w" else mod.bias
                for q, (_, attr) in PAIRS.items():
                    if hasattr(param, attr):
                        theirs[(q, layer, pname)] = getattr(param, attr).detach().numpy()
                if hasattr(param, "kfac"):
                    theirs[("kfac", layer, pname)] = [f.detach().numpy() for f in param.kfac]
    for q in PAIRS:
        for layer, (_, kind) in to_torch.items():
            for pname in ("w", "b"):
                got = _leaf_to_torch(kind, pname, ours[q][layer][pname],
                                     lead=1 if q == "batch_grad" else 0)
                ref = theirs[(q, layer, pname)]
                scale = np.max(np.abs(ref)) + 1e-30
                np.testing.assert_allclose(got / scale, ref / scale, rtol=1e-4, atol=1e-4,
                                           err_msg=f"{model} {q} {layer}/{pname}")
    for layer, (_, kind) in to_torch.items():
        a_ours = np.asarray(ours["kfac"][layer]["w"][0])
        a_theirs = theirs[("kfac", layer, "w")][1]
        if kind == "conv":  # ours over HWIO's (kh, kw, Cin); BackPACK's over (Cin, kh, kw)
            n = a_ours.shape[0] // 9
            a_ours = a_ours.reshape(3, 3, n, 3, 3, n).transpose(2, 0, 1, 5, 3, 4).reshape(
                9 * n, 9 * n)
        np.testing.assert_allclose(a_ours, a_theirs, rtol=1e-4, atol=1e-5 * np.max(a_theirs),
                                   err_msg=f"{model} kfac A {layer}")
        g = np.asarray(ours["kfac"][layer]["w"][1])
        assert g.shape == theirs[("kfac", layer, "w")][0].shape
