"""Checks shared by the frozen settings dataclasses: each names the field, what was
expected and what was received, so a bad value fails early with one clear line."""

from __future__ import annotations

import math
from collections.abc import Collection

from accord.errors import ConfigurationError

__all__ = ["require_choice", "require_int", "require_number", "require_probability"]


def require_number(
    field: str,
    value: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> None:
    """Fail unless ``value`` is a finite real within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{field}: expected a finite number, got {value!r}")
    if minimum is not None:
        too_small = value <= minimum if exclusive_minimum else value < minimum
        if too_small:
            relation = ">" if exclusive_minimum else ">="
            raise ConfigurationError(
                f"{field}: expected a number {relation} {minimum}, got {value!r}"
            )
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{field}: expected a number <= {maximum}, got {value!r}")


def require_int(field: str, value: int, *, minimum: int | None = None) -> None:
    """Fail unless ``value`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{field}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{field}: expected an integer >= {minimum}, got {value!r}")


def require_probability(field: str, value: float) -> None:
    """Fail unless ``value`` lies in [0, 1]."""
    require_number(field, value, minimum=0.0, maximum=1.0)


def require_choice(field: str, value: str, choices: Collection[str]) -> None:
    """Fail unless ``value`` is one of ``choices``."""
    if value not in choices:
        accepted = ", ".join(sorted(choices))
        raise ConfigurationError(f"{field}: expected one of {accepted}; got {value!r}")
