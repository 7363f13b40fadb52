"""In-process federation: every node trains in this process, for experiments.

The run's settings, stop conditions and timed records live in :mod:`accord.run` (shared
with the gRPC driver) and are re-exported here.
"""

from __future__ import annotations

from accord.run import StopConditions, StopTracker, stop_reason_of_round
from accord.simulation.app import run_app
from accord.simulation.driver import RunResult, Simulation, SimulationSettings, TimedRecord

__all__ = [
    "RunResult",
    "Simulation",
    "SimulationSettings",
    "StopConditions",
    "StopTracker",
    "TimedRecord",
    "run_app",
    "stop_reason_of_round",
]
