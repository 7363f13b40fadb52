"""Loading on first use: package attributes (PEP 562), for packages whose ``__init__`` would
otherwise load every module it re-exports (and their libraries) on any import, and
libraries that only some paths of a module need (:func:`lazy_module`)."""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes", "lazy_module"]


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


class _LazyModule(types.ModuleType):
    """Stands for the module of its name, which is imported at the first attribute asked
    for; each attribute is then kept here, so later uses cost a plain lookup."""

    def __getattr__(self, name: str) -> Any:
        value = getattr(importlib.import_module(self.__name__), name)
        setattr(self, name, value)
        return value


def lazy_module(name: str) -> types.ModuleType:
    """A stand-in for the module ``name`` that imports it on first attribute access.

    For a library that only some of a module's paths need: the enclave's common path (ASCII
    IDs of one key column) never touches pyarrow, whose import costs a process about 30 ms
    of CPU. Use it as ``if TYPE_CHECKING: import pyarrow as pa`` / ``else: pa =
    lazy_module("pyarrow")``, so that type checkers see the real module.
    """
    return _LazyModule(name)
