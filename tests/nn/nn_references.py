"""Independent float64 NumPy references for funcbp.nn layers (loops over kernel offsets)."""

from __future__ import annotations

import math

import numpy as np


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow/XLA 'SAME' padding: output ceil(size / s), extra pad at the end."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def explicit_pads(padding, shape_hw, kernel, strides, dilation):
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        return tuple(same_pads(n, k, s, d) for n, k, s, d in
                     zip(shape_hw, kernel, strides, dilation, strict=True))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) for p in padding)


def _windows(xp, kernel, strides, dilation, out_hw):
    """Yield (h, w, patch) with patch[n, i, j, c] = xp[n, i*s + h*d, j*s + w*d, c]."""
    (sh, sw), (dh, dw), (oh, ow) = strides, dilation, out_hw
    for h in range(kernel[0]):
        for w in range(kernel[1]):
            yield h, w, xp[:, h * dh: h * dh + sh * (oh - 1) + 1: sh,
                           w * dw: w * dw + sw * (ow - 1) + 1: sw, :]


def _out_hw(padded_hw, kernel, strides, dilation):
    return tuple((n - (k - 1) * d - 1) // s + 1 for n, k, s, d in
                 zip(padded_hw, kernel, strides, dilation, strict=True))


def conv2d(x, w, b, strides, padding, dilation, groups):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    kernel = w.shape[:2]
    pads = explicit_pads(padding, x.shape[1:3], kernel, strides, dilation)
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    out_hw = _out_hw(xp.shape[1:3], kernel, strides, dilation)
    cin_g, cout = w.shape[2], w.shape[3]
    cout_g = cout // groups
    y = np.zeros((x.shape[0], *out_hw, cout))
    for h, ww, patch in _windows(xp, kernel, strides, dilation, out_hw):
        for g in range(groups):
            y[..., g * cout_g:(g + 1) * cout_g] += np.einsum(
                "nijc,co->nijo", patch[..., g * cin_g:(g + 1) * cin_g],
                w[h, ww, :, g * cout_g:(g + 1) * cout_g])
    return y if b is None else y + np.asarray(b, np.float64)


def pool(x, kind, window, strides, padding, count_include_pad=False):
    x = np.asarray(x, np.float64)
    pads = explicit_pads(padding, x.shape[1:3], window, strides, (1, 1))
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    valid = np.pad(np.ones_like(x), ((0, 0), *pads, (0, 0)))
    out_hw = _out_hw(xp.shape[1:3], window, strides, (1, 1))
    patches = [p for _, _, p in _windows(xp, window, strides, (1, 1), out_hw)]
    if kind == "max":
        return np.max(patches, axis=0)
    counts = sum(p for _, _, p in _windows(valid, window, strides, (1, 1), out_hw))
    if count_include_pad:
        counts = window[0] * window[1]
    return np.sum(patches, axis=0) / counts
