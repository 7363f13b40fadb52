"""Node ids: what a node may call itself (also the common name of its certificate)."""

from __future__ import annotations

import re

__all__ = ["check_node_id"]

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_node_id(node_id: str) -> str | None:
    """Why ``node_id`` is not acceptable (1-64 of letters, digits, ``.``, ``_``, ``-``)."""
    if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
        return (
            "node id: expected 1-64 letters, digits, '.', '_' or '-' starting with a letter or "
            f"digit, got {str(node_id)[:80]!r}"
        )
    return None
