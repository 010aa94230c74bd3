"""Checkpoints: a pytree of arrays plus step, epoch, PRNG key and metadata in one file.

File layout (``.ckpt``)::

    b"FUNCBP-CKPT\\n"                 magic line
    8 bytes, little-endian uint64     length H of the header
    H bytes                           JSON header: format, step, epoch, metadata, the leaves
                                      (key path, shape, dtype, in tree order), the PRNG key's
                                      implementation, and the payload's size and SHA-256
    the rest                          the payload: an ``.npz`` archive, ``leaf_<i>`` arrays

Writes are atomic: the file is written to a temporary name in the same directory, flushed and
``fsync``-ed, then moved over the old one with ``os.replace``, so a crash mid-write leaves the
previous checkpoint intact. Reads check the size and the SHA-256 of the payload (a truncated
or corrupt file is refused with :class:`CheckpointError` naming it) and, given a template
tree, every leaf's path, shape and dtype (a checkpoint of another model is refused naming the
first mismatching leaf).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax import tree_util

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "key_path_str",
    "load_checkpoint",
    "read_header",
    "save_checkpoint",
]

_MAGIC = b"FUNCBP-CKPT\n"
_FORMAT = 1
_LEN = struct.Struct("<Q")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or does not match the model.

    The message names the file and, for a mismatch, the path of the leaf (``params/dense_0/w``).
    """


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns.

    Attributes:
      tree: the restored pytree (the template's structure, the file's values).
      step: the global step count saved with it.
      epoch: the number of completed epochs saved with it.
      key: the saved ``jax.random`` key, or ``None``.
      metadata: the JSON-serialisable dict saved with it.
    """

    tree: Any
    step: int
    epoch: int
    key: jax.Array | None
    metadata: dict


def key_path_str(path: tuple) -> str:
    """A pytree key path as ``a/b/0/trace`` (dict keys, sequence indices, attribute names).

    Examples:
      >>> import jax
      >>> from funcbp.train import key_path_str
      >>> [key_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": [1, 2]})[0]]
      ['a/0', 'a/1']
    """
    parts = []
    for entry in path:
        if isinstance(entry, tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    flat, _ = tree_util.tree_flatten_with_path(tree)
    return [(key_path_str(path), leaf) for path, leaf in flat]


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, blob: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def save_checkpoint(
    path: str | os.PathLike,
    tree: Any,
    *,
    step: int,
    epoch: int,
    key: jax.Array | None = None,
    metadata: dict | None = None,
    keep_previous: bool = False,
) -> Path:
    """Write ``tree`` (any pytree of arrays) with its step, epoch, key and metadata, atomically.

    Args:
      path: the checkpoint file, e.g. ``run/checkpoints/latest.ckpt``; parent directories are
        created.
      tree: pytree of arrays, e.g. ``{"params": params, "opt_state": opt_state}``.
      step: global step count.
      epoch: completed epochs.
      key: a typed ``jax.random`` key to save (its ``key_data`` and implementation), or None.
      metadata: JSON-serialisable dict (config, early-stopping state...).
      keep_previous: first copy the existing file to ``<stem>.previous<suffix>`` (atomically
        as well), so the one before the newest survives a later corruption of the newest.

    Returns:
      The path written.

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> from funcbp.train import save_checkpoint, load_checkpoint
      >>> path = tempfile.mkdtemp() + "/latest.ckpt"
      >>> _ = save_checkpoint(path, {"w": jnp.ones(2)}, step=10, epoch=1)
      >>> ckpt = load_checkpoint(path, like={"w": jnp.zeros(2)})
      >>> ckpt.step, ckpt.tree["w"].tolist()
      (10, [1.0, 1.0])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    named = _leaves_with_paths(tree)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, (_, leaf) in enumerate(named)}
    key_impl = None
    if key is not None:
        key_impl = str(jax.random.key_impl(key))
        arrays["key_data"] = np.asarray(jax.random.key_data(key))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    header = {
        "format": _FORMAT,
        "step": int(step),
        "epoch": int(epoch),
        "metadata": metadata or {},
        "key_impl": key_impl,
        "leaves": [
            {"path": name, "shape": list(np.shape(leaf)), "dtype": str(np.asarray(leaf).dtype)}
            for name, leaf in named
        ],
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = json.dumps(header).encode("utf-8")
    blob = _MAGIC + _LEN.pack(len(head)) + head + payload
    if keep_previous and path.exists():
        previous = path.with_name(f"{path.stem}.previous{path.suffix}")
        tmp = previous.with_name(f".{previous.name}.tmp-{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    _write_atomic(path, blob)
    return path


def _read(path: Path) -> tuple[dict, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint file there") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({err})") from None
    if not raw.startswith(_MAGIC):
        raise CheckpointError(f"{path}: not a funcbp checkpoint (bad magic bytes)")
    start = len(_MAGIC) + _LEN.size
    if len(raw) < start:
        raise CheckpointError(f"{path}: truncated checkpoint ({len(raw)} bytes, no header)")
    (head_len,) = _LEN.unpack(raw[len(_MAGIC) : start])
    try:
        header = json.loads(raw[start : start + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint header ({err})") from None
    if header.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {header.get('format')!r}, this funcbp reads {_FORMAT}"
        )
    payload = raw[start + head_len :]
    if len(payload) != header["payload_bytes"]:
        raise CheckpointError(
            f"{path}: truncated checkpoint: payload is {len(payload)} bytes, the header says "
            f"{header['payload_bytes']}"
        )
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CheckpointError(f"{path}: corrupt checkpoint: payload SHA-256 does not match")
    return header, payload


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a checkpoint (step, epoch, metadata, leaves), after checking it.

    Raises:
      CheckpointError: missing, truncated or corrupt file.
    """
    return _read(Path(path))[0]


def _mismatch(name: str, saved: dict, like: Any) -> str | None:
    shape, dtype = list(np.shape(like)), str(np.asarray(like).dtype)
    if saved["shape"] == shape and saved["dtype"] == dtype:
        return None
    return (f"leaf '{name}' is {saved['dtype']}{saved['shape']} in the checkpoint but "
            f"{dtype}{shape} in the model")


def _as_saved_dtype(value: np.ndarray, saved: dict) -> np.ndarray:
    # npz stores ml_dtypes (bfloat16, float8...) as raw void bytes: view them back.
    dtype = jax.numpy.dtype(saved["dtype"])
    return value if value.dtype == dtype else value.view(dtype)


def load_checkpoint(path: str | os.PathLike, like: Any) -> Checkpoint:
    """Read a checkpoint into the structure of ``like``, refusing any mismatch.

    Args:
      path: the checkpoint file.
      like: a template pytree with the model's structure, shapes and dtypes (e.g. freshly
        initialised ``{"params": ..., "opt_state": ...}``); only its structure and leaf
        shapes/dtypes are used.

    Returns:
      A :class:`Checkpoint` whose ``tree`` has ``like``'s structure and the saved values
      (as jax arrays).

    Raises:
      CheckpointError: the file is missing, truncated or corrupt, or a leaf is missing, extra,
        or of another shape or dtype (the message names the leaf, e.g. ``params/dense_0/w``).
    """
    path = Path(path)
    header, payload = _read(path)
    named = _leaves_with_paths(like)
    saved = {leaf["path"]: (i, leaf) for i, leaf in enumerate(header["leaves"])}
    problems = []
    for name, leaf in named:
        if name not in saved:
            problems.append((name, f"leaf '{name}' of the model is missing from the checkpoint"))
        elif (problem := _mismatch(name, saved[name][1], leaf)) is not None:
            problems.append((name, problem))
    known = {name for name, _ in named}
    problems += [(name, f"leaf '{name}' in the checkpoint is not in the model")
                 for name in saved if name not in known]
    if problems:
        # Name the shallowest leaf first: 'params/dense_0/w' rather than its optimiser moments.
        problems.sort(key=lambda item: item[0].count("/"))
        others = [name for name, _ in problems[1:6]]
        more = f" (also: {', '.join(others)}{', ...' if len(problems) > 6 else ''})" \
            if others else ""
        raise CheckpointError(
            f"{path}: {problems[0][1]}{more}; the checkpoint was saved for another model or "
            "optimiser configuration"
        )
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            values = [_as_saved_dtype(archive[f"leaf_{saved[name][0]}"], saved[name][1])
                      for name, _ in named]
            key_data = archive["key_data"] if header.get("key_impl") else None
    except (OSError, ValueError, KeyError) as err:  # pragma: no cover - checksum guards this
        raise CheckpointError(f"{path}: cannot read the payload ({err})") from None
    treedef = tree_util.tree_structure(like)
    tree = tree_util.tree_unflatten(treedef, [jax.numpy.asarray(v) for v in values])
    key = None
    if key_data is not None:
        key = jax.random.wrap_key_data(key_data, impl=header["key_impl"])
    return Checkpoint(tree, header["step"], header["epoch"], key, header.get("metadata", {}))
