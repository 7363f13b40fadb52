"""In-process federation: every node trains in this process, for experiments."""

from __future__ import annotations

from typing import Any

from accord.simulation.driver import RunResult, Simulation, SimulationSettings, TimedRecord
from accord.simulation.stop import StopConditions, StopTracker

__all__ = [
    "RunResult",
    "Simulation",
    "SimulationSettings",
    "StopConditions",
    "StopTracker",
    "TimedRecord",
    "run_app",
]


def __getattr__(name: str) -> Any:
    # run_app drives the federated run; imported on first use, since accord.federation
    # imports this package's settings.
    if name == "run_app":
        from accord.simulation.app import run_app

        return run_app
    raise AttributeError(f"module 'accord.simulation' has no attribute {name!r}")
