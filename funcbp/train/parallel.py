"""Data parallelism on JAX's own distributed engine: meshes, shardings, multi-process input.

The batch is sharded along a ``data`` mesh axis; parameters and optimiser state are replicated
(or, with ``shard_params=True``, split along the same axis on their leading dimension). The step
is compiled with these explicit shardings, so XLA inserts the gradient all-reduce itself; nothing
here communicates by hand. The same code runs on CPU devices, GPUs and TPUs, in one process or
across processes and hosts (``jax.distributed``).

Example (one process, all local devices)::

    mesh = parallel.make_mesh()
    step = parallel.data_parallel(train_step, mesh, params, opt_state)
    params, opt_state = parallel.replicate(mesh, (params, opt_state))
    params, opt_state, metrics = step(params, opt_state, parallel.shard_batch(mesh, batch), key)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "check_global_batch_size",
    "data_parallel",
    "initialize_distributed",
    "local_rows",
    "make_mesh",
    "replicate",
    "shard_batch",
    "state_shardings",
    "to_host",
]

DATA_AXIS = "data"

#: Environment variables read by :func:`initialize_distributed`, in order of preference.
ENV_COORDINATOR = ("FUNCBP_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("FUNCBP_NUM_PROCESSES", "JAX_NUM_PROCESSES", "SLURM_NTASKS", "WORLD_SIZE")
ENV_PROCESS_ID = ("FUNCBP_PROCESS_ID", "JAX_PROCESS_ID", "SLURM_PROCID", "RANK")


def _env(names: tuple[str, ...]) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Joins a multi-process run through ``jax.distributed.initialize``.

    Arguments left as ``None`` are read from the environment (``FUNCBP_COORDINATOR`` /
    ``JAX_COORDINATOR_ADDRESS``, ``FUNCBP_NUM_PROCESSES`` / ``SLURM_NTASKS`` / ``WORLD_SIZE``,
    ``FUNCBP_PROCESS_ID`` / ``SLURM_PROCID`` / ``RANK``). On CPU, collectives go through gloo.

    Returns:
      True if a multi-process run was initialised, False if there is nothing to join (no
      coordinator given or set), in which case the run is single-process.
    """
    coordinator = coordinator or _env(ENV_COORDINATOR)
    if coordinator is None:
        return False
    n = num_processes if num_processes is not None else _env(ENV_NUM_PROCESSES)
    i = process_id if process_id is not None else _env(ENV_PROCESS_ID)
    if n is None or i is None:
        raise ValueError(
            f"a coordinator ({coordinator}) was given but not the number of processes and this "
            "process's id: pass --num-processes and --process-id (or set FUNCBP_NUM_PROCESSES "
            "and FUNCBP_PROCESS_ID)")
    n, i = int(n), int(i)
    if not 0 <= i < n:
        raise ValueError(f"process id {i} is outside 0..{n - 1}")
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # pragma: no cover - older/newer jax without the option
        pass
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=i)
    return True


def make_mesh(num_devices: int | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` global devices (all of them by default)."""
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"asked for {num_devices} devices but {len(devices)} are available "
            f"({devices[0].platform}); on CPU, set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} before importing jax")
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError("a multi-process run uses every device of every process; "
                         f"--devices {num_devices} != {len(devices)}")
    return Mesh(np.array(devices[:num_devices]), (axis_name,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the mesh's data axis."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, tree: Any, shard_params: bool = False) -> Any:
    """Shardings for parameters or optimiser state: replicated, or split on the leading axis.

    With ``shard_params=True`` every leaf whose leading dimension divides evenly by the number
    of devices is split along the data axis (XLA gathers it where the step needs it whole);
    the others stay replicated.
    """
    n = mesh.devices.size

    def one(x):
        shape = np.shape(x)
        if shard_params and shape and shape[0] % n == 0 and shape[0] >= n:
            return NamedSharding(mesh, P(mesh.axis_names[0]))
        return _replicated(mesh)
    return jax.tree.map(one, tree)


def check_global_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises a clear error unless the global batch splits evenly across the devices."""
    n = mesh.devices.size
    if batch_size % n:
        lo, hi = (batch_size // n) * n, (batch_size // n + 1) * n
        raise ValueError(
            f"global batch size {batch_size} is not divisible by the {n} devices of the data "
            f"axis; use a multiple of {n} (e.g. {lo or hi} or {hi})")


def local_rows(global_batch_size: int) -> slice:
    """This process's rows of a global batch (contiguous, in process order)."""
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{n} processes")
    per = global_batch_size // n
    return slice(i * per, (i + 1) * per)


def shard_batch(mesh: Mesh, batch: Any, *, process_local: bool = False) -> Any:
    """Places a batch on the mesh, split along the data axis.

    Args:
      mesh: from :func:`make_mesh`.
      batch: pytree of arrays with a leading batch axis. In a single process this is the global
        batch. In a multi-process run pass either the global batch (each process then feeds
        only its own rows, :func:`local_rows`) or, with ``process_local=True``, just this
        process's rows.
    """
    sharding = batch_sharding(mesh)
    leaves = jax.tree.leaves(batch)
    if leaves:
        size = np.shape(leaves[0])[0] * (jax.process_count() if process_local else 1)
        check_global_batch_size(size, mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)

    def put(x):
        x = np.asarray(x)
        if not process_local:
            x = x[local_rows(x.shape[0])]
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)
    return jax.tree.map(put, batch)


def replicate(mesh: Mesh, tree: Any, shard_params: bool = False) -> Any:
    """Places parameters / optimiser state on the mesh (replicated, or split)."""
    shardings = state_shardings(mesh, tree, shard_params)
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
    return jax.tree.map(put, tree, shardings)


def to_host(tree: Any) -> Any:
    """Whole arrays on the host (numpy), from single-device, replicated or sharded arrays.

    In a multi-process run, sharded leaves are gathered from every process
    (``multihost_utils.process_allgather``), so every process can call this; the trainer then
    writes checkpoints from process 0 only, holding whole arrays that any process count can
    load.
    """
    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree.map(one, tree)


def data_parallel(step: Callable, mesh: Mesh, params: Any, opt_state: Any, *,
                  shard_params: bool = False, donate: bool = True) -> Callable:
    """Compiles ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)`` on a mesh.

    The batch is split along the data axis, the key and metrics are replicated, and parameters
    and optimiser state follow :func:`state_shardings`. Because the loss averages over the
    global batch, XLA inserts the all-reduce of the gradients.

    Args:
      step: an *unjitted* train step.
      mesh: from :func:`make_mesh`.
      params, opt_state: example trees (for their structure and shapes).
      shard_params: split parameters and optimiser state along the data axis.
      donate: donate the parameter and optimiser-state buffers.
    """
    p_sh = state_shardings(mesh, params, shard_params)
    s_sh = state_shardings(mesh, opt_state, shard_params)
    rep = _replicated(mesh)
    return jax.jit(step, in_shardings=(p_sh, s_sh, batch_sharding(mesh), rep),
                   out_shardings=(p_sh, s_sh, rep),
                   donate_argnums=(0, 1) if donate else ())
