"""Config files and ``key=value`` overrides for ``funcbp train``.

A run's config can come from a TOML file (``--config run.toml``), options, and dotted
``key=value`` overrides on the command line, in that order of precedence (later wins)::

    # run.toml
    data = "my_data.npz"
    model = "my_models:small_cnn"
    epochs = 5
    lr = 1e-3
    precision = "bf16"

    [optimizer]
    name = "adamw"
    weight_decay = 0.05

    $ funcbp train --config run.toml epochs=8 optimizer.b2=0.95

Every key is a field of :class:`~funcbp.train.TrainConfig`; the ``[optimizer]`` table (or
``optimizer.<option>=...``) holds the optimiser's name and its options
(``TrainConfig.optimizer_options``). A value is read as TOML (``3``, ``1e-3``, ``true``,
``"text"``); a bare word is a string; ``none`` is None. An unknown key is refused, naming it
and the nearest known one. The run directory keeps the resolved config as ``config.json`` and
``config.toml`` (the latter a valid ``--config`` to run it again).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

__all__ = ["ConfigFileError", "config_values", "dump_toml", "parse_value", "read_config_file",
           "resolve_config"]


class ConfigFileError(ValueError):
    """A config file or override cannot be read, or names an unknown key (named)."""


def _fields() -> dict[str, dataclasses.Field]:
    from funcbp.train.config import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_value(text: str) -> Any:
    """A command-line value as TOML: ``3`` -> 3, ``1e-3`` -> 0.001, ``true`` -> True,
    ``"a b"`` -> ``"a b"``, ``none`` -> None, anything else -> the text itself.

    Examples:
      >>> from funcbp.train.configfile import parse_value
      >>> parse_value("3"), parse_value("1e-3"), parse_value("false"), parse_value("adamw")
      (3, 0.001, False, 'adamw')
    """
    if text.strip().lower() in ("none", "null"):
        return None
    if tomllib is not None:
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            pass
    return text


def read_config_file(path: str | os.PathLike) -> dict:
    """The keys of a TOML (or JSON) config file, flattened to :class:`TrainConfig` fields.

    Raises:
      FileNotFoundError: no such file.
      ConfigFileError: not valid TOML/JSON (the parser's line and column), or an unknown key.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"{path}: cannot read it ({err})") from None
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigFileError(f"{path}: not valid JSON ({err})") from None
    else:
        if tomllib is None:  # pragma: no cover - python 3.10 without tomli
            raise ConfigFileError(f"{path}: reading TOML on Python 3.10 needs tomli: pip "
                                  "install tomli")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigFileError(f"{path}: not valid TOML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigFileError(f"{path}: the config must be a table of key = value")
    flat: dict = {}
    for key, value in raw.items():
        _set(flat, key, value, str(path))
    return flat


def _unknown(key: str, where: str) -> ConfigFileError:
    known = sorted(_fields()) + ["optimizer.<option>"]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigFileError(f"{where}: unknown key {key!r}{hint}; the keys are TrainConfig's "
                           f"fields: {', '.join(known)}")


def _set(flat: dict, key: str, value: Any, where: str) -> None:
    """Put ``key = value`` (dotted or a table) into ``flat`` as TrainConfig fields."""
    head, _, rest = key.partition(".")
    if head == "optimizer" and (rest or isinstance(value, Mapping)):
        items = {rest: value}.items() if rest else value.items()
        for name, v in items:
            if name == "name":
                flat["optimizer"] = v
            else:
                flat.setdefault("optimizer_options", {})[name] = v
        return
    if head == "optimizer_options" and (rest or isinstance(value, Mapping)):
        items = {rest: value}.items() if rest else value.items()
        flat.setdefault("optimizer_options", {}).update(dict(items))
        return
    if rest or key not in _fields():
        raise _unknown(key, where)
    flat[key] = value


def resolve_config(file: str | os.PathLike | None = None, options: Mapping | None = None,
                   overrides: Iterable[str] = ()) -> Any:
    """The :class:`TrainConfig` of a config file, then options, then ``key=value`` overrides.

    Args:
      file: a TOML or JSON file, or None.
      options: field values (the command line's ``--epochs 3`` and such).
      overrides: ``"key=value"`` strings, dotted for the optimiser's options
        (``optimizer.weight_decay=0.05``).

    Raises:
      ConfigFileError: an unreadable file, a malformed override or an unknown key.
      ValueError: a value out of range (``TrainConfig.validate`` names the field).

    Examples:
      >>> from funcbp.train.configfile import resolve_config
      >>> c = resolve_config(None, {"epochs": 3}, ["optimizer=adamw", "optimizer.b2=0.95",
      ...                                          "lr=1e-3"])
      >>> c.epochs, c.optimizer, c.optimizer_options, c.lr
      (3, 'adamw', {'b2': 0.95}, 0.001)
    """
    from funcbp.train.config import TrainConfig

    return TrainConfig(**config_values(file, options, overrides))


def config_values(file: str | os.PathLike | None = None, options: Mapping | None = None,
                  overrides: Iterable[str] = ()) -> dict:
    """The fields a config file, options and overrides set (not yet a TrainConfig), e.g.
    the changes ``funcbp train --resume`` checks against the checkpoint's config.

    Raises:
      ConfigFileError: as :func:`resolve_config`.
    """
    flat = read_config_file(file) if file is not None else {}
    for key, value in (options or {}).items():
        _set(flat, key, value, "option")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigFileError(f"override {item!r}: expected key=value, e.g. epochs=5 or "
                                  "optimizer.weight_decay=0.05")
        key = key.strip().replace("-", "_")  # batch-size=64 as the option is spelt
        _set(flat, key, parse_value(text.strip()), f"override {item!r}")
    fields = _fields()
    for name, value in list(flat.items()):  # ints where a float belongs: 1 -> 1.0
        kind = str(fields[name].type)
        if kind.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(config: Mapping) -> str:
    """A ``TrainConfig.to_json()`` dict as a TOML config file (``read_config_file`` reads it).

    None values are written as comments: an absent key is None (their default).

    Examples:
      >>> from funcbp.train import TrainConfig
      >>> from funcbp.train.configfile import dump_toml
      >>> print(dump_toml(TrainConfig(optimizer="adamw", lr=1e-3,
      ...                             optimizer_options={"b2": 0.95}).to_json()))  # doctest: +ELLIPSIS
      # funcbp train --config config.toml runs this again
      data = "digits"
      ...
      [optimizer]
      name = "adamw"
      b2 = 0.95
      <BLANKLINE>
    """  # noqa: E501
    lines = ["# funcbp train --config config.toml runs this again"]
    for key, value in config.items():
        if key in ("optimizer", "optimizer_options"):
            continue
        lines.append(f"# {key} = none" if value is None else f"{key} = {_toml_value(value)}")
    lines += ["", "[optimizer]", f"name = {_toml_value(config['optimizer'])}"]
    for key, value in config.get("optimizer_options", {}).items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
