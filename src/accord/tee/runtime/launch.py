"""Starting the enclave process, the first thing a host does.

:func:`launch_enclave` starts ``python -m accord.tee.runtime.enclave`` with one end of a Unix
socket pair and returns at once; :class:`~accord.tee.runtime.host.EnclaveProcess` then
awaits its identity and calls it. This module imports nothing heavy (no asyncio, numpy,
pyarrow or crypto), so that ``accord align`` starts its enclave a few tens of milliseconds
after its own start, and the two processes load their modules side by side: on a 1M-row
run the enclave's start-up is the longest step before the exchange.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from accord.errors import PeerError
from accord.tee.core.allocator import HUGEPAGE_VARIABLE, single_threaded_blas, tune_allocator

__all__ = ["LaunchedEnclave", "launch_enclave", "tune_host_memory"]

logger = logging.getLogger(__name__)

#: pyarrow's switch for its default memory pool (read when pyarrow allocates first).
_ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


class LaunchedEnclave(NamedTuple):
    """An enclave process just started, and the host's end of its socket (non-blocking)."""

    process: subprocess.Popen[bytes]
    sock: socket.socket


def tune_host_memory() -> None:
    """The host's allocator set as its enclave's (:mod:`accord.tee.core.allocator`): freed
    memory kept for reuse, and no huge pages unless ``NUMPY_MADVISE_HUGEPAGE`` asks for them
    (set to ``0`` here otherwise, so numpy imported later and child processes see it); no
    BLAS threads unless asked for; pyarrow's buffers from the same (tuned) malloc unless
    ``ARROW_DEFAULT_MEMORY_POOL`` names a pool. Call it before numpy and pyarrow are imported.

    Arrow's default pool (mimalloc) maps fresh memory for the CSV reader's blocks and asks
    the kernel for huge pages: on this project's VM, zeroing them cost a 1M-row run's host
    about 75 ms of system time (0.46 s of CPU against 0.38 s with malloc, medians of 6), and
    what it frees is never reused by numpy, which writes the outputs."""
    single_threaded_blas(os.environ)
    os.environ.setdefault(HUGEPAGE_VARIABLE, "0")
    os.environ.setdefault(_ARROW_POOL_VARIABLE, "system")
    tune_allocator(huge_pages=os.environ[HUGEPAGE_VARIABLE] != "0")


def launch_enclave(
    *,
    platform_key: Path | None = None,
    debug: bool = False,
    log_level: str = "WARNING",
    python: str = sys.executable,
) -> LaunchedEnclave:
    """Start the enclave process (it then measures itself and loads its code)."""
    host_end, enclave_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in (host_end, enclave_end):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    command = [
        python,
        "-m",
        "accord.tee.runtime.enclave",
        "--fd",
        str(enclave_end.fileno()),
        "--log-level",
        log_level,
    ]
    if platform_key is not None:
        command += ["--platform-key", str(platform_key)]
    if debug:
        command.append("--debug")
    environment = dict(os.environ)
    # pyarrow allocates through malloc, which the enclave tunes to keep freed memory.
    environment.setdefault(_ARROW_POOL_VARIABLE, "system")
    # Small pages: faulting in huge ones costs more here, and no BLAS threads: starting
    # them cost each process of a 1M-row run ~50 ms of CPU (accord.tee.core.allocator).
    environment.setdefault(HUGEPAGE_VARIABLE, "0")
    single_threaded_blas(environment)
    try:
        process = subprocess.Popen(
            command,
            pass_fds=(enclave_end.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=environment,
        )
    except OSError as error:
        host_end.close()
        raise PeerError(f"cannot start the enclave process: {error}") from error
    finally:
        enclave_end.close()
    host_end.setblocking(False)
    logger.debug("enclave process %d spawned", process.pid)
    return LaunchedEnclave(process, host_end)
