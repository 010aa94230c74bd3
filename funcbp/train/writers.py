"""Metric writers: per-step scalars, per-epoch records and histograms, to files and TensorBoard.

``metrics.jsonl`` (one line per epoch, written by the trainer) stays the record the run
directory is rebuilt from; these writers add views of it:

==============  ==========================================================================
``jsonl``       ``steps.jsonl``: one line per logged step (``log_every``)
``csv``         ``steps.csv`` (logged steps) and ``metrics.csv`` (one row per epoch)
``tensorboard`` TensorBoard event files under ``tensorboard/`` through ``tensorboardX``
                (``pip install tensorboardX``; no TensorFlow): every scalar, the epoch
                records under ``epoch/``, per-layer gradient norms under ``grad_norm/``,
                histograms of parameters and gradients under ``params/`` and ``grads/``
==============  ==========================================================================

A resumed run first cuts what was logged after its checkpoint's step (steps logged by the
interrupted run past its last checkpoint are trained again); TensorBoard is told the same
through ``purge_step``. :func:`read_event_file` reads an event file back without TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from funcbp.train import rundir

__all__ = [
    "WRITERS",
    "CsvWriter",
    "JsonlWriter",
    "MetricWriter",
    "MultiWriter",
    "TensorBoardWriter",
    "make_writers",
    "read_event_file",
]


class MetricWriter:
    """What a writer does; each method may be a no-op. Values are Python floats."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars of one training step (``loss``, ``lr``, ``grad_norm``, ...)."""

    def histograms(self, step: int, values: dict[str, np.ndarray]) -> None:
        """Histograms of arrays (``params/dense_0/w``), at ``step``."""

    def epoch(self, record: dict, history: Sequence[dict]) -> None:
        """An epoch's record (the ``metrics.jsonl`` line) and the history up to it."""

    def close(self) -> None:
        """Flush and close the files."""


def _flat_scalars(record: dict) -> dict[str, float]:
    """The numeric top-level fields of a record (nested dicts and strings left out)."""
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "type"}


def _cut_lines_after(path: Path, step: int, parse) -> None:
    """Drop the lines of ``path`` whose step is past ``step`` (and a partial last line)."""
    if not path.exists():
        return
    kept, lines = [], path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if i == len(lines) - 1 and not line.endswith("\n"):
            break  # cut short by a crash
        at = parse(line, i)
        if at is None or at <= step:
            kept.append(line)
    if len(kept) != len(lines):
        rundir._write_text_atomic(path, "".join(kept))


