"""The run directory's files: its lock, its JSON files, its metrics log; what resuming reads.

One writer at a time: :func:`acquire_lock` creates ``run.lock`` (owner pid, host, start time)
exclusively, refuses a directory another live run holds, and takes over a lock whose owner
died on this host. Every read and write names its file in its error and says what to do;
writes are whole or not at all (JSON through a temporary file and ``os.replace``; a metrics
line that cannot be written completely is cut off again).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from funcbp.train.checkpoint import CheckpointError, newest_checkpoint, read_header
from funcbp.train.config import TrainConfig, check_config_changes, config_changes

__all__ = [
    "LOCK_NAME",
    "RunDirError",
    "RunLock",
    "RunLockedError",
    "acquire_lock",
    "append_jsonl",
    "read_json",
    "read_jsonl",
    "resume_config",
    "resumed_history",
    "write_json",
    "write_jsonl",
]

LOCK_NAME = "run.lock"

_HINTS = {28: "free disk space", 122: "free disk space (quota exceeded)",
          30: "the file system is read-only; choose another --run-dir",
          13: "check the directory's permissions or choose another --run-dir"}


class RunDirError(OSError):
    """A file of a run directory cannot be read or written, or is damaged.

    The message names the file, what is wrong and what to do; ``errno`` is the operating
    system's error number where there is one.
    """


class RunLockedError(RunDirError):
    """Another run (pid and host named in the message) is writing to the run directory."""


def _io_error(path: Path, err: OSError, what: str) -> RunDirError:
    hint = _HINTS.get(err.errno, "fix the cause and run again")
    error = RunDirError(f"{path}: cannot {what} ({err.strerror or err}); {hint}")
    error.errno = err.errno
    return error


def _owner_text(owner: dict) -> str:
    return (f"pid {owner.get('pid')} on host {owner.get('host')!r}, started "
            f"{owner.get('started', '?')}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """The lock :func:`acquire_lock` took; :meth:`release` removes it (if still ours)."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = path, owner

    def release(self) -> None:
        """Remove the lock file, unless another process has taken it over since."""
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()) == self.owner:
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _create_exclusive(lock: Path, text: str) -> bool:
    """Create ``lock`` holding ``text`` in one step; False if it already exists."""
    tmp = lock.with_name(f".{lock.name}.{os.getpid()}.new")  # not a "*.tmp-*" orphan
    tmp.write_text(text)
    try:
        os.link(tmp, lock)  # atomic, and the file is complete when it appears
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: exclusive create, then write
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def acquire_lock(run_dir: str | os.PathLike,
                 warn: Callable[[str], None] = lambda line: None) -> RunLock:
    """Take ``run_dir/run.lock`` for this process, creating ``run_dir`` if needed.

    A lock left by a process that no longer exists on this host is taken over (``warn`` is
    told). Release it with :meth:`RunLock.release` (or use it as a context manager).

    Raises:
      RunLockedError: another live process holds the lock; the message names it.
      RunDirError: the directory cannot be created or written.

    Examples:
      >>> import tempfile
      >>> from funcbp.train.rundir import acquire_lock
      >>> run = tempfile.mkdtemp()
      >>> with acquire_lock(run) as lock:
      ...     acquire_lock(run)
      Traceback (most recent call last):
      ...
      funcbp.train.rundir.RunLockedError: ...
    """
    run_dir = Path(run_dir)
    lock = run_dir / LOCK_NAME
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if _create_exclusive(lock, json.dumps(owner)):
                return RunLock(lock, owner)
            try:
                held = json.loads(lock.read_text())
                pid, host = int(held["pid"]), str(held["host"])
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (ValueError, KeyError, TypeError):
                raise RunLockedError(
                    f"{lock}: the lock file of {run_dir} is unreadable, so another run may be "
                    "writing there; if none is, delete the lock file and run again") from None
            if host == owner["host"] and pid != owner["pid"] and not _alive(pid):
                warn(f"{lock}: taking over the lock of a run that is gone "
                     f"({_owner_text(held)})")
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise RunLockedError(
                f"{run_dir} is in use by another run ({_owner_text(held)}); two runs writing "
                "one directory would mix their checkpoints and metrics. Wait for it to end, "
                f"or choose another --run-dir; if that run is gone, delete {lock}")
    except RunLockedError:
        raise
    except OSError as err:
        raise _io_error(lock, err, "create the run directory's lock file") from None
    raise RunLockedError(f"{lock}: could not take the lock (another run keeps taking it)")


