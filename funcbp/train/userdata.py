"""Your data for the trainer: arrays, an ``.npz`` file, a loader, any iterable of batches, grain.

What :func:`funcbp.train.fit` accepts as ``data`` and ``funcbp train --data`` as a string:

=====================================  ===================================================
``(x, y)``                             numpy or jax arrays, first axis the examples; the
                                       validation split is drawn from them
                                       (``val_fraction``, stratified for integer labels)
``{"x_train", "y_train", ...}``        a mapping of arrays, as in an ``.npz`` file: also
                                       ``x_val``/``y_val`` and ``x_test``/``y_test``
``"path/to/data.npz"``                 the same arrays read from the file
``"pkg.module:loader"``                ``loader()`` imported (from the working directory
                                       too) and called; it returns any of these
an iterable of batches                 each batch ``(x, y)`` or a dict with ``x``/``y`` (or
                                       ``image``/``label``); iterated again every epoch
a function ``epoch -> iterable``       a new iterable per epoch (e.g. reshuffled)
a grain data set                       ``grain.MapDataset``/``IterDataset``/``DataLoader``,
                                       or anything whose iterator has ``get_state`` and
                                       ``set_state``: the state goes in the checkpoint
=====================================  ===================================================

Arrays live on the device and each epoch's order is drawn there from the run's key, so a run
resumed mid-epoch replays the same batches. An iterable is resumed mid-epoch by restoring its
iterator's state when it has one (grain), otherwise by skipping the batches already trained:
bit-exact when iterating it again gives the same batches.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcbp import data as fdata
from funcbp import losses

__all__ = [
    "PYTHON",
    "ArrayData",
    "IterableData",
    "UserData",
    "as_batch",
    "import_spec",
    "load_npz",
    "resolve_data",
]

#: What ``TrainConfig.data`` / ``model`` say for objects passed to ``fit`` from Python.
PYTHON = "<python>"
_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


class ArrayData(NamedTuple):
    """One split as arrays: ``x`` and ``y`` with the same first-axis length."""

    x: Any
    y: Any


class IterableData:
    """Batches from an iterable, a function ``epoch -> iterable``, or a grain data set.

    Args:
      source: the iterable (iterated again every epoch) or function.
      steps_per_epoch: None: an epoch ends when the iterable does. A number: the run reads
        one iterator from start to end (grain's usual ``.repeat()`` data sets) and an epoch
        is this many batches of it.
    """

    def __init__(self, source: Any, steps_per_epoch: int | None = None):
        self.source, self.steps_per_epoch = source, steps_per_epoch
        self._iterator: Iterator | None = None
        self._consumed = 0
        # An iterator (a generator object) is used up by one pass; asked without calling
        # iter(), which would start a loader's workers.
        self.one_shot = isinstance(source, Iterator)

    def __len__(self) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        if callable(self.source) or not hasattr(self.source, "__len__"):
            raise TypeError("the data's length is unknown")
        return len(self.source)

    def num_batches(self) -> int | None:
        """Batches per epoch, or None when only the end of the iterable says."""
        try:
            return len(self)
        except TypeError:
            return None

    def epoch(self, epoch: int, start: int = 0, state: Any = None) -> Iterator:
        """The batches of ``epoch`` (0-based) from batch ``start`` on.

        ``state`` is what :meth:`state` returned when the checkpoint was saved: the
        iterator's own state (grain), restored instead of skipping batches.
        """
        if self.steps_per_epoch is not None:
            it = self._run_iterator(epoch * self.steps_per_epoch + start, state)
            return itertools.islice(it, self.steps_per_epoch - start)
        if self.one_shot and epoch > 0 and self._iterator is not None:
            raise ValueError("the training data is an iterator, used up by the first epoch; "
                             "pass an iterable that can be iterated again (a list, a grain "
                             "data set, a DataLoader) or a function epoch -> iterable, or "
                             "set steps_per_epoch to read one iterator across epochs")
        source = self.source(epoch) if callable(self.source) else self.source
        it = iter(source)
        self._iterator = it
        self._restore(it, start, state)
        return it

    def _run_iterator(self, position: int, state: Any) -> Iterator:
        if self._iterator is None or position != self._consumed:
            source = self.source(0) if callable(self.source) else self.source
            self._iterator = iter(source)
            self._restore(self._iterator, position, state)
            self._consumed = position
        return _Counting(self)

    @staticmethod
    def _restore(it: Iterator, start: int, state: Any) -> None:
        if not start:
            return
        if state is not None and hasattr(it, "set_state"):
            it.set_state(_decode_state(state))
            return
        for _ in range(start):  # replay: the same batches if the iterable is deterministic
            next(it)

    def state(self) -> Any:
        """The current iterator's state, JSON-ready (grain's ``get_state``), or None."""
        it = self._iterator
        if it is None or not hasattr(it, "get_state"):
            return None
        return _encode_state(it.get_state())


class _Counting:
    """The run-long iterator of an ``IterableData`` with ``steps_per_epoch``, counted."""

    def __init__(self, data: IterableData):
        self.data = data

    def __iter__(self):
        return self

    def __next__(self):
        try:
            item = next(self.data._iterator)
        except StopIteration:
            raise ValueError(f"the training data ended after {self.data._consumed} batches; "
                             "with steps_per_epoch the iterable must go on for the whole run "
                             "(grain: .repeat())") from None
        self.data._consumed += 1
        return item


def _encode_state(state: Any) -> Any:
    if isinstance(state, bytes):  # grain's DataLoader: a JSON document as bytes
        return {"__bytes__": state.decode("latin-1")}
    return state


def _decode_state(state: Any) -> Any:
    if isinstance(state, dict) and set(state) == {"__bytes__"}:
        return state["__bytes__"].encode("latin-1")
    return state


class UserData(NamedTuple):
    """The splits the trainer trains, validates and tests on.

    Attributes:
      train: :class:`ArrayData` or :class:`IterableData`.
      val: the same, or None.
      test: the same, or None.
      example_shape: the shape of one input example (``x.shape[1:]``).
      num_classes: ``max label + 1`` over the array splits for integer labels, else None.
      summary: one line saying what the splits are.
      fingerprint: sizes and SHA-256 digests of the array splits (a resumed run must see the
        same data), or None for iterables.
    """

    train: Any
    val: Any
    test: Any
    example_shape: tuple
    num_classes: int | None
    summary: str
    fingerprint: dict | None


def import_spec(spec: str, what: str = "object") -> Any:
    """Import ``"pkg.module:name"`` (the working directory is searched too) and return ``name``.

    Raises:
      ValueError: not of the form ``module:name``, the module cannot be imported, or it has no
        such attribute; the message says which.

    Examples:
      >>> from funcbp.train.userdata import import_spec
      >>> import_spec("funcbp.train.models:mlp", "model factory").__name__
      'mlp'
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'pkg.module:name'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name!r} ({err}); run from "
                         "the directory that holds it, or add it to PYTHONPATH") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueError(f"{what} {spec!r}: module {module_name!r} ({module.__file__}) has no "
                         f"attribute {attr!r}") from None
    return obj


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file: ``x_train``, ``y_train``, ``x_test``, ``y_test``
    (required) and ``x_val``, ``y_val`` (optional).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not an npz archive, a required array missing, an unknown array, or a pair of
        different lengths (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npz archive ({err})") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; an npz data file "
                         f"holds x_train, y_train, x_test, y_test (and optionally x_val, "
                         f"y_val); it has {', '.join(sorted(arrays)) or 'none'}")
    return _check_mapping(arrays, str(path))


