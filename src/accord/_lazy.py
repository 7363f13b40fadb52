"""Package attributes loaded on first use (PEP 562), for packages whose ``__init__`` would
otherwise load every module it re-exports (and their libraries) on any import."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``homes`` maps each name to the module that
    defines it (relative to ``package``, or absolute from ``accord.``); the name is loaded
    from there when first asked for, then kept in the package."""

    def load(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = home if home.startswith("accord.") else f"{package}.{home}"
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return load