def read_json(path: str | os.PathLike, hint: str) -> Any:
    """The JSON value in ``path``; a missing, unreadable or damaged file raises with ``hint``.

    Raises:
      FileNotFoundError: no file (the message names it and gives ``hint``).
      RunDirError: unreadable or not valid JSON (perhaps cut short by a crash).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; {hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: cannot read it ({err}); {hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON ({err}); the file is damaged, perhaps cut "
                          f"short by a crash; {hint}") from None


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _io_error(path, err, "write it") from None


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented JSON, whole or not at all.

    Raises:
      RunDirError: the file cannot be written (the old file, if any, is unchanged).
    """
    _write_text_atomic(Path(path), json.dumps(value, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace ``path`` by one JSON line per record, whole or not at all."""
    _write_text_atomic(Path(path), "".join(json.dumps(r) + "\n" for r in records))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line; if it cannot be written completely, cut it off again.

    Raises:
      RunDirError: the line could not be written (disk full, read-only); the file holds what
        it held before.
    """
    path = Path(path)
    line = (json.dumps(record) + "\n").encode("utf-8")
    try:
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(line)
                f.flush()
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise
    except OSError as err:
        raise _io_error(path, err, "append a metrics line") from None


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], str | None]:
    """The records of a JSON-lines file, and the text of a partial last line (or None).

    A crash while a line was appended leaves its beginning without an end; that last line is
    returned apart rather than raising, so the caller can drop it and say so. A bad line
    anywhere else is damage, not a crash.

    Raises:
      RunDirError: unreadable, or a line other than the last is not a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: cannot read it ({err})") from None
    lines = text.split("\n")
    records, partial = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if number == len(lines):  # the last line, with no newline after it
                partial = line
                break
            raise RunDirError(f"{path}: line {number} is not a JSON record ({err}); the file "
                              "is damaged: fix or delete that line") from None
        records.append(record)
    return records, partial


# ------------------------------------------------------------------------------ resuming

def resume_config(run_dir: Path, allow: Iterable[str], changes: dict,
                  warn: Callable[[str], None], write: bool = True) -> tuple[TrainConfig, Path]:
    """The config to resume ``run_dir`` with, and the checkpoint to resume from.

    The config saved in the newest complete checkpoint is the truth; ``config.json`` and
    ``changes`` may differ from it only in :data:`funcbp.train.RESUME_SAFE_FIELDS` named in
    ``allow``. A missing ``config.json`` is restored from the checkpoint (``warn`` is told);
    with ``write``, ``config.json`` is rewritten when it differs from the result.

    Raises:
      CheckpointError: no complete checkpoint, or a damaged one.
      ConfigChangeError: a field differs that may not, or is not allowed to.
      RunDirError: ``config.json`` is unreadable or not valid JSON.
    """
    latest = run_dir / "checkpoints" / "latest.ckpt"
    ckpt = newest_checkpoint(latest)
    if ckpt is None:
        raise CheckpointError(
            f"{latest}: no checkpoint in {run_dir}: the run stopped before its first epoch "
            f"ended, so there is nothing to resume; start it again with the same options "
            f"(funcbp train --run-dir {run_dir} ...)")
    if ckpt != latest:
        warn(f"{latest} is missing: a save was interrupted between its two renames; resuming "
             f"from {ckpt.name}, the newest complete checkpoint")
    saved = read_header(ckpt)["metadata"].get("config")
    if saved is not None and not isinstance(saved, dict):
        raise CheckpointError(f"{ckpt}: the saved config is {type(saved).__name__}, not a JSON "
                              "object; the checkpoint was not written by funcbp train")
    config_path = run_dir / "config.json"
    restore = "delete it and resume again: it is restored from the checkpoint"
    current = None
    if config_path.exists():
        current = read_json(config_path, hint=restore if saved else
                                   "restore the file from a copy")
        if not isinstance(current, dict):
            raise RunDirError(f"{config_path}: not a JSON object; {restore}")
    if saved is None:  # a checkpoint written by a trainer that did not save its config
        if current is None:
            raise FileNotFoundError(f"{config_path}: no config.json, and {ckpt} holds no "
                                    "config; restore config.json from a copy")
        saved = current
    if current is None:
        warn(f"{config_path} is missing; restored from the config saved in {ckpt.name}")
    on_disk = current
    current = {**(current if current is not None else saved), **changes}
    source = str(config_path) + (" with the options given to resume" if changes else "")
    check_config_changes(config_changes(saved, current), allow, source, str(ckpt))
    try:
        config = TrainConfig.from_json(current)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{config_path}: {err}") from None
    if on_disk != config.to_json() and write:
        write_json(config_path, config.to_json())
    return config, ckpt


def resumed_history(metrics_path: Path, ckpt: Any, warn: Callable[[str], None]) -> list[dict]:
    """The epoch records up to the checkpoint's epoch: the checkpoint's own, else the file's.

    A partial last line of ``metrics.jsonl`` (a crash while it was written), a missing file,
    or epoch lines that differ from the checkpoint's history are reported through ``warn``.
    """
    records = None
    if metrics_path.exists():
        records, partial = read_jsonl(metrics_path)
        if partial is not None:
            warn(f"{metrics_path}: dropped a partial last line (a crash while it was written): "
                 f"{partial[:60]!r}")
    from_file = [r for r in records or [] if r.get("type") == "epoch"
                 and isinstance(r.get("epoch"), int) and r["epoch"] <= ckpt.epoch]
    saved = ckpt.metadata.get("history")
    if saved is not None and not (isinstance(saved, list)
                                  and all(isinstance(r, dict) for r in saved)):
        raise CheckpointError("the checkpoint's saved history is not a list of records; the "
                              "checkpoint was not written by funcbp train")
    if saved is None:  # a checkpoint written before the history was saved in it
        if records is None:
            warn(f"{metrics_path} is missing and the checkpoint holds no history: the "
                 f"metrics of epochs 1-{ckpt.epoch} are lost; the file restarts empty")
        return from_file
    if records is None:
        warn(f"{metrics_path} is missing; rebuilt the {len(saved)} epoch lines from the "
             "checkpoint")
    elif from_file != saved:
        warn(f"{metrics_path}: its epoch lines differ from the checkpoint's history (edited or "
             "damaged); rewritten from the checkpoint")
    return saved
