"""The run folder of a training run: ``metrics.jsonl``, ``summary.json``, ``config.toml``
and PNG plots (see :mod:`accord.reporting.writer`). matplotlib loads only when plotting."""

from __future__ import annotations

from accord.reporting.summary import (
    PolicyRun,
    TimedRound,
    data_share,
    faulty_mass,
    faulty_mass_by_quarter,
    metrics_line,
    policy_summary,
    round_faulty,
)
from accord.reporting.writer import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunFolder,
)

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "PolicyRun",
    "RunFolder",
    "TimedRound",
    "data_share",
    "faulty_mass",
    "faulty_mass_by_quarter",
    "metrics_line",
    "policy_summary",
    "round_faulty",
]