def _check_mapping(arrays: Mapping, where: str) -> dict:
    unknown = sorted(set(arrays) - set(_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown array(s) {', '.join(unknown)}; expected "
                         f"{', '.join(_KEYS)}")
    for split in ("train", "val", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if (x is None) != (y is None):
            raise ValueError(f"{where}: x_{split} and y_{split} go together; only one is there")
        if x is not None and len(x) != len(y):
            raise ValueError(f"{where}: x_{split} has {len(x)} examples but y_{split} "
                             f"{len(y)}")
    if "x_train" not in arrays:
        raise ValueError(f"{where}: no x_train/y_train")
    return dict(arrays)


def as_batch(item: Any) -> tuple[Any, Any]:
    """``(x, y)`` from a batch given as a pair or a dict (``x``/``y``, ``image``/``label``,
    ``inputs``/``targets``).

    Raises:
      TypeError: any other kind of batch (its type and keys named).
    """
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    if isinstance(item, Mapping):
        for xk, yk in (("x", "y"), ("image", "label"), ("inputs", "targets")):
            if xk in item and yk in item:
                return item[xk], item[yk]
        raise TypeError(f"a batch dict needs keys x and y (or image/label, inputs/targets); "
                        f"got {sorted(item)}")
    raise TypeError(f"a batch must be (x, y) or a dict with x and y; got "
                    f"{type(item).__name__}")


def _is_array(a: Any) -> bool:
    return isinstance(a, (np.ndarray, jax.Array))


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _integer(y: Any) -> bool:
    return jnp.issubdtype(np.asarray(y).dtype if not isinstance(y, jax.Array) else y.dtype,
                          jnp.integer)


def _as_eval(data: Any, what: str) -> Any:
    """Validation or test data in any accepted form, as ArrayData or IterableData."""
    if data is None:
        return None
    if isinstance(data, (ArrayData, IterableData)):
        return data
    if isinstance(data, tuple) and len(data) == 2 and all(_is_array(a) for a in data):
        if len(data[0]) != len(data[1]):
            raise ValueError(f"{what}: x has {len(data[0])} examples but y {len(data[1])}")
        return ArrayData(*data)
    if isinstance(data, Iterable) or callable(data):
        return IterableData(data)
    raise TypeError(f"{what}: expected (x, y) arrays or an iterable of batches, got "
                    f"{type(data).__name__}")


def resolve_data(data: Any, *, val_fraction: float = 0.0, split_seed: int = 0,
                 steps_per_epoch: int | None = None, validation_data: Any = None,
                 test_data: Any = None) -> UserData:
    """Turn any accepted ``data`` (see the module's docstring) into :class:`UserData`.

    Args:
      data: the training data (and, in a mapping or npz file, validation and test splits).
      val_fraction: held out of the training arrays for validation when no validation split
        is given (stratified for integer labels); 0 for none.
      split_seed: seeds that split.
      steps_per_epoch: for an iterable: batches per epoch, reading one iterator across epochs.
      validation_data, test_data: ``(x, y)`` arrays or iterables, overriding the mapping's.

    Raises:
      ValueError, TypeError, FileNotFoundError: data the trainer cannot use, said plainly.

    Examples:
      >>> import numpy as np
      >>> from funcbp.train.userdata import resolve_data
      >>> d = resolve_data((np.zeros((100, 3), np.float32), np.arange(100) % 4),
      ...                  val_fraction=0.2)
      >>> len(d.train.x), len(d.val.x), d.num_classes, d.example_shape
      (80, 20, 4, (3,))
    """
    if isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)
        if text.endswith(".npz"):
            data = load_npz(text)
        elif ":" in text:
            data = import_spec(text, "data loader")
            data = data() if callable(data) else data
            if isinstance(data, (str, os.PathLike)):
                raise TypeError(f"data loader {text!r} returned a string; return arrays, a "
                                "mapping of arrays or an iterable of batches")
        else:
            raise ValueError(f"data {text!r}: give a path ending in .npz or a loader "
                             "'pkg.module:function'")
    if isinstance(data, Mapping) and any(k in data for k in _KEYS):
        arrays = _check_mapping(data, "data")
        train = ArrayData(arrays["x_train"], arrays["y_train"])
        val = (ArrayData(arrays["x_val"], arrays["y_val"]) if "x_val" in arrays else None)
        test = (ArrayData(arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else None)
    elif isinstance(data, tuple) and len(data) == 2 and all(_is_array(a) for a in data):
        if len(data[0]) != len(data[1]):
            raise ValueError(f"data: x has {len(data[0])} examples but y {len(data[1])}")
        train, val, test = ArrayData(*data), None, None
    elif isinstance(data, Mapping):
        raise ValueError(f"data: a mapping needs x_train and y_train (and optionally x_val, "
                         f"y_val, x_test, y_test); got keys {sorted(data)}")
    elif isinstance(data, Iterable) or callable(data):
        train, val, test = IterableData(data, steps_per_epoch), None, None
    else:
        raise TypeError(f"data: expected (x, y) arrays, a mapping or .npz file of x_train, "
                        f"y_train, ..., a loader 'pkg.module:function', or an iterable of "
                        f"batches; got {type(data).__name__}")
    if validation_data is not None:
        val = _as_eval(validation_data, "validation_data")
    if test_data is not None:
        test = _as_eval(test_data, "test_data")
    if val is None and val_fraction and isinstance(train, ArrayData):
        stratify = _integer(train.y) and np.ndim(train.y) == 1
        tr, va = fdata.split(jax.random.key(split_seed), train.x, train.y,
                             (1 - val_fraction, val_fraction), stratify=stratify)
        train, val = ArrayData(*tr), ArrayData(*va)
    return _describe(train, val, test)


def _first_batch(data: IterableData) -> tuple[Any, Any]:
    source = data.source(0) if callable(data.source) else data.source
    if data.one_shot:
        raise ValueError("the training data is a one-shot iterator; its first batch would be "
                         "lost to find the input shape: pass a list, a re-iterable data set, "
                         "or a function epoch -> iterable")
    try:
        return as_batch(next(iter(source)))
    except StopIteration:
        raise ValueError("the training data yields no batch") from None


def _describe(train: Any, val: Any, test: Any) -> UserData:
    parts, fingerprint, classes = [], {}, []
    for name, split in (("train", train), ("validation", val), ("test", test)):
        if split is None:
            continue
        if isinstance(split, ArrayData):
            parts.append(f"{len(split.x)} {name}")
            fingerprint[name] = {"examples": len(split.x), "sha256": _digest(split.x, split.y)}
            if _integer(split.y) and len(split.y):
                classes.append(int(np.max(np.asarray(split.y))) + 1)
        else:
            n = split.num_batches()
            parts.append(f"{name}: {n if n is not None else 'an iterable of'} batches")
    if isinstance(train, ArrayData):
        if len(train.x) == 0:
            raise ValueError("data: the training split is empty")
        example_shape = tuple(np.shape(train.x)[1:])
    else:
        example_shape = tuple(np.shape(_first_batch(train)[0])[1:])
    if not isinstance(train, ArrayData):
        fingerprint = {}  # an iterable's content cannot be checked
    return UserData(train, val, test, example_shape, max(classes) if classes else None,
                    ", ".join(parts), fingerprint or None)


def check_user_labels(data: UserData, num_classes: int) -> None:
    """Refuse integer labels outside ``[0, num_classes)`` in any array split, before training.

    Raises:
      funcbp.losses.LabelRangeError: naming the split, the count and the range.
    """
    for name, split in (("train", data.train), ("validation", data.val), ("test", data.test)):
        if isinstance(split, ArrayData) and _integer(split.y) and np.ndim(split.y) == 1:
            losses.check_labels(np.asarray(split.y), num_classes, f"{name} labels")

