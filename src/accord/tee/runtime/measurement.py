"""The enclave's measurement: SHA-256 over the code the enclave runs and its fixed config.

The measured files are Accord's own modules that the enclave process loads — the package
root and exception tree, the enclave process's modules of :mod:`accord.tee.runtime`, and
every module of the tee core :mod:`accord.tee.core` and the alignment core
:mod:`accord.alignment` — hashed in sorted path order by
:func:`accord.tee.core.attestation.measure`, together with :data:`ENCLAVE_CONFIG`. The enclave
process refuses to start if it has loaded an Accord module outside this list
(:func:`unmeasured_modules`), so measured code cannot call unmeasured code.

What is *not* measured in the simulated backend: the Python interpreter and third-party
libraries (numpy, cryptography, pyarrow). A hardware backend (Gramine) measures the whole
manifest, interpreter and libraries included.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import accord
from accord.tee.core.attestation import measure
from accord.tee.core.channel import PROTOCOL_VERSION, RECORD_SIZE

__all__ = [
    "ENCLAVE_CONFIG",
    "ENCLAVE_FILES",
    "MEASURED_PACKAGES",
    "SECURITY_VERSION",
    "enclave_code_files",
    "enclave_measurement",
    "unmeasured_modules",
]

#: Raised when a fix changes what the enclave protects; policies set a minimum.
SECURITY_VERSION = 1

#: Fixed configuration of the enclave build, hashed into the measurement.
ENCLAVE_CONFIG: dict[str, Any] = {
    "protocol_version": PROTOCOL_VERSION,
    "record_size": RECORD_SIZE,
    "security_version": SECURITY_VERSION,
}

#: Measured modules outside the alignment core and the tee core (paths relative to the
#: ``accord`` package): the package roots (and their lazy re-exports), the exception tree
#: and the enclave process's own runtime modules.
ENCLAVE_FILES = (
    "__init__.py",
    "_lazy.py",
    "_validation.py",
    "errors.py",
    "tee/__init__.py",
    "tee/runtime/__init__.py",
    "tee/runtime/enclave.py",
    "tee/runtime/measurement.py",
    "tee/runtime/platform_key.py",
)
#: Packages measured whole (every module in them, present and future).
MEASURED_PACKAGES = ("alignment", "tee/core")

_PACKAGE = Path(accord.__file__).resolve().parent


def _measured_paths() -> list[str]:
    packages = sorted(
        path.relative_to(_PACKAGE).as_posix()
        for package in MEASURED_PACKAGES
        for path in (_PACKAGE / package).rglob("*.py")
    )
    return sorted({*ENCLAVE_FILES, *packages})


def enclave_code_files() -> list[tuple[str, bytes]]:
    """``(path relative to the package, content)`` of every measured file, sorted."""
    return [(path, (_PACKAGE / path).read_bytes()) for path in _measured_paths()]


def enclave_measurement() -> bytes:
    """The measurement of the enclave this installation runs (32 bytes)."""
    return measure(enclave_code_files(), ENCLAVE_CONFIG)


def unmeasured_modules(module_names: Iterable[str]) -> list[str]:
    """The ``accord.*`` modules among ``module_names`` whose files are not measured."""
    measured = set(_measured_paths())
    outside: list[str] = []
    for name in module_names:
        if name != "accord" and not name.startswith("accord."):
            continue
        parts = name.split(".")[1:]
        candidates = {"/".join(parts) + ".py", "/".join([*parts, "__init__.py"])}
        if not candidates & measured:
            outside.append(name)
    return sorted(outside)
