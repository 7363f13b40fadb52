"""The vertical round logic does no I/O: its imports, read from the source (DESIGN §3).

Every module of ``accord.vertical`` computes; files, sockets, threads and processes belong
to the drivers that will move its messages (and ``accord.vertical`` never imports the
commands, the CLI or another driver).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from import_support import forbidden_imports, imports

import accord

PACKAGE = Path(accord.__file__).resolve().parent
FORBIDDEN = (
    "accord.cli",
    "accord.commands",
    "accord.federation",
    "accord.simulation",
    "accord.tee.runtime",
    "asyncio",
    "grpc",
    "multiprocessing",
    "os",
    "pathlib",
    "selectors",
    "shutil",
    "socket",
    "subprocess",
    "tempfile",
    "threading",
)


FILES = sorted((PACKAGE / "vertical").rglob("*.py"))


def test_the_check_reads_the_modules_and_can_fail() -> None:
    names = {path.name for path in FILES}
    assert {"parties.py", "batches.py", "simulation.py"} <= names
    assert "socket" in imports(PACKAGE / "tee/runtime/transport.py")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_vertical_module_imports_no_io(path: Path) -> None:
    bad = forbidden_imports(path, FORBIDDEN)
    assert bad == [], f"{path.relative_to(PACKAGE)} imports {bad}"
