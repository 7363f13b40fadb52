"""Keep freed memory in the process (glibc ``mallopt``), for the host and the enclave.

Alignment moves big buffers (key batches, digests, records) that come and go. By default
glibc returns every large block to the operating system when it is freed, and the next
one is mapped afresh; first-touching fresh pages is slow, above all on virtual machines
that report free pages to their host. With mmap disabled for large blocks and trimming off,
freed blocks are reused instead. A no-op where glibc is not available.
"""

from __future__ import annotations

import contextlib
import ctypes

__all__ = ["release_memory", "tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_allocator() -> None:
    """Serve large allocations from the heap and never trim it (see the module docstring)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


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