class JsonlWriter(MetricWriter):
    """``steps.jsonl``: ``{"step": s, "loss": ..., ...}`` per logged step."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = Path(run_dir) / "steps.jsonl"
        if resume_step is not None:
            _cut_lines_after(self.path, resume_step,
                             lambda line, i: json.loads(line).get("step"))

    def scalars(self, step, values):
        record = {"step": step}
        for k, v in values.items():
            record[k] = v if not isinstance(v, dict) else {a: b for a, b in v.items()}
        rundir.append_jsonl(self.path, record)


class CsvWriter(MetricWriter):
    """``steps.csv`` (one row per logged step) and ``metrics.csv`` (one row per epoch).

    The step columns are fixed by the first row written; ``metrics.csv`` is rewritten whole
    from the history each epoch, so it always agrees with ``metrics.jsonl``.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.steps_path = Path(run_dir) / "steps.csv"
        self.epochs_path = Path(run_dir) / "metrics.csv"
        self.columns: list[str] | None = None
        if self.steps_path.exists():
            with open(self.steps_path, newline="") as f:
                header = next(csv.reader(f), None)
            self.columns = header or None
            if resume_step is not None and header:
                _cut_lines_after(self.steps_path, resume_step,
                                 lambda line, i: None if i == 0 else int(float(
                                     line.split(",", 1)[0])))

    def scalars(self, step, values):
        row = {"step": step, **{k: v for k, v in values.items() if not isinstance(v, dict)}}
        new = self.columns is None
        if new:
            self.columns = list(row)
        buffer = io.StringIO()
        w = csv.DictWriter(buffer, self.columns, extrasaction="ignore", lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow(row)
        try:
            with open(self.steps_path, "a") as f:
                f.write(buffer.getvalue())
        except OSError as err:
            raise rundir._io_error(self.steps_path, err, "append a row") from None

    def epoch(self, record, history):
        rows = [{"epoch": r.get("epoch"), **_flat_scalars(r)} for r in history]
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        w = csv.DictWriter(buffer, columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        rundir._write_text_atomic(self.epochs_path, buffer.getvalue())


class TensorBoardWriter(MetricWriter):
    """TensorBoard event files in ``run_dir/tensorboard`` through ``tensorboardX``.

    Raises:
      ImportError: tensorboardX is not installed (``pip install tensorboardX``).
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("the tensorboard writer needs tensorboardX (no TensorFlow): "
                              "pip install tensorboardX, or drop 'tensorboard' from "
                              "writers") from None
        self.logdir = Path(run_dir) / "tensorboard"
        # purge_step: TensorBoard hides what an earlier file logged at or after this step.
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(self.logdir), purge_step=purge, flush_secs=10)

    def scalars(self, step, values):
        for name, value in values.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    self.writer.add_scalar(f"{name}/{sub}", v, step)
            else:
                self.writer.add_scalar(f"train/{name}", value, step)

    def histograms(self, step, values):
        for name, value in values.items():
            self.writer.add_histogram(name, np.asarray(value, np.float64).ravel(), step)

    def epoch(self, record, history):
        for name, value in _flat_scalars(record).items():
            if name not in ("epoch", "step"):
                self.writer.add_scalar(f"epoch/{name}", value, record["step"])
        self.writer.flush()

    def close(self):
        self.writer.close()


WRITERS = {"jsonl": JsonlWriter, "csv": CsvWriter, "tensorboard": TensorBoardWriter}


class MultiWriter(MetricWriter):
    """Several writers as one."""

    def __init__(self, writers: Iterable[MetricWriter]):
        self.writers = list(writers)

    def scalars(self, step, values):
        for w in self.writers:
            w.scalars(step, values)

    def histograms(self, step, values):
        for w in self.writers:
            w.histograms(step, values)

    def epoch(self, record, history):
        for w in self.writers:
            w.epoch(record, history)

    def close(self):
        for w in self.writers:
            w.close()


def parse_writer_names(names: str) -> list[str]:
    """``"csv,tensorboard"`` -> ``["csv", "tensorboard"]``, refusing unknown names."""
    out = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in out if n not in WRITERS]
    if unknown:
        raise ValueError(f"unknown writer {unknown[0]!r}: choose from {', '.join(WRITERS)}")
    return out


def make_writers(names: str, run_dir: str | os.PathLike,
                 resume_step: int | None = None) -> MultiWriter:
    """The writers named in ``names`` (``"jsonl,csv,tensorboard"``) for ``run_dir``.

    Args:
      names: comma-separated names from :data:`WRITERS`; empty for none.
      run_dir: the run directory.
      resume_step: when resuming, the checkpoint's step: what was logged after it is cut.

    Examples:
      >>> import tempfile
      >>> from funcbp.train.writers import make_writers
      >>> w = make_writers("jsonl,csv", tempfile.mkdtemp())
      >>> w.scalars(10, {"loss": 0.5, "lr": 0.1}); w.close()
    """
    return MultiWriter(WRITERS[n](Path(run_dir), resume_step) for n in parse_writer_names(names))


# ------------------------------------------------------------------ reading event files

def _masked_crc_ok(data: bytes, crc: int) -> bool:
    try:
        from tensorboardX.crc32c import crc32c
    except ImportError:  # pragma: no cover - nothing to check against
        return True
    value = crc32c(data)
    masked = ((value >> 15) | (value << 17)) + 0xA282EAD8
    return (masked & 0xFFFFFFFF) == crc


def read_event_file(path: str | os.PathLike) -> list[dict]:
    """The scalar and histogram events of a TensorBoard event file, without TensorFlow.

    Decodes the TFRecord framing (length, CRCs) and each ``Event`` with the protobuf classes
    that ``tensorboardX`` ships.

    Returns:
      ``[{"step", "tag", "value"}]`` for scalars and ``[{"step", "tag", "histogram": {"min",
      "max", "num", "sum"}}]`` for histograms, in file order.

    Raises:
      ValueError: the file is truncated or a record fails its CRC.
    """
    from tensorboardX.proto import event_pb2

    raw = Path(path).read_bytes()
    events, at = [], 0
    while at < len(raw):
        if at + 12 > len(raw):
            raise ValueError(f"{path}: truncated record header at byte {at}")
        (length,) = struct.unpack("<Q", raw[at: at + 8])
        (length_crc,) = struct.unpack("<I", raw[at + 8: at + 12])
        data = raw[at + 12: at + 12 + length]
        if len(data) != length or at + 16 + length > len(raw):
            raise ValueError(f"{path}: truncated record at byte {at}")
        (data_crc,) = struct.unpack("<I", raw[at + 12 + length: at + 16 + length])
        if not (_masked_crc_ok(raw[at: at + 8], length_crc) and _masked_crc_ok(data, data_crc)):
            raise ValueError(f"{path}: CRC mismatch in the record at byte {at}")
        at += 16 + length
        event = event_pb2.Event.FromString(data)
        for value in event.summary.value:
            if value.HasField("histo"):
                h = value.histo
                events.append({"step": event.step, "tag": value.tag, "histogram": {
                    "min": h.min, "max": h.max, "num": h.num, "sum": h.sum}})
            elif value.WhichOneof("value") == "simple_value":
                events.append({"step": event.step, "tag": value.tag,
                               "value": value.simple_value})
    return events
