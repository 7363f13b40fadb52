"""The tee core and the alignment core do no I/O: their imports, read from the source.

``accord.tee.core`` and ``accord.alignment`` compute; ``accord.tee.runtime`` moves bytes.
This reads every import statement (top level and inside functions) of the two cores and
refuses any module that opens sockets, starts processes or threads, or touches files, and
any import of the runtime, the tables, the commands or the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from import_support import forbidden_imports, imports

import accord

PACKAGE = Path(accord.__file__).resolve().parent
CORES = ("tee/core", "alignment")
#: Modules a core must not import (or any module inside them).
FORBIDDEN = (
    "accord.cli",
    "accord.commands",
    "accord.csv_lines",
    "accord.tables",
    "accord.tee.runtime",
    "asyncio",
    "multiprocessing",
    "os",
    "pathlib",
    "pyarrow.csv",
    "pyarrow.parquet",
    "selectors",
    "shutil",
    "signal",
    "socket",
    "subprocess",
    "tempfile",
    "threading",
)


def _core_files() -> list[Path]:
    return sorted(path for core in CORES for path in (PACKAGE / core).rglob("*.py"))


def test_the_cores_exist_and_are_read() -> None:
    files = {path.relative_to(PACKAGE).as_posix() for path in _core_files()}
    assert {"tee/core/session.py", "tee/core/channel.py", "alignment/intersect.py"} <= files
    assert "socket" in imports(PACKAGE / "tee/runtime/transport.py")  # the check can fail


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_a_core_module_imports_no_io_and_nothing_above_it(path: Path) -> None:
    bad = forbidden_imports(path, FORBIDDEN)
    assert bad == [], f"{path.relative_to(PACKAGE)} imports {bad}"
