"""Checkpoints: a pytree of arrays plus step, epoch, PRNG key and metadata in one checked file.

File layout (``.ckpt``, format 2)::

    b"FUNCBP-CKPT\\n"                 magic line
    8 bytes, little-endian uint64     length H of the header
    H bytes                           JSON header: format, step, epoch, metadata, data_state,
                                      the leaves (key path, shape, dtype, in tree order), the
                                      PRNG key's implementation, and the payload's size
    payload_bytes bytes               the payload: an ``.npz`` archive, ``leaf_<i>`` arrays
    32 bytes                          SHA-256 of everything before it

The digest covers the header as well as the payload, so a flipped bit anywhere (an epoch count,
the saved config, the key) is refused with :class:`CheckpointError` instead of loading an
altered run. Version-1 files (digest of the payload only, in the header) are still read.

Writes are atomic and crash-consistent: the new file is written to a temporary name in the same
directory, flushed and ``fsync``-ed; only then (``keep_previous``) is the current file renamed
to ``<stem>.previous<suffix>`` and the temporary file renamed over it. A process killed at any
point leaves either the old file, or the old file as ``previous`` and no ``latest`` (the newest
complete checkpoint is then ``previous``, see :func:`newest_checkpoint`), or both new; never two
files of the same step, never a half-written one under a final name. Temporary files of a
killed save are removed by :func:`remove_temporary_files` (the trainer calls it at start).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax import tree_util

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "CheckpointWriteError",
    "key_path_str",
    "load_checkpoint",
    "newest_checkpoint",
    "previous_path",
    "read_header",
    "remove_temporary_files",
    "save_checkpoint",
]

_MAGIC = b"FUNCBP-CKPT\n"
FORMAT = 2
_READABLE = (1, 2)
_LEN = struct.Struct("<Q")
_DIGEST = 32
_TMP = ".tmp-"

# Test seam: called as ``_before_step(step, path)`` just before each file-system step of a save
# ("open", "write", "fsync", "close", "rotate", "replace", "fsync_dir"). The fault-injection
# tests make it SIGKILL the process at step k, or raise OSError(ENOSPC) to simulate a full disk.
_before_step: Callable[[str, Path], None] | None = None


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or does not match the model.

    The message names the file and what is wrong; for a mismatch, the path of the leaf
    (``params/dense_0/w``).
    """


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only directory, permissions).

    The message names the file, the operating system's reason, and says that the previous
    checkpoint is intact. ``errno`` is the underlying error's.
    """


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns.

    Attributes:
      tree: the restored pytree (the template's structure, the file's values); with no
        template, a dict from leaf path (``params/dense_0/w``) to array.
      step: the global step count saved with it.
      epoch: the number of completed epochs saved with it.
      key: the saved ``jax.random`` key, or ``None``.
      metadata: the JSON-serialisable dict saved with it (trainer state, config, history).
      data_state: the JSON-serialisable state of the data order saved with it (e.g. a data
        iterator's position for a mid-epoch resume), or ``None``.
      format: the file's format version.
    """

    tree: Any
    step: int
    epoch: int
    key: jax.Array | None
    metadata: dict
    data_state: Any = None
    format: int = FORMAT


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


