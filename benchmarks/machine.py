"""What the benchmarks record about the machine they ran on (DESIGN §5: figures from one
machine are not figures for another)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_record(load_average_start: tuple[float, ...] | list[float]) -> dict[str, Any]:
    """The ``machine`` entry of a benchmark's JSON: CPU model and count, the load average
    at the start (given) and now, the platform and the Python version."""
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_start": list(load_average_start),
        "load_average_end": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
