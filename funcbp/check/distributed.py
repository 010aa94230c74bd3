"""Is the data-parallel gradient the single-device gradient? ``distributed_grad_check``.

The gradient of ``loss_fn(params, batch)`` on one device, for the whole (global) batch, is the
reference. The data-parallel gradient is computed on a mesh of ``devices`` devices with the
batch split along ``funcbp.train.parallel``'s data axis and the parameters replicated: by
default the way the trainer does it (one ``jax.jit`` with explicit shardings, XLA inserting the
all-reduce), or by your own ``parallel_grad_fn`` (a ``shard_map`` with ``psum``/``pmean``...).
They are compared leaf by leaf; a leaf whose data-parallel gradient is the reference times
``N`` (or ``1/N``) is named as the classic mean-vs-sum mistake.

On a machine without several accelerators, force CPU devices before jax starts:
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (``funcbp check --devices 4`` does it
for you).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DistributedGradReport", "LeafRatio", "distributed_grad_check"]

#: dtype -> (rtol, atol): the two gradients add the same terms in another order.
TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-4, 1e-6), "float16": (2e-2, 2e-2),
              "bfloat16": (5e-2, 5e-2)}


@dataclass
class LeafRatio:
    """One parameter leaf: the data-parallel gradient against the single-device one.

    Attributes:
      path: the leaf's key path (``"['dense_0']['w']"``).
      max_rel_err: largest ``|dp - ref| / (|ref| + atol * scale / rtol)``.
      ratio: ``<dp, ref> / <ref, ref>``, the factor that best maps the reference onto the
        data-parallel gradient (1 when they agree).
      passed: ``max_rel_err <= rtol``.
      diagnosis: what a failing ratio means (``""`` when it passed).
    """

    path: str
    shape: tuple
    max_rel_err: float
    ratio: float
    passed: bool
    diagnosis: str = ""


@dataclass
class DistributedGradReport:
    """What :func:`distributed_grad_check` found; ``print(report)`` shows a table."""

    devices: int
    method: str
    leaves: list[LeafRatio] = field(default_factory=list)
    rtol: float = 0.0

    @property
    def passed(self) -> bool:
        return all(leaf.passed for leaf in self.leaves)

    @property
    def failures(self) -> list[LeafRatio]:
        return [leaf for leaf in self.leaves if not leaf.passed]

    def to_dict(self) -> dict:
        return {"devices": self.devices, "method": self.method, "passed": self.passed,
                "rtol": self.rtol,
                "leaves": [dict(leaf.__dict__, shape=list(leaf.shape)) for leaf in self.leaves]}

    def __str__(self) -> str:
        from funcbp.check.grads import format_table

        status = "PASSED" if self.passed else f"FAILED ({len(self.failures)} of " \
                                              f"{len(self.leaves)} leaves)"
        rows = [[leaf.path, str(tuple(leaf.shape)), f"{leaf.max_rel_err:.2e}",
                 f"{leaf.ratio:.6g}", "ok" if leaf.passed else "FAIL", leaf.diagnosis]
                for leaf in self.leaves]
        head = (f"distributed gradient check: {self.devices} devices ({self.method}) vs one "
                f"device, same global batch: {status}")
        return "\n".join([head, format_table(["leaf", "shape", "max rel err", "ratio dp/1",
                                              "", "diagnosis"], rows)])

    __repr__ = __str__


def _diagnose(ratio: float, n: int, close: bool) -> str:
    if close and abs(ratio - n) <= 1e-3 * n:
        return (f"ratio {n} = the device count: the gradients are summed over devices where a "
                "mean was meant (psum instead of pmean; or, in a shard_map with check_vma=True, "
                "the gradient of replicated parameters is already summed over the devices, so "
                "a pmean after it divides nothing: scale the local loss by 1/devices instead)")
    if close and abs(ratio - 1 / n) <= 1e-3 / n:
        return (f"ratio 1/{n}: the gradients are divided by the device count once too often "
                "(pmean of a gradient that is already a global mean, or a mean where a sum was "
                "meant)")
    if close:
        return f"off by a constant factor {ratio:.6g}"
    return "differs beyond a constant factor (a wrong collective, or a per-device computation)"


def distributed_grad_check(loss_fn: Callable, params: Any, batch: Any, devices: int | None = None,
                           *, grad_fn: Callable | None = None,
                           parallel_grad_fn: Callable | None = None, shard_params: bool = False,
                           rtol: float | None = None, atol: float | None = None
                           ) -> DistributedGradReport:
    """Compares the data-parallel gradient on ``devices`` devices with the one-device gradient.

    ``ref = grad_fn(loss_fn)(params, batch)`` on one device for the whole batch; ``dp`` is the
    same gradient with ``batch`` split along the leading axis over a 1-D mesh of ``devices``
    (``funcbp.train.parallel.make_mesh``) and ``params`` replicated (or split, with
    ``shard_params``). A leaf passes when ``|dp - ref| <= atol * scale + rtol * |ref|``
    everywhere (defaults by dtype: the two add the same terms in another order); each leaf also
    gets ``ratio = <dp, ref> / <ref, ref>``, and a failing leaf whose ratio is ``N`` or ``1/N``
    is named as a mean-vs-sum mistake.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, a mean over the batch.
      params: the parameters (a pytree).
      batch: a pytree of arrays with a leading batch axis divisible by ``devices``.
      devices: the number of devices (default: all).
      grad_fn: the gradient transformation (``funcbp.grad`` by default, or ``jax.grad``).
      parallel_grad_fn: your data-parallel gradient, ``(params, batch) -> grads``, called under
        ``jax.jit`` with ``params`` replicated and ``batch`` split over the mesh, inside
        ``jax.set_mesh(mesh)`` (so a ``jax.shard_map`` in it needs no ``mesh=``; the data axis
        is ``funcbp.train.parallel.DATA_AXIS``, ``"data"``). Default: the trainer's way, the
        gradient of the global loss compiled with explicit shardings.
      shard_params: split parameter leaves along the data axis (as ``--shard-params``).
      rtol, atol: override the tolerances.

    Returns:
      A :class:`DistributedGradReport` (``.passed``, ``.failures``, ``print`` for a table).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from funcbp.check import distributed_grad_check
      >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
      >>> params = {"w": jnp.ones((3, 1))}
      >>> batch = (jnp.ones((8, 3)), jnp.zeros((8, 1)))
      >>> distributed_grad_check(loss, params, batch, devices=1).passed
      True
    """
    from funcbp.autodiff.api import grad as funcbp_grad
    from funcbp.train import parallel

    if not callable(loss_fn):
        raise TypeError(f"distributed_grad_check expects a loss function first, got {loss_fn!r}")
    grad = grad_fn or funcbp_grad
    mesh = parallel.make_mesh(devices)
    n = mesh.devices.size
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("distributed_grad_check: the batch has no arrays to split")
    parallel.check_global_batch_size(int(np.shape(leaves[0])[0]), mesh)

    one = jax.devices()[0]
    ref = jax.jit(grad(loss_fn))(*jax.device_put((params, batch), one))
    p_sh = parallel.state_shardings(mesh, params, shard_params)
    placed_params = parallel.replicate(mesh, params, shard_params)
    placed_batch = parallel.shard_batch(mesh, batch)
    if parallel_grad_fn is None:
        method = "jit with shardings, as funcbp.train.parallel"
        dp = jax.jit(grad(loss_fn), in_shardings=(p_sh, parallel.batch_sharding(mesh)),
                     out_shardings=p_sh)(placed_params, placed_batch)
    else:
        method = getattr(parallel_grad_fn, "__name__", "parallel_grad_fn")
        with jax.set_mesh(mesh):
            dp = jax.jit(parallel_grad_fn)(placed_params, placed_batch)
    ref_leaves = jax.tree_util.tree_flatten_with_path(ref)[0]
    dp_leaves, dp_tree = jax.tree_util.tree_flatten(dp)
    if dp_tree != jax.tree.structure(ref):
        raise ValueError(f"the data-parallel gradient's structure {dp_tree} differs from the "
                         f"parameters' {jax.tree.structure(ref)}")
    refs = [np.asarray(parallel.to_host(r), np.float64) for _, r in ref_leaves]
    dps = [np.asarray(parallel.to_host(d), np.float64) for d in dp_leaves]
    scale = max((float(np.abs(r).max(initial=0.0)) for r in refs), default=0.0) or 1.0
    report = DistributedGradReport(n, method)
    for (path, r_arr), r, d in zip(ref_leaves, refs, dps, strict=True):
        d_rtol, d_atol = TOLERANCES.get(jnp.dtype(jnp.result_type(r_arr)).name,
                                        TOLERANCES["float32"])
        rt = d_rtol if rtol is None else rtol
        at = (d_atol if atol is None else atol) * scale
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(d - r) / (np.abs(r) + at / rt)
        err = float(np.nan_to_num(rel, nan=np.inf).max(initial=0.0))
        rr = float(np.sum(r * r))
        ratio = float(np.sum(d * r) / rr) if rr > 0 else (1.0 if not np.any(d) else np.inf)
        resid = np.abs(d - ratio * r) / (np.abs(ratio * r) + at / rt) if np.isfinite(ratio) \
            else np.full_like(r, np.inf)
        close = bool(np.all(resid <= rt))
        ok = err <= rt
        report.leaves.append(LeafRatio(jax.tree_util.keystr(path) or "params",
                                       tuple(np.shape(r)), err, ratio, ok,
                                       "" if ok else _diagnose(ratio, n, close)))
    report.rtol = rtol if rtol is not None else TOLERANCES["float32"][0]
    return report
