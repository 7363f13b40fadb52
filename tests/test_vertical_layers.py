"""The vertical round logic does no I/O: its imports, read from the source (DESIGN §3).

Every module of ``accord.vertical`` computes, except the networked driver's own modules
(:data:`DRIVER_MODULES`: the gRPC transport, the run folder, the input files, the
checkpoint files, the generated protocol code), which move the round logic's messages and
never add rules. No pure module imports them, and no module of ``accord.vertical`` imports
the commands, the CLI or another driver.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from import_support import forbidden_imports, imports

import accord

PACKAGE = Path(accord.__file__).resolve().parent
#: Another layer or driver: no vertical module imports these.
OUTSIDE = (
    "accord.cli",
    "accord.commands",
    "accord.federation",
    "accord.simulation",
    "accord.tee.runtime",
)
IO = (
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
#: The networked driver: files, sockets and threads are its job.
DRIVER_MODULES = (
    "checkpoints",
    "feature_transport",
    "inputs",
    "network",
    "run_files",
    "transport",
    "proto",
)

FILES = sorted((PACKAGE / "vertical").rglob("*.py"))


def _is_driver(path: Path) -> bool:
    relative = path.relative_to(PACKAGE / "vertical")
    return relative.parts[0] in DRIVER_MODULES or relative.stem in DRIVER_MODULES


PURE = [path for path in FILES if not _is_driver(path)]
DRIVERS = [path for path in FILES if _is_driver(path) and "proto" not in path.parts]


def test_the_check_reads_the_modules_and_can_fail() -> None:
    names = {path.name for path in PURE}
    assert {"parties.py", "batches.py", "simulation.py"} <= names
    assert {path.name for path in DRIVERS} == {f"{name}.py" for name in DRIVER_MODULES[:-1]}
    assert "socket" in imports(PACKAGE / "tee/runtime/transport.py")
    assert forbidden_imports(PACKAGE / "vertical/transport.py", IO) != []


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_a_pure_vertical_module_imports_no_io(path: Path) -> None:
    drivers = tuple(f"accord.vertical.{name}" for name in DRIVER_MODULES)
    bad = forbidden_imports(path, (*OUTSIDE, *IO, *drivers))
    assert bad == [], f"{path.relative_to(PACKAGE)} imports {bad}"


@pytest.mark.parametrize("path", DRIVERS, ids=lambda p: p.name)
def test_the_vertical_driver_imports_no_other_driver_and_no_command(path: Path) -> None:
    bad = forbidden_imports(path, OUTSIDE)
    assert bad == [], f"{path.relative_to(PACKAGE)} imports {bad}"
