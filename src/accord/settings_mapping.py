"""One mapping between frozen settings dataclasses and plain data, for TOML and JSON alike.

A table (or JSON object) is a settings dataclass, a key is one of its fields, with the same
name; nested dataclasses are sub-tables, ``tuple[X, ...]`` fields take arrays (of tables,
for dataclass items such as fault groups), ``float`` fields take integers too, and an
optional field takes JSON's ``null`` (TOML has none: leave the key out).

- :func:`settings_from_mapping` checks every key and value and builds the dataclass; an
  unknown key, a value of the wrong type or a value the settings reject is one
  :class:`~accord.errors.ConfigurationError` line naming the source, the dotted key and
  what is accepted.
- :func:`settings_to_mapping` is its inverse: nested dicts and lists, ready for
  :func:`json.dumps` or :func:`settings_to_toml`.
- :func:`read_toml` parses a TOML file with one clear line for a missing or broken file.

Stdlib only: a process that has not imported torch (a helper, ``accord align``) can use it.
``accord.config`` re-exports these names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from accord.errors import ConfigurationError

__all__ = [
    "read_toml",
    "settings_from_mapping",
    "settings_to_mapping",
    "settings_to_toml",
]

T = TypeVar("T")

_FIELD_PREFIX = re.compile(r"^[a-z_]+: ")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or bad syntax is one line naming the file."""
    source = Path(path)
    try:
        with source.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigurationError(
            f"{source}: cannot read the config file: {error.strerror or error}"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{source}: not valid TOML: {error}") from error
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"{source}: not valid TOML: not UTF-8 text") from error


def settings_from_mapping(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    source: str,
    prefix: str = "",
    extra_keys: tuple[str, ...] = (),
) -> T:
    """Build the settings dataclass ``cls`` from a parsed TOML table, one key per field.

    Nested dataclass fields are sub-tables. Fields typed ``tuple[X, ...]`` take arrays,
    ``float`` fields take integers too. Errors name ``source`` and the dotted key.
    ``extra_keys`` are other keys accepted at this level (only listed in error messages).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a settings dataclass")
    if not isinstance(data, Mapping):
        where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
        raise ConfigurationError(
            f"{source}: {where}: expected a table of keys, got {_toml_value(data)}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        table = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
        accepted = ", ".join(sorted([*fields, *extra_keys]))
        raise ConfigurationError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; accepted keys in {table}: {accepted}"
        )
    values: dict[str, Any] = {}
    for name, raw in data.items():
        values[name] = _convert(hints[name], raw, source=source, key=f"{prefix}{name}")
    try:
        return cls(**values)
    except ConfigurationError as error:
        raise ConfigurationError(
            f"{source}: {_culprit(cls, values, error, prefix)}{_strip_field(str(error))}"
        ) from error


def _culprit(cls: type[Any], values: Mapping[str, Any], error: Exception, prefix: str) -> str:
    """``key = value: `` of the one key whose value alone raises ``error``, else the table."""
    for name, value in values.items():
        try:
            cls(**{name: value})
        except ConfigurationError as alone:
            if str(alone) == str(error):
                return f"{prefix}{name} = {_toml_value(settings_to_mapping(value))}: "
    return f"[{prefix.rstrip('.')}] " if prefix else ""


def _strip_field(message: str) -> str:
    return _FIELD_PREFIX.sub("", message, count=1)


def _type_name(hint: Any) -> str:
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    return str(hint)


def _convert(hint: Any, raw: Any, *, source: str, key: str) -> Any:
    """Check ``raw`` against the field's type hint; tables become dataclasses."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        arguments = typing.get_args(hint)
        if raw is None and type(None) in arguments:
            return None  # JSON's null for an optional field (TOML leaves the key out)
        options = [arg for arg in arguments if arg is not type(None)]
        return _convert(options[0], raw, source=source, key=key) if len(options) == 1 else raw
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(raw, dict):
            raise ConfigurationError(
                f"{source}: {key}: expected a table [{key}], got {_toml_value(raw)}"
            )
        return settings_from_mapping(hint, raw, source=source, prefix=f"{key}.")
    if origin is tuple:
        args = typing.get_args(hint)
        item = args[0] if args else Any
        if not isinstance(raw, list):
            raise ConfigurationError(
                f"{source}: {key}: expected an array of {_type_name(item)}, got {_toml_value(raw)}"
            )
        return tuple(_convert(item, value, source=source, key=key) for value in raw)
    return _convert_scalar(hint, raw, source=source, key=key)


def _convert_scalar(hint: Any, raw: Any, *, source: str, key: str) -> Any:
    """A number, integer, boolean or string field (``bool`` is no number here); other
    hints take the value as it is."""
    if hint is float:
        accepted = not isinstance(raw, bool) and isinstance(raw, int | float)
    elif hint is int:
        accepted = not isinstance(raw, bool) and isinstance(raw, int)
    elif hint is bool or hint is str:
        accepted = isinstance(raw, hint)
    else:
        return raw
    if not accepted:
        raise ConfigurationError(
            f"{source}: {key}: expected {_type_name(hint)}, got {_toml_value(raw)}"
        )
    return float(raw) if hint is float else raw


# ----------------------------------------------------------------------------- writing


def settings_to_mapping(settings: Any) -> Any:
    """A settings dataclass as nested dicts of TOML-able values (tuples become lists)."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        return {
            f.name: settings_to_mapping(getattr(settings, f.name))
            for f in dataclasses.fields(settings)
            if f.init
        }
    if isinstance(settings, tuple | list):
        return [settings_to_mapping(item) for item in settings]
    return settings


def settings_to_toml(settings: Any, *, top: Mapping[str, Any] | None = None) -> str:
    """TOML text that :func:`settings_from_mapping` reads back into equal settings.

    ``top`` holds extra top-level keys written first. Fields that are not set (``None``)
    are written as comments, since TOML has no null.
    """
    lines: list[str] = []
    for key, value in (top or {}).items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    _write_table(settings_to_mapping(settings), [], lines)
    return "\n".join(lines).strip("\n") + "\n"


def _write_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    if path:
        lines.append("")
        lines.append(f"[{'.'.join(_toml_key(part) for part in path)}]")
    for key, value in scalars:
        if value is None:
            lines.append(f"# {_toml_key(key)} = (not set)")
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables:
        _write_table(value, [*path, key], lines)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(  # TOML has no null: a key not set is left out
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{ " + inner + " }" if inner else "{}"
    return json.dumps(str(value))