def previous_path(path: str | os.PathLike) -> Path:
    """``run/checkpoints/latest.ckpt`` -> ``run/checkpoints/latest.previous.ckpt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def _leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    flat, _ = tree_util.tree_flatten_with_path(tree)
    return [(key_path_str(path), leaf) for path, leaf in flat]


def _step(name: str, path: Path) -> None:
    if _before_step is not None:
        _before_step(name, path)


def _fsync_dir(directory: Path) -> None:
    # Makes the renames themselves durable; not every platform can open a directory.
    _step("fsync_dir", directory)
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_error(path: Path, err: OSError, what: str) -> CheckpointWriteError:
    reason = err.strerror or str(err)
    hint = {28: "free disk space", 30: "the file system is read-only; choose another directory",
            13: "check the directory's permissions", 122: "free disk space (quota exceeded)"}
    error = CheckpointWriteError(
        f"{path}: cannot {what} ({reason}); {hint.get(err.errno, 'fix the cause')} and run "
        "again (funcbp train --resume continues from the last complete checkpoint, which is "
        "intact)")
    error.errno = err.errno
    return error


def _serialise(tree: Any, step: int, epoch: int, key: jax.Array | None, metadata: dict | None,
               data_state: Any) -> bytes:
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
        "format": FORMAT,
        "step": int(step),
        "epoch": int(epoch),
        "metadata": metadata or {},
        "data_state": data_state,
        "key_impl": key_impl,
        "leaves": [{"path": name, "shape": list(a.shape), "dtype": str(a.dtype)}
                   for (name, _), a in zip(named, arrays.values(), strict=False)],
        "payload_bytes": len(payload),
    }
    try:
        head = json.dumps(header).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint metadata and data_state must be JSON-serialisable: "
                        f"{err}") from None
    body = _MAGIC + _LEN.pack(len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def save_checkpoint(
    path: str | os.PathLike,
    tree: Any,
    *,
    step: int,
    epoch: int,
    key: jax.Array | None = None,
    metadata: dict | None = None,
    data_state: Any = None,
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
      metadata: JSON-serialisable dict (config, early-stopping state, history...).
      data_state: JSON-serialisable state of the data order (e.g. a data iterator's position),
        returned as :attr:`Checkpoint.data_state`.
      keep_previous: keep the file being replaced as ``<stem>.previous<suffix>``. The new file
        is complete and ``fsync``-ed before the old one is renamed, so a crash never leaves
        two files of the same step, nor a partial file under either name.

    Returns:
      The path written.

    Raises:
      CheckpointWriteError: the file could not be written (disk full, read-only); the
        previous checkpoint is left intact and no temporary file remains.

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
    blob = _serialise(tree, step, epoch, key, metadata, data_state)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(path.parent, err, "create the checkpoint directory") from None
    tmp = path.with_name(f".{path.name}{_TMP}{os.getpid()}")
    try:
        _step("open", tmp)
        with open(tmp, "wb") as f:
            _step("write", tmp)
            f.write(blob)
            f.flush()
            _step("fsync", tmp)
            os.fsync(f.fileno())
            _step("close", tmp)
    except Exception as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise _write_error(path, err, "write the checkpoint") from None
        raise
    rotated = False
    try:
        if keep_previous and path.exists():
            _step("rotate", path)
            os.replace(path, previous_path(path))
            rotated = True
            _fsync_dir(path.parent)
        _step("replace", path)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if rotated:  # put the newest complete checkpoint back under its usual name
            with contextlib.suppress(OSError):
                os.replace(previous_path(path), path)
        raise _write_error(path, err, "move the new checkpoint into place") from None
    _fsync_dir(path.parent)
    return path


def remove_temporary_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed saves left in ``directory``; return their paths.

    Only call it while no other process saves there (the trainer holds the run directory's
    lock). Temporary files are named ``.<name>.tmp-<pid>``.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for tmp in sorted(directory.glob(f".*{_TMP}*")):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def newest_checkpoint(path: str | os.PathLike) -> Path | None:
    """``path`` if it exists, else its ``previous`` file if that exists, else None.

    ``latest.ckpt`` is missing but ``latest.previous.ckpt`` is there only when a save was
    killed between its two renames; the previous file is then the newest complete checkpoint.
    """
    path = Path(path)
    if path.exists():
        return path
    previous = previous_path(path)
    return previous if previous.exists() else None


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; restore the file, or resume from "
                           f"{previous_path(path).name} if it is there")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_header(path: Path, header: Any) -> dict:
    """Refuse any header whose fields are not what :func:`save_checkpoint` writes."""
    if not isinstance(header, dict):
        raise _fail(path, "corrupt checkpoint header (not a JSON object)")
    fmt = header.get("format")
    if fmt not in _READABLE:
        raise CheckpointError(f"{path}: checkpoint format {fmt!r}; this funcbp reads formats "
                              f"{', '.join(map(str, _READABLE))}: update funcbp to read it")
    wants = {"step": _is_int, "epoch": _is_int, "payload_bytes": _is_int,
             "metadata": lambda v: isinstance(v, dict),
             "key_impl": lambda v: v is None or isinstance(v, str),
             "leaves": lambda v: isinstance(v, list)}
    if fmt == 1:
        wants["payload_sha256"] = lambda v: isinstance(v, str) and len(v) == 64
    for field, ok in wants.items():
        if field not in header or not ok(header[field]):
            raise _fail(path, f"corrupt checkpoint header: field {field!r} is "
                              f"{header.get(field, 'missing')!r}")
    for i, leaf in enumerate(header["leaves"]):
        valid = (isinstance(leaf, dict) and isinstance(leaf.get("path"), str)
                 and isinstance(leaf.get("dtype"), str) and isinstance(leaf.get("shape"), list)
                 and all(_is_int(d) for d in leaf["shape"]))
        if valid:
            try:
                jax.numpy.dtype(leaf["dtype"])
            except TypeError:
                valid = False
        if not valid:
            raise _fail(path, f"corrupt checkpoint header: leaf {i} is {leaf!r}")
    return header


def _read(path: Path) -> tuple[dict, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint file there") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({err.strerror or err}); "
                              "check the file's permissions") from None
    if not raw.startswith(_MAGIC):
        raise _fail(path, "not a funcbp checkpoint (bad magic bytes)")
    start = len(_MAGIC) + _LEN.size
    if len(raw) < start:
        raise _fail(path, f"truncated checkpoint ({len(raw)} bytes, no header)")
    (head_len,) = _LEN.unpack(raw[len(_MAGIC): start])
    if head_len > len(raw) - start:
        raise _fail(path, f"truncated or corrupt checkpoint: the header length says {head_len} "
                          f"bytes but only {len(raw) - start} follow")
    # A format-2 file is whole exactly when its trailing digest matches; check that before
    # believing any field of the header (a flipped "format" must not read as "newer funcbp").
    whole = (len(raw) >= start + _DIGEST
             and hashlib.sha256(raw[:-_DIGEST]).digest() == raw[-_DIGEST:])
    try:
        header = json.loads(raw[start: start + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise _fail(path, f"truncated or corrupt checkpoint header ({err})") from None
    fmt = header.get("format") if isinstance(header, dict) else None
    if whole:
        header = _check_header(path, header)
        payload = raw[start + head_len: -_DIGEST]
    elif fmt == 1:
        header = _check_header(path, header)
        payload = raw[start + head_len:]
        if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
            what = "truncated" if len(payload) < header["payload_bytes"] else "corrupt"
            raise _fail(path, f"{what} checkpoint: the payload SHA-256 does not match")
    else:
        size = header.get("payload_bytes") if isinstance(header, dict) else None
        expected = start + head_len + size + _DIGEST if _is_int(size) else None
        if expected is not None and expected > len(raw):
            raise _fail(path, f"truncated checkpoint: {len(raw)} bytes, the header says "
                              f"{expected}")
        newer = (f", or written by a newer funcbp (format {fmt})"
                 if _is_int(fmt) and fmt > FORMAT else "")
        raise _fail(path, f"corrupt checkpoint: the SHA-256 of its contents does not "
                          f"match{newer}")
    if len(payload) != header["payload_bytes"]:
        raise _fail(path, f"truncated or corrupt checkpoint: payload is {len(payload)} bytes, "
                          f"the header says {header['payload_bytes']}")
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


def _as_saved(value: np.ndarray, saved: dict) -> np.ndarray:
    # npz stores ml_dtypes (bfloat16, float8...) as raw void bytes: view them back.
    dtype = jax.numpy.dtype(saved["dtype"])
    value = value if value.dtype == dtype else value.view(dtype)
    if list(value.shape) != saved["shape"]:
        raise ValueError(f"leaf '{saved['path']}' holds {value.dtype}{list(value.shape)}, the "
                         f"header says {saved['dtype']}{saved['shape']}")
    return value


def _check_leaves(path: Path, header: dict, like: Any) -> dict:
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
        more = (f" (also: {', '.join(others)}{', ...' if len(problems) > 6 else ''})"
                if others else "")
        raise CheckpointError(
            f"{path}: {problems[0][1]}{more}; the checkpoint was saved for another model or "
            "optimiser configuration"
        )
    return saved


def load_checkpoint(path: str | os.PathLike, like: Any = None) -> Checkpoint:
    """Read a checkpoint into the structure of ``like``, refusing any mismatch.

    Args:
      path: the checkpoint file.
      like: a template pytree with the model's structure, shapes and dtypes (e.g. freshly
        initialised ``{"params": ..., "opt_state": ...}``); only its structure and leaf
        shapes/dtypes are used. None: return the leaves as a flat ``{path: array}`` dict.

    Returns:
      A :class:`Checkpoint` whose ``tree`` has ``like``'s structure and the saved values
      (as jax arrays).

    Raises:
      CheckpointError: the file is missing, truncated or corrupt (any changed byte, header
        included), or a leaf is missing, extra, or of another shape or dtype (the message
        names the leaf, e.g. ``params/dense_0/w``).
    """
    path = Path(path)
    header, payload = _read(path)
    if like is None:
        saved = {leaf["path"]: (i, leaf) for i, leaf in enumerate(header["leaves"])}
        names = list(saved)
    else:
        saved = _check_leaves(path, header, like)
        names = [name for name, _ in _leaves_with_paths(like)]
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            values = [_as_saved(archive[f"leaf_{saved[name][0]}"], saved[name][1])
                      for name in names]
            key_data = archive["key_data"] if header.get("key_impl") else None
        key = None
        if key_data is not None:
            key = jax.random.wrap_key_data(key_data, impl=header["key_impl"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        # Only a file written by something else than save_checkpoint gets here (the digest
        # passed): report it rather than a numpy or jax exception.
        raise CheckpointError(f"{path}: cannot read the payload ({err})") from None
    arrays = [jax.numpy.asarray(v) for v in values]
    if like is None:
        tree = dict(zip(names, arrays, strict=True))
    else:
        tree = tree_util.tree_unflatten(tree_util.tree_structure(like), arrays)
    return Checkpoint(tree, header["step"], header["epoch"], key, header["metadata"],
                      header.get("data_state"), header["format"])
