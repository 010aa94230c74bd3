"""Dense and convolution weights, embedding tables: quantities read off the layer's inputs
and output columns.

A weight ``w`` used once, in ``z = dot_general(a, w)`` or ``z = conv(a, w)``, has per-example
gradient ``g_i = sum_t a_it (x) d_it``: ``a_it`` the layer's input at position ``t`` of example
``i`` (for a convolution: the unfolded patch), ``d_it`` the output's cotangent there. Both are
brought to a canonical layout, ``A: (B, T, Din)`` and ``D: (K, B, T, Dout)``, and:

- ``T == 1`` (a dense layer on vectors): ``||g_i||^2 = ||a_i||^2 ||d_i||^2``,
  ``sum_i g_i^2 = (a^2)^T (d^2)``, and a curvature group's diagonal is
  ``sum_i a_i^2 (x) sum_k d_ik^2``; nothing of size ``B x |w|`` is formed ("outer").
- ``T > 1`` (sequences, convolutions): ``||g_i||^2`` from the Gram form
  ``sum_{t,t'} (a_it . a_it')(d_it . d_it')`` when ``T^2 < Din Dout`` ("gram"), else from the
  per-example gradients ``(B, Din, Dout)``, which are the size of one weight per example, never
  ``B x T`` of them ("unfold").
- KFAC (BackPACK's definitions): ``A = sum_{i,t} a_it a_it^T / B`` and
  ``G = sum_{k,i} (sum_t d_ikt)(sum_t d_ikt)^T`` over the Monte-Carlo columns.

Results are returned in the weight's own layout. Embedding tables (``table[ids]``) have their
own rule, :func:`embedding_site`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["SITE_RULES"]

_CURVATURE = ("ggn", "mc")


def _contract(parts: list, d: jax.Array, spec_in: str, spec_d: str, out: str) -> jax.Array:
    """``einsum`` of every part of ``A`` with ``d``, stacked channel-major over the parts.

    ``A``'s feature axis is ``(C, n_parts)`` flattened (a convolution's patch: channel, then
    kernel offset); each part is one offset, ``(B, T, C)``. The result's ``c`` axis is the
    flattened ``(C, n_parts)``.
    """
    got = [jnp.einsum(f"{spec_in},{spec_d}->{out}", a, d) for a in parts]
    if len(got) == 1:
        return got[0]
    k = out.index("c")
    stacked = jnp.stack(got, axis=k + 1)
    return stacked.reshape(*stacked.shape[:k], -1, *stacked.shape[k + 2:])


def _reduce(parts: list, deltas: dict, spec: Any, to_w, to_w_in) -> tuple[dict, str]:
    """The quantities of one weight from the layer input ``parts`` (``A`` split by kernel
    offset, each ``(B, T, C)``) and the output column groups ``D`` ``(K, B, T, Dout)``."""
    B, T, C = parts[0].shape
    Din = C * len(parts)
    want = spec.want
    out: dict = {}
    grad = deltas.get("grad") if want & {"grad", "batch_l2", "sum_grad_squared",
                                         "variance"} else None
    path = "outer" if T == 1 else "unfold"
    if grad is not None:
        d = grad[0]
        Dout = d.shape[-1]
        first = {"batch_l2", "sum_grad_squared", "variance"} & want
        per_example = (first and not (T == 1 and len(parts) == 1)
                       and not (first == {"batch_l2"} and T * T < Din * Dout))
        dense = T == 1 and len(parts) == 1
        if dense and first - {"batch_l2"}:
            a, dd = parts[0][:, 0], d[:, 0]
            out["grad"] = to_w(a.T @ dd)
            out["sum_grad_squared"] = to_w((a * a).T @ (dd * dd))
        elif not per_example:
            out["grad"] = to_w(_contract(parts, d, "btc", "bte", "ce"))
        if dense:
            if "batch_l2" in want:
                out["batch_l2"] = jnp.sum(parts[0][:, 0] ** 2, 1) * jnp.sum(d[:, 0] ** 2, 1)
        elif first:
            if first == {"batch_l2"} and T * T < Din * Dout:
                path = "gram"
                gram = sum(jnp.einsum("btc,bsc->bts", a, a) for a in parts)
                out["batch_l2"] = jnp.sum(gram * jnp.einsum("bte,bse->bts", d, d), axis=(1, 2))
            else:  # the per-example gradients of one weight: their sum is the gradient
                g = _contract(parts, d, "btc", "bte", "bce")
                out["grad"] = to_w(jnp.sum(g, axis=0))
                out["batch_l2"] = jnp.sum(g * g, axis=(1, 2))
                out["sum_grad_squared"] = to_w(jnp.sum(g * g, axis=0))
    diag: dict = {}
    for name, d in deltas.items():
        wanted = {"ggn": want & {"diag_ggn", "diag_hessian"}, "mc": want & {"diag_ggn_mc"},
                  "grad": ()}.get(name, want & {"diag_hessian"})
        if not wanted:
            continue
        if T == 1 and len(parts) == 1:
            val = (parts[0][:, 0] ** 2).T @ jnp.sum(d[:, :, 0] ** 2, axis=0)
        else:
            g = _contract(parts, d, "btc", "kbte", "kbce")
            val = jnp.sum(g * g, axis=(0, 1))
        diag[name] = to_w(val)
    out["diag"] = diag
    if "kfac" in want and "mc" in deltas:
        A = jnp.stack(parts, axis=-1).reshape(B, T, Din)
        s = jnp.sum(deltas["mc"], axis=2)  # (K, B, Dout): summed over positions
        out["kfac"] = (to_w_in(jnp.einsum("btd,bte->de", A, A) / B),
                       jnp.einsum("kbe,kbf->ef", s, s))
    return out, path


def _groups(pack: Any, perm: list, B: int, T: int) -> dict:
    """The output pack's groups in canonical ``(K, B, T, Dout)`` layout."""
    out = {}
    for name, arr in pack.groups.items():
        k = arr.shape[0]
        moved = jnp.transpose(arr, [0] + [1 + p for p in perm])
        out[name] = moved.reshape(k, B, T, -1)
    return out


