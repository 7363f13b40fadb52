"""Party and session names, as every layer checks them (no dependency but the errors)."""

from __future__ import annotations

import re

from accord.errors import ConfigurationError

__all__ = ["validate_party_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_party_name(name: str, field: str = "party name") -> str:
    """Party and session names: 1–64 characters of ``A-Z a-z 0-9 . _ -``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{field}: expected 1-64 characters from A-Z a-z 0-9 . _ - "
            f"(starting with a letter or digit), got {name!r}"
        )
    return name
