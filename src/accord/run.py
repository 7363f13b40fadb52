"""What a federated run is, whichever driver runs it.

:class:`SimulationSettings` (scenario, model, local training, round, stop conditions and
policy settings), the stop conditions and their tracker (whichever comes first of max
rounds, target accuracy, patience, time), a round's :class:`TimedRecord` and
:func:`stop_reason_of_round`. The in-process driver (:mod:`accord.simulation`) and the gRPC
driver (:mod:`accord.federation`) both import them from here, so neither imports the other;
:mod:`accord.simulation` re-exports the public names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from accord._validation import require_choice, require_int, require_number, require_probability
from accord.aggregation.actor_critic_settings import ActorCriticSettings
from accord.aggregation.hedge import HedgeLooSettings
from accord.rounds import RoundRecord, RoundSettings
from accord.scenario import ScenarioSettings
from accord.training.local import LocalTrainingSettings
from accord.training.models import ModelSpec

__all__ = [
    "NODE_TRAINING",
    "SimulationSettings",
    "StopConditions",
    "StopTracker",
    "TimedRecord",
    "stop_reason_of_round",
]


@dataclass(frozen=True)
class StopConditions:
    """``max_rounds`` (default 100); ``target_accuracy`` on validation (default none);
    ``patience``: rounds without a better validation accuracy (default none);
    ``time_budget_seconds``: wall-clock budget (default none)."""

    max_rounds: int = 100
    target_accuracy: float | None = None
    patience: int | None = None
    time_budget_seconds: float | None = None

    def __post_init__(self) -> None:
        require_int("rounds", self.max_rounds, minimum=1)
        if self.target_accuracy is not None:
            require_probability("target_accuracy", self.target_accuracy)
        if self.patience is not None:
            require_int("patience", self.patience, minimum=1)
        if self.time_budget_seconds is not None:
            require_number(
                "time_budget", self.time_budget_seconds, minimum=0.0, exclusive_minimum=True
            )


class StopTracker:
    """Feeds on each round's accuracy and elapsed time; says when and why to stop."""

    def __init__(self, conditions: StopConditions, started_at: float) -> None:
        self.conditions = conditions
        self.started_at = started_at
        self.rounds_done = 0
        self.best_accuracy: float | None = None
        self.rounds_since_best = 0

    def update(self, accuracy: float | None, now: float) -> str | None:
        """Record a finished round; return the reason to stop, or ``None`` to go on."""
        self.rounds_done += 1
        c = self.conditions
        if accuracy is not None:
            if self.best_accuracy is None or accuracy > self.best_accuracy:
                self.best_accuracy = accuracy
                self.rounds_since_best = 0
            else:
                self.rounds_since_best += 1
            if c.target_accuracy is not None and accuracy >= c.target_accuracy:
                return f"target accuracy {c.target_accuracy:.4f} reached"
        if c.patience is not None and self.rounds_since_best >= c.patience:
            return f"no improvement for {c.patience} rounds"
        if c.time_budget_seconds is not None and now - self.started_at >= c.time_budget_seconds:
            return f"time budget of {c.time_budget_seconds:g} s used"
        if self.rounds_done >= c.max_rounds:
            return f"{c.max_rounds} rounds done"
        return None


#: How the simulation trains the built-in nodes of a round (``node_training``): ``auto``
#: (batched from 32 nodes on, see :mod:`accord.simulation.batched`), ``batched`` (as one
#: stack of their models) or ``loop`` (one node after another, the reference).
NODE_TRAINING = ("auto", "batched", "loop")


@dataclass(frozen=True)
class SimulationSettings:
    """A whole in-process run: scenario, model, local training, round, stop and policy;
    ``node_training`` (default ``auto``), how the in-process simulation trains its
    built-in nodes (:data:`NODE_TRAINING`; the networked run ignores it)."""

    scenario: ScenarioSettings = field(default_factory=ScenarioSettings)
    model: ModelSpec = field(default_factory=ModelSpec)
    local: LocalTrainingSettings = field(default_factory=LocalTrainingSettings)
    rounds: RoundSettings = field(default_factory=RoundSettings)
    stop: StopConditions = field(default_factory=StopConditions)
    actor_critic: ActorCriticSettings = field(default_factory=ActorCriticSettings)
    hedge: HedgeLooSettings = field(default_factory=HedgeLooSettings)
    node_training: str = "auto"

    def __post_init__(self) -> None:
        require_choice("node_training", self.node_training, NODE_TRAINING)


@dataclass(frozen=True)
class TimedRecord:
    """A round's record plus where its wall time went, and (in a scenario run) ``faulty``:
    the nodes faulty in that round, sorted (``None`` when not known)."""

    record: RoundRecord
    round_seconds: float
    local_training_seconds: float
    faulty: tuple[str, ...] | None = None


def stop_reason_of_round(tracker: StopTracker, timed: TimedRecord, now: float) -> str | None:
    """Why a run stops after this round: ``diverged: …`` when the round diverged, else what
    the stop conditions say (``None``: go on)."""
    reason = tracker.update(timed.record.validation_accuracy_after, now)
    if timed.record.diverged is not None:
        return f"diverged: {timed.record.diverged}"
    return reason
