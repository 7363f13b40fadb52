"""Keep freed memory in the process (glibc ``mallopt``), for the host and the enclave.

Alignment moves big buffers (key batches, digests, records) that come and go. By default
glibc returns every large block to the operating system when it is freed, and the next
one is mapped afresh; first-touching fresh pages is slow, above all on virtual machines
that report free pages to their host. With mmap disabled for large blocks and trimming off,
freed blocks are reused instead. A no-op where glibc is not available.

numpy also asks the kernel for transparent huge pages on every large array
(``madvise(MADV_HUGEPAGE)``). Where the kernel compacts memory to find them on the fault
(``/sys/kernel/mm/transparent_hugepage/defrag`` set to ``madvise``, the default), that first
touch costs more than with small pages: 2-3 times as much system time on this project's
VM (180 MB arrays: 0.2-0.3 s against 0.08 s), and the run's page faults vary with how
fragmented the machine's memory is. :func:`tune_allocator` turns numpy's request off unless
told otherwise; the runtime takes that from ``NUMPY_MADVISE_HUGEPAGE`` (numpy's own switch,
read when numpy is imported), which it sets to ``0`` unless the user set it.

Neither the host nor the enclave multiplies matrices, yet numpy's OpenBLAS starts one
thread per core when numpy is imported: about 50 ms of CPU in each of a 1M-row run's four
processes on this project's 2-core VM (``import numpy``: 0.14 s of CPU, 0.08 s without).
:data:`THREAD_VARIABLES` are set to ``1`` unless the user set them
(:func:`single_threaded_blas`), before numpy is imported, in the host and in the
environment it gives its enclave.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import MutableMapping

__all__ = [
    "HUGEPAGE_VARIABLE",
    "THREAD_VARIABLES",
    "release_memory",
    "single_threaded_blas",
    "tune_allocator",
]

#: numpy's environment switch for its huge-page requests (read when numpy is imported).
HUGEPAGE_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"
#: The BLAS thread-pool sizes (read when numpy loads its BLAS); alignment uses no BLAS.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_allocator(*, huge_pages: bool = False) -> None:
    """Serve large allocations from the heap and never trim it, and (unless ``huge_pages``)
    stop numpy asking for huge pages (see the module docstring)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    if huge_pages or "numpy" not in sys.modules:
        return  # a numpy imported later reads HUGEPAGE_VARIABLE itself
    multiarray = sys.modules.get("numpy._core.multiarray") or sys.modules.get(
        "numpy.core.multiarray"
    )
    with contextlib.suppress(AttributeError, TypeError):
        multiarray._set_madvise_hugepage(False)  # type: ignore[union-attr]


def single_threaded_blas(environment: MutableMapping[str, str]) -> None:
    """Set :data:`THREAD_VARIABLES` to ``1`` in ``environment`` where the user left them
    unset: the BLAS then starts no threads when numpy is imported (see the module
    docstring). Effective only before numpy is imported in the process it applies to."""
    for name in THREAD_VARIABLES:
        environment.setdefault(name, "1")


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``, Arrow's pool).

    Called between the stages of a bucketed run: a memory-limited run then peaks at its
    largest stage, not at the sum of what every stage once held.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(ImportError, AttributeError):
        import sys

        arrow = sys.modules.get("pyarrow")
        if arrow is not None:
            arrow.default_memory_pool().release_unused()