def dense_site(eqn, j, invals, ax_in, ax_out, pack, spec):
    """``dot_general`` with an unbatched weight operand ``j`` and no dot-batch dimensions."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if lb or rb or pack is None:
        return None
    o = 1 - j
    x, w = jnp.asarray(invals[o]), jnp.asarray(invals[j])
    a = ax_in[o]
    oc, wc = (lc, rc) if o == 0 else (rc, lc)
    ofree = [d for d in range(x.ndim) if d not in oc]
    wfree = [d for d in range(w.ndim) if d not in wc]
    n_lfree = len(ofree) if o == 0 else len(wfree)
    out_o = list(range(len(ofree))) if o == 0 else [n_lfree + k for k in range(len(ofree))]
    out_w = [n_lfree + k for k in range(len(wfree))] if o == 0 else list(range(len(wfree)))
    tdims = [d for d in ofree if d != a]
    B = x.shape[a]
    T = math.prod(x.shape[d] for d in tdims)
    A = jnp.transpose(x, [a, *tdims, *oc]).reshape(B, T, -1)
    perm = [out_o[ofree.index(a)], *[out_o[ofree.index(d)] for d in tdims], *out_w]
    deltas = _groups(pack, perm, B, T)
    w_dims = [*wc, *wfree]
    inv = list(np.argsort(w_dims))
    shape_in = [w.shape[d] for d in wc]
    shape_out = [w.shape[d] for d in wfree]

    def to_w(m):
        return jnp.transpose(m.reshape(*shape_in, *shape_out), inv)

    def to_w_in(m):  # the input factor over the weight's contracting axes, in axis order
        order = list(np.argsort(wc))
        n = len(wc)
        size = math.prod(shape_in)
        m = m.reshape(*shape_in, *shape_in)
        return jnp.transpose(m, order + [n + k for k in order]).reshape(size, size)

    values, path = _reduce([A.astype(w.dtype)], deltas, spec, to_w, to_w_in)
    return values, f"dense: {path}"


def _unfold(x, filt, out_spatial, p, lhs_spec) -> list:
    """The input patches as one ``(B, *out_spatial, C)`` array per kernel offset, by strided
    slices of the padded input (data movement only; ``lax.conv_general_dilated_patches``
    would run a convolution with an identity kernel, ``C * prod(filt)`` times the layer's)."""
    if any(d != 1 for d in p["lhs_dilation"]):
        patches = lax.conv_general_dilated_patches(
            x, filt, p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"],
            dimension_numbers=p["dimension_numbers"], precision=p["precision"])
        out_spec = p["dimension_numbers"].out_spec
        patches = jnp.transpose(patches, [out_spec[0], *out_spec[2:], out_spec[1]])
        return [patches]   # already channel-major over (C, offsets)
    xc = jnp.transpose(x, [lhs_spec[0], *lhs_spec[2:], lhs_spec[1]])   # (B, *spatial, C)
    xc = lax.pad(xc, jnp.zeros((), xc.dtype),
                 [(0, 0, 0), *[(lo, hi, 0) for lo, hi in p["padding"]], (0, 0, 0)])
    parts = []
    for offset in np.ndindex(*filt):
        start = [0] + [k * d for k, d in zip(offset, p["rhs_dilation"], strict=True)] + [0]
        limit = ([xc.shape[0]]
                 + [s0 + (o - 1) * st + 1 for s0, o, st in
                    zip(start[1:-1], out_spatial, p["window_strides"], strict=True)]
                 + [xc.shape[-1]])
        parts.append(lax.slice(xc, start, limit, [1, *p["window_strides"], 1]))
    return parts


def conv_site(eqn, j, invals, ax_in, ax_out, pack, spec):
    """``conv_general_dilated`` with the kernel (operand 1) a parameter, groups of one."""
    p = eqn.params
    if j != 1 or pack is None or p["feature_group_count"] != 1 or p["batch_group_count"] != 1:
        return None
    x, w = jnp.asarray(invals[0]), jnp.asarray(invals[1])
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn
    filt = [w.shape[d] for d in rhs_spec[2:]]
    B = x.shape[lhs_spec[0]]
    perm = [out_spec[0], *out_spec[2:], out_spec[1]]
    out_shape = next(iter(pack.groups.values())).shape[1:]
    out_spatial = [out_shape[d] for d in out_spec[2:]]
    T = math.prod(out_spatial)
    parts = [a.reshape(B, T, -1).astype(w.dtype)
             for a in _unfold(x, filt, out_spatial, p, lhs_spec)]
    deltas = _groups(pack, perm, B, T)
    # the patch features are ordered (in-channel, *spatial in rhs_spec order)
    w_dims = [rhs_spec[1], *rhs_spec[2:], rhs_spec[0]]
    inv = list(np.argsort(w_dims))
    shape_in = [w.shape[d] for d in w_dims[:-1]]

    def to_w(m):
        return jnp.transpose(m.reshape(*shape_in, w.shape[rhs_spec[0]]), inv)

    in_axes = w_dims[:-1]
    order = list(np.argsort(in_axes))

    def to_w_in(m):  # the input factor over the kernel's non-output axes, in axis order
        n = len(in_axes)
        m = m.reshape(*shape_in, *shape_in)
        size = math.prod(shape_in)
        return jnp.transpose(m, order + [n + k for k in order]).reshape(size, size)

    values, path = _reduce(parts, deltas, spec, to_w, to_w_in)
    return values, f"conv: {path}"


def embedding_site(eqn, j, invals, ax_in, ax_out, pack, spec):
    """``table[ids]``: a gather of whole rows of an unbatched table by per-example ids.

    Example ``i``'s gradient of row ``v`` is ``sum_{t: id_it = v} d_it``. With the mask
    ``M_tt' = [id_it = id_it']`` and the group sums ``s_it = sum_t' M_tt' d_it'``:
    ``|g_i|^2 = sum_{t,t'} M_tt' d_it . d_it'`` and ``sum_i g_i^2`` is the scatter of
    ``s_it^2 / m_it`` (``m_it`` the size of ``t``'s group) into the rows: nothing of size
    ``B x rows`` is formed.
    """
    dn = eqn.params["dimension_numbers"]
    table, ids = jnp.asarray(invals[0]), jnp.asarray(invals[1])
    a = ax_in[1]
    if (j != 0 or pack is None or a is None or tuple(dn.collapsed_slice_dims) != (0,)
            or tuple(dn.start_index_map) != (0,) or getattr(dn, "operand_batching_dims", ())
            or table.ndim != 2 or tuple(eqn.params["slice_sizes"]) != (1, table.shape[1])
            or ids.shape[-1] != 1 or a == ids.ndim - 1
            or tuple(dn.offset_dims) != (ids.ndim - 1,)):
        return None
    V, E = table.shape
    idx = jnp.moveaxis(ids[..., 0], a, 0)
    B = idx.shape[0]
    idx = idx.reshape(B, -1)                                          # (B, T)
    T = idx.shape[1]
    out_batch = [d for d in range(ids.ndim) if d != ids.ndim - 1]     # index dims -> out dims
    perm = [a, *[d for d in out_batch if d != a], ids.ndim - 1]
    deltas = _groups(pack, perm, B, T)                                # (K, B, T, E)
    ids_safe = jnp.clip(idx, 0, V - 1)   # clip mode: out-of-range ids read the edge rows
    if "FILL" in str(eqn.params.get("mode")):   # fill mode: out-of-range ids read nothing
        keep = ((idx >= 0) & (idx < V)).astype(table.dtype)[None, :, :, None]
        deltas = {name: d * keep for name, d in deltas.items()}
    mask = (ids_safe[:, :, None] == ids_safe[:, None, :]).astype(table.dtype)   # (B, T, T)
    m = jnp.sum(mask, axis=2)                                         # (B, T)

    def rows(vals):  # (B, T, E) -> (V, E): scatter-add into the table's rows
        return jnp.zeros((V, E), vals.dtype).at[ids_safe.reshape(-1)].add(vals.reshape(-1, E))

    want = spec.want
    out: dict = {}
    grad = deltas.get("grad") if want & {"grad", "batch_l2", "sum_grad_squared",
                                         "variance"} else None
    if grad is not None:
        d = grad[0]
        out["grad"] = rows(d)
        if "batch_l2" in want:
            out["batch_l2"] = jnp.einsum("btu,bte,bue->b", mask, d, d)
        if want & {"sum_grad_squared", "variance"}:
            sums = jnp.einsum("btu,bue->bte", mask, d)
            out["sum_grad_squared"] = rows(sums * sums / m[..., None])
    diag: dict = {}
    for name, d in deltas.items():
        wanted = {"ggn": want & {"diag_ggn", "diag_hessian"}, "mc": want & {"diag_ggn_mc"},
                  "grad": ()}.get(name, want & {"diag_hessian"})
        if wanted:
            sums = jnp.einsum("btu,kbue->kbte", mask, d)
            diag[name] = rows(jnp.sum(sums * sums, axis=0) / m[..., None])
    out["diag"] = diag
    return out, "embedding: gram"


SITE_RULES = {"dot_general": dense_site, "conv_general_dilated": conv_site,
              "gather": embedding_site}
