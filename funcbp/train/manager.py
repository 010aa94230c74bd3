"""Checkpoint management: when to save, what to keep, saving in the background.

:class:`CheckpointManager` is the trainer's policy over :func:`save_checkpoint` (the file
format and its crash consistency live in ``checkpoint.py``), in the spirit of orbax's
``CheckpointManager``::

    checkpoints/latest.ckpt            the newest save: what resuming starts from
    checkpoints/latest.previous.ckpt   the save before it
    checkpoints/step_00000120.ckpt     the last ``keep_last`` saves, by global step
    checkpoints/best.ckpt              the parameters with the best ``best_metric``

A save first copies the arrays to host memory (``jax.device_get``); with ``async_save`` the
rest (serialising, hashing, writing, ``fsync``, renaming) runs on a background thread while
training goes on, so a save blocks training only for that copy (and, if the previous save is
still being written, until it ends: one save in flight at a time). A crash at any point of a
background save leaves the previous checkpoint usable, exactly as for a foreground one: the
thread calls the same atomic :func:`save_checkpoint`. An error of a background save (disk
full) is raised by the next :meth:`~CheckpointManager.save` or :meth:`~CheckpointManager.wait`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcbp.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    newest_checkpoint,
    save_checkpoint,
)

__all__ = ["CheckpointManager", "metric_mode"]

_NUMBERED = re.compile(r"^step_(\d+)\.ckpt$")


def metric_mode(metric: str, mode: str = "auto") -> str:
    """``"min"`` or ``"max"``: ``auto`` is ``max`` for accuracies, ``min`` otherwise.

    Examples:
      >>> from funcbp.train.manager import metric_mode
      >>> metric_mode("val_loss"), metric_mode("val_accuracy")
      ('min', 'max')
    """
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"best_mode {mode!r}: choose auto, min or max")
    if mode != "auto":
        return mode
    return "max" if "accuracy" in metric else "min"


class CheckpointManager:
    """Saves every ``save_every_steps`` steps and/or ``save_every_epochs`` epochs, keeps the
    last ``keep_last`` by step and the best by ``best_metric``, optionally in the background.

    Args:
      directory: the checkpoint directory (``run/checkpoints``).
      save_every_steps: save after every this many global steps (0: not by steps).
      save_every_epochs: save at the end of every this many epochs (0: not by epochs); the
        last epoch is always saved.
      keep_last: also keep the last ``keep_last`` saves as ``step_<step>.ckpt`` (hard links of
        ``latest.ckpt``: no second write); 0 keeps only ``latest`` and ``latest.previous``.
      best_metric: the epoch record's field :meth:`is_better` compares (``val_loss``).
      best_mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracies).
      async_save: write on a background thread (see the module's docstring).

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> from funcbp.train.manager import CheckpointManager
      >>> m = CheckpointManager(tempfile.mkdtemp(), save_every_steps=10, keep_last=2)
      >>> for step in (10, 20, 30):
      ...     m.save({"w": jnp.full(2, float(step))}, step=step, epoch=0)
      >>> m.wait(); m.steps()
      [20, 30]
      >>> m.restore({"w": jnp.zeros(2)}).tree["w"].tolist()
      [30.0, 30.0]
    """

    def __init__(self, directory: str | os.PathLike, *, save_every_steps: int = 0,
                 save_every_epochs: int = 1, keep_last: int = 0,
                 best_metric: str = "val_loss", best_mode: str = "auto",
                 async_save: bool = False):
        for name, value in (("save_every_steps", save_every_steps),
                            ("save_every_epochs", save_every_epochs), ("keep_last", keep_last)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"CheckpointManager {name}={value!r}: must be an integer >= 0")
        self.directory = Path(directory)
        self.latest = self.directory / "latest.ckpt"
        self.best = self.directory / "best.ckpt"
        self.save_every_steps, self.save_every_epochs = save_every_steps, save_every_epochs
        self.keep_last, self.async_save = keep_last, async_save
        self.best_metric, self.mode = best_metric, metric_mode(best_metric, best_mode)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------- the policy

    def should_save_step(self, step: int) -> bool:
        """Whether to save after global step ``step`` inside an epoch."""
        return bool(self.save_every_steps) and step % self.save_every_steps == 0

    def should_save_epoch(self, epoch: int, *, last: bool) -> bool:
        """Whether to save at the end of epoch ``epoch`` (1-based); always for the last."""
        return last or (bool(self.save_every_epochs) and epoch % self.save_every_epochs == 0)

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of :attr:`best_metric` beats ``best`` (None: nothing yet)."""
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best

    # ------------------------------------------------------------------- saving

    def save(self, tree: Any, *, step: int, epoch: int, key: jax.Array | None = None,
             metadata: dict | None = None, data_state: Any = None) -> None:
        """Save ``tree`` as ``latest.ckpt`` (the old one kept as ``latest.previous.ckpt``).

        Blocks for the copy to host; with ``async_save`` the write happens in the background.

        Raises:
          CheckpointWriteError: this save (synchronous) or the previous one (background)
            could not be written; the previous complete checkpoint is intact.
        """
        self.wait()
        host = jax.device_get(tree)
        key_data = None if key is None else (np.asarray(jax.random.key_data(key)),
                                             jax.random.key_impl(key))

        def write():
            k = None if key_data is None else jax.random.wrap_key_data(key_data[0],
                                                                       impl=key_data[1])
            save_checkpoint(self.latest, host, step=step, epoch=epoch, key=k,
                            metadata=metadata, data_state=data_state, keep_previous=True)
            self._keep_numbered(step)

        if not self.async_save:
            write()
            return

        def run():
            try:
                write()
            except BaseException as err:  # handed to the main thread at the next save/wait
                self._error = err

        self._thread = threading.Thread(target=run, name="funcbp-checkpoint", daemon=False)
        self._thread.start()

    def save_best(self, tree: Any, *, step: int, epoch: int, value: float,
                  metadata: dict | None = None) -> None:
        """Write ``best.ckpt`` (synchronously: it is small and rare)."""
        self.wait()
        save_checkpoint(self.best, jax.device_get(tree), step=step, epoch=epoch,
                        metadata={self.best_metric: value, **(metadata or {})})

    def wait(self) -> None:
        """Wait for a background save to end; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        """Wait for the last save (same as :meth:`wait`)."""
        self.wait()

    def _keep_numbered(self, step: int) -> None:
        if not self.keep_last:
            return
        target = self.directory / f"step_{step:08d}.ckpt"
        tmp = self.directory / f".{target.name}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(self.latest, tmp)
        except OSError:  # no hard links here: a copy, still renamed into place whole
            shutil.copyfile(self.latest, tmp)
        os.replace(tmp, target)
        for old in self.steps()[:-self.keep_last]:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"step_{old:08d}.ckpt").unlink()

    # ------------------------------------------------------------------- reading

    def steps(self) -> list[int]:
        """The global steps of the numbered checkpoints kept, oldest first."""
        if not self.directory.is_dir():
            return []
        found = (_NUMBERED.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m[1]) for m in found if m)

    def newest(self) -> Path | None:
        """The newest complete checkpoint file (``latest``, or ``latest.previous`` when a save
        was killed between its renames), or None."""
        return newest_checkpoint(self.latest)

    def restore(self, like: Any = None, step: int | None = None) -> Checkpoint:
        """Load the newest checkpoint, or the numbered one of ``step``.

        Raises:
          CheckpointError: there is none, or it is damaged or of another model.
        """
        self.wait()
        if step is not None:
            path = self.directory / f"step_{step:08d}.ckpt"
            if not path.exists():
                raise CheckpointError(f"{path}: no checkpoint of step {step}; kept steps: "
                                      f"{self.steps() or 'none'}")
        else:
            path = self.newest()
            if path is None:
                raise CheckpointError(f"{self.latest}: no checkpoint saved yet")
        return load_checkpoint(path, like=like)
