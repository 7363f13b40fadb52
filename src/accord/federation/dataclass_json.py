"""Frozen settings dataclasses to and from JSON (nested dataclasses, tuples), without
importing anything heavy: a process that has not imported torch can use it."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from accord.errors import ConfigurationError

__all__ = ["settings_from_json", "settings_to_json"]

T = TypeVar("T")


def settings_to_json(settings: object) -> dict[str, Any]:
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        raise TypeError("expected a settings dataclass instance")
    return dataclasses.asdict(settings)


def settings_from_json(cls: type[T], data: object, where: str = "settings") -> T:
    """Rebuild a (nested) settings dataclass from :func:`settings_to_json`'s output."""
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where}: expected a JSON object, got {type(data).__name__}")
    template = cls()
    names = {f.name for f in dataclasses.fields(template)}  # type: ignore[arg-type]
    try:
        hints: dict[str, Any] = typing.get_type_hints(cls)
    except NameError:  # a hint only known to type checkers: no typed tuples here
        hints = {}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigurationError(f"{where}: unknown fields {unknown}")
    values: dict[str, Any] = {}
    for name, raw in data.items():
        default = getattr(template, name)
        value = raw
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            value = settings_from_json(type(default), raw, f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(raw, list):
            item = (typing.get_args(hints.get(name)) or (None,))[0]
            if dataclasses.is_dataclass(item) and isinstance(item, type):  # e.g. fault groups
                value = tuple(
                    settings_from_json(item, entry, f"{where}.{name}[{index}]")
                    for index, entry in enumerate(raw)
                )
            else:
                value = tuple(raw)
        values[name] = value
    return cls(**values)
