"""Facts about this OS process that the commands report (time to the first round)."""

from __future__ import annotations

import os

__all__ = ["process_age"]


def process_age() -> float | None:
    """Seconds since this process started (Linux), for time-to-first-round."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
        return max(0.0, now - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
