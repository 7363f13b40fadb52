"""Reading a module's imports from its source, for the tests that keep packages free of I/O."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path


def imports(path: Path) -> set[str]:
    """Every absolute module ``path`` imports, at the top level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def forbidden_imports(path: Path, forbidden: Iterable[str]) -> list[str]:
    """The imports of ``path`` that are one of ``forbidden`` or inside one, sorted."""
    banned = tuple(forbidden)
    return sorted(
        name
        for name in imports(path)
        for prefix in banned
        if name == prefix or name.startswith(prefix + ".")
    )
