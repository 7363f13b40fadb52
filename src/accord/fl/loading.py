"""Loading a user's factory from a ``package.module:attribute`` reference (the convention
Flower users know), with one-line errors that say what is wrong."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from accord.errors import ConfigurationError

__all__ = ["load_factory", "parse_app_config"]


#: Environment variables through which gRPC's logging is set for the whole process.
PROCESS_LOGGING_VARIABLES = ("GRPC_VERBOSITY", "GRPC_TRACE")


def load_factory(reference: str, option: str = "--app") -> Callable[..., Any]:
    """The callable named by ``package.module:attribute``. The current directory is
    importable, as it is for ``python -m``."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"{option}: expected package.module:factory, got {reference!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # Importing a user's module must not change how gRPC logs in this process: Flower, for
    # one, sets GRPC_VERBOSITY when imported, which silenced the server's report of
    # plaintext clients on its TLS port. What the user's shell set is kept as it was.
    kept = {name: os.environ.get(name) for name in PROCESS_LOGGING_VARIABLES}
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigurationError(
            f"{option} {reference}: cannot import {error.name!r} (run from the folder that "
            "holds the package, or put it on PYTHONPATH)"
        ) from error
    except Exception as error:  # the user's module failed while importing
        raise ConfigurationError(
            f"{option} {reference}: importing {module_name} raised {type(error).__name__}: {error}"
        ) from error
    finally:
        for name, value in kept.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigurationError(f"{option} {reference}: {module_name} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigurationError(
            f"{option} {reference}: {attribute} is a {type(target).__name__}, not a factory"
        )
    return target  # type: ignore[no-any-return]


def parse_app_config(items: Sequence[str], option: str = "--app-config") -> dict[str, Any]:
    """``KEY=VALUE`` items as a mapping; a VALUE that parses as JSON is taken as JSON
    (``seed=3`` is the number 3, ``flippers=["node-0"]`` a list), anything else as text."""
    config: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"{option}: expected KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        config[key.strip()] = value
    return config
