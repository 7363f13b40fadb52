"""In-process federation: every node trains in this process, for experiments."""

from __future__ import annotations

from accord.simulation.driver import RunResult, Simulation, SimulationSettings, TimedRecord
from accord.simulation.stop import StopConditions, StopTracker

__all__ = [
    "RunResult",
    "Simulation",
    "SimulationSettings",
    "StopConditions",
    "StopTracker",
    "TimedRecord",
]
