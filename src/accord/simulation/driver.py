"""The in-process driver of :class:`accord.rounds.RoundEngine`, for experiments.

Every node trains in this process, one after another; the round logic is the same object
the networked server uses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from accord.aggregation.actor_critic import ActorCriticSettings
from accord.aggregation.base import Aggregator, FloatArray
from accord.aggregation.hedge import HedgeLooSettings
from accord.aggregation.registry import make_policy
from accord.fl.tabular import TabularNode
from accord.rounds import DivergedError, RoundEngine, RoundRecord, RoundSettings
from accord.scenario import NodeData, ScenarioData, ScenarioSettings, build_scenario, node_seed
from accord.simulation.stop import StopConditions, StopTracker
from accord.training.evaluation import make_validation_fn
from accord.training.local import LocalTrainingSettings, root_update
from accord.training.models import FlatModel, ModelSpec, build_model

__all__ = ["RunResult", "Simulation", "SimulationSettings", "TimedRecord", "stop_reason_of_round"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationSettings:
    """A whole in-process run: scenario, model, local training, round, stop and policy."""

    scenario: ScenarioSettings = field(default_factory=ScenarioSettings)
    model: ModelSpec = field(default_factory=ModelSpec)
    local: LocalTrainingSettings = field(default_factory=LocalTrainingSettings)
    rounds: RoundSettings = field(default_factory=RoundSettings)
    stop: StopConditions = field(default_factory=StopConditions)
    actor_critic: ActorCriticSettings = field(default_factory=ActorCriticSettings)
    hedge: HedgeLooSettings = field(default_factory=HedgeLooSettings)


@dataclass(frozen=True)
class TimedRecord:
    """A round's record plus where its wall time went, and (in a scenario run) ``faulty``:
    the nodes faulty in that round, sorted (``None`` when not known)."""

    record: RoundRecord
    round_seconds: float
    local_training_seconds: float
    faulty: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RunResult:
    policy: str
    rounds: tuple[TimedRecord, ...]
    stop_reason: str
    faulty_nodes: tuple[str, ...]
    seconds: float


def stop_reason_of_round(tracker: StopTracker, timed: TimedRecord, now: float) -> str | None:
    """Why a run stops after this round: ``diverged: …`` when the round diverged, else what
    the stop conditions say (``None``: go on)."""
    reason = tracker.update(timed.record.validation_accuracy_after, now)
    if timed.record.diverged is not None:
        return f"diverged: {timed.record.diverged}"
    return reason


class Simulation:
    """One policy on one scenario, all in this process."""

    def __init__(
        self,
        settings: SimulationSettings,
        policy: str | Aggregator,
        data: ScenarioData | None = None,
    ) -> None:
        self.settings = settings
        self.data = data or build_scenario(settings.scenario)
        seed = settings.scenario.seed
        model = build_model(settings.model, self.data.n_features, self.data.n_classes, seed)
        self.flat = FlatModel(model)
        # The same node class the networked node runs (accord.fl.TabularNode).
        self.nodes = [self._node(node) for node in self.data.nodes]
        self.policy = (
            policy
            if isinstance(policy, Aggregator)
            else make_policy(
                policy,
                seed=seed,
                server_learning_rate=settings.rounds.server_learning_rate,
                actor_critic=settings.actor_critic,
                hedge=settings.hedge,
            )
        )
        holdout = self.data.holdout
        server_update = None
        if self.policy.root_samples > 0:
            server_update = root_update(
                build_model(settings.model, self.data.n_features, self.data.n_classes, seed),
                holdout.validation.features,
                holdout.validation.labels,
                settings.local,
                node_seed(seed, -1),
                self.policy.root_samples,
            )
        self.engine = RoundEngine(
            roster=tuple(node.node_id for node in self.data.nodes),
            sample_counts={node.node_id: node.sample_count for node in self.data.nodes},
            initial_weights=self.flat.get_flat(),
            aggregator=self.policy,
            validate=make_validation_fn(
                self.flat, holdout.validation.features, holdout.validation.labels
            ),
            test=make_validation_fn(self.flat, holdout.test.features, holdout.test.labels),
            settings=settings.rounds,
            server_update=server_update,
        )

    def _node(self, node: NodeData) -> TabularNode:
        seed = self.settings.scenario.seed
        return TabularNode(
            node.features,
            node.labels,
            spec=self.settings.model,
            n_classes=self.data.n_classes,
            settings=self.settings.local,
            seed=node_seed(seed, node.index),
            model_seed=seed,
            fault=self.data.node_fault(node),
        )

    def first_gradients(self, weights: FloatArray, round_index: int) -> dict[str, FloatArray]:
        """Every node's first gradient, faulty nodes following
        :func:`accord.data.faults.node_first_gradient` (as a networked node does)."""
        return {
            data.node_id: node.first_gradient(weights, round_index)
            for data, node in zip(self.data.nodes, self.nodes, strict=True)
        }

    def faulty_in_round(self, round_index: int) -> frozenset[str]:
        """The nodes faulty in round ``round_index`` (0-based)."""
        return self.data.faulty_in_round(round_index)

    def run_round(self) -> TimedRecord:
        started = time.perf_counter()
        weights = np.array(self.engine.global_weights)
        gradients = self.first_gradients(weights, self.engine.round_index)
        local_seconds = time.perf_counter() - started
        faulty = tuple(sorted(self.data.faulty_in_round(self.engine.round_index)))
        pending = self.engine.aggregate(gradients)
        record = self.engine.conclude(pending)
        return TimedRecord(record, time.perf_counter() - started, local_seconds, faulty)

    def run(
        self,
        on_round: Callable[[TimedRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> RunResult:
        """Run rounds until a stop condition holds, or the model diverges (stop reason
        ``diverged: …``, see :func:`stop_reason_of_round`)."""
        tracker = StopTracker(self.settings.stop, clock())
        rounds: list[TimedRecord] = []
        started = time.perf_counter()
        while True:
            try:
                timed = self.run_round()
            except DivergedError as error:
                reason = f"diverged: {error.reason}"
                logger.warning("%s: %s", self.policy.name, reason)
                break
            rounds.append(timed)
            if on_round is not None:
                on_round(timed)
            stop_reason = stop_reason_of_round(tracker, timed, clock())
            if stop_reason is not None:
                reason = stop_reason
                logger.info(
                    "%s: stopping after round %d: %s",
                    self.policy.name,
                    timed.record.round_index + 1,
                    reason,
                )
                break
        return RunResult(
            policy=self.policy.name,
            rounds=tuple(rounds),
            stop_reason=reason,
            faulty_nodes=self.data.faulty_nodes,
            seconds=time.perf_counter() - started,
        )
