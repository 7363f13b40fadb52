"""Names a credential is issued to: a federation's node ids and a vertical run's party
names (each also the common name of its client certificate)."""

from __future__ import annotations

import re

__all__ = ["check_name", "check_node_id"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str, what: str) -> str | None:
    """Why ``name`` is not acceptable as ``what`` (1-64 of letters, digits, ``.``, ``_``,
    ``-``, starting with a letter or digit), or ``None``."""
    if not isinstance(name, str) or not _NAME.match(name):
        return (
            f"{what}: expected 1-64 letters, digits, '.', '_' or '-' starting with a letter or "
            f"digit, got {str(name)[:80]!r}"
        )
    return None


def check_node_id(node_id: str) -> str | None:
    """Why ``node_id`` is not acceptable as a node id (see :func:`check_name`)."""
    return check_name(node_id, "node id")
