"""How the loop calls the compiled step and reads its metrics back.

Per step the host does nothing but call one compiled function: the batch is cut out of the
epoch's stacked arrays and the step's key folded inside it (``advance``), and the metrics the
loop needs come back as one packed float32 vector per step, fetched together at a read-back
(``read_back``) that checks them (NaN guard, labels), sums them in float64 in step order and
hands every ``log_every``-th step to the writers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["SUMMED", "advance_fn", "pack", "read_back", "show"]

SUMMED = ("loss", "accuracy", "grad_norm", "overflow")


#: The step's scalars the loop reads back, packed into one float32 vector per step (one
#: transfer instead of one per scalar); NaN marks a metric the step does not have.
PACKED = ("loss", "accuracy", "grad_norm", "lr", "finite", "bad_labels", "loss_scale",
           "overflow")


def pack(m: dict) -> jax.Array:
    nan = jnp.float32(jnp.nan)
    return jnp.stack([jnp.asarray(m[k], jnp.float32) if k in m else nan for k in PACKED])


def advance_fn(train_step: Callable) -> Callable:
    """The compiled step the loop calls: step ``i`` of the epoch, its key ``fold_in(key, i)``
    and (for arrays) its batch cut from the epoch's stacked arrays inside the compiled
    function, so that no eager op runs per step on the host; metrics packed for read-back."""
    def indexed(p, s, xs, ys, key, i):
        p, s, m = train_step(p, s, (xs[i], ys[i]), jax.random.fold_in(key, i))
        return p, s, pack(m), m

    def given(p, s, batch, key, i):
        p, s, m = train_step(p, s, batch, jax.random.fold_in(key, i))
        return p, s, pack(m), m

    indexed = jax.jit(indexed, donate_argnums=(0, 1))
    given = jax.jit(given, donate_argnums=(0, 1))

    def advance(p, s, key, i, batch=None, xs=None, ys=None):
        if batch is None:
            return indexed(p, s, xs, ys, key, i)
        return given(p, s, batch, key, i)

    return advance


def read_back(pending, sums, writers, config, epoch_step) -> int | None:
    """Check and sum the pending steps' metrics in order; the index of the first bad one."""
    rows = jax.device_get([packed for _, packed, _ in pending])
    for (i, _, m), row in zip(pending, rows, strict=True):
        got = dict(zip(PACKED, (float(v) for v in row), strict=True))
        if got["finite"] != 1.0 or got["bad_labels"] != 0.0:
            return i
        sums["count"] += 1
        for k in SUMMED:
            if k in m:
                sums[k] += got[k]
        if "accuracy" in m:
            sums["accuracy_seen"] = True
        if "lr" in m:
            sums["lr"] = got["lr"]
        if "loss_scale" in m:
            sums["loss_scale"] = got["loss_scale"]
        global_step = epoch_step + i + 1
        if config.log_every and global_step % config.log_every == 0:
            values = {k: got[k] for k in ("loss", "accuracy", "grad_norm", "lr", "loss_scale")
                      if k in m}
            if "layer_grad_norms" in m:
                values["grad_norm_layer"] = {k: float(v) for k, v in
                                             jax.device_get(m["layer_grad_norms"]).items()}
            writers.scalars(global_step, values)
    return None


def show(bar, sums, i, batch_size, t_epoch, first) -> None:
    """The progress bar's figures after a read-back."""
    n = max(sums["count"], 1)
    shown = {"loss": f"{sums['loss'] / n:.4f}"}
    if "accuracy_seen" in sums:
        shown["acc"] = f"{sums['accuracy'] / n:.3f}"
    elapsed = time.perf_counter() - t_epoch
    shown["ex_s"] = f"{(i - first) * batch_size / elapsed:.0f}"
    bar.set_postfix(**shown)
    bar.update(i - bar.n)
