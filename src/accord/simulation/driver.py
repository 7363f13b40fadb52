"""The in-process driver of :class:`accord.rounds.RoundEngine`, for experiments.

Every node trains in this process, one after another; the round logic is the same object
the networked server uses.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from accord.aggregation.base import Aggregator, FloatArray
from accord.aggregation.registry import make_policy
from accord.federation.driver import FederatedRun
from accord.federation.grid import RunSpec
from accord.fl.tabular import TabularNode
from accord.rounds import DivergedError, RoundEngine
from accord.run import (
    SimulationSettings,
    StopTracker,
    TimedRecord,
    stop_reason_of_round,
)
from accord.scenario import NodeData, ScenarioData, build_scenario, node_seed
from accord.training.evaluation import make_validation_fn, make_validation_gradient_fn
from accord.training.local import root_update
from accord.training.models import FlatModel, build_model

__all__ = ["RunResult", "Simulation", "SimulationSettings", "TimedRecord", "stop_reason_of_round"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    policy: str
    rounds: tuple[TimedRecord, ...]
    stop_reason: str
    faulty_nodes: tuple[str, ...]
    seconds: float


class Simulation:
    """One policy on one scenario, all in this process; the model trains and is scored on
    ``device`` (``cpu``, the default, or ``cuda[:k]``)."""

    def __init__(
        self,
        settings: SimulationSettings,
        policy: str | Aggregator,
        data: ScenarioData | None = None,
        device: str = "cpu",
    ) -> None:
        self.settings = settings
        self.device = device
        self.data = data or build_scenario(settings.scenario)
        seed = settings.scenario.seed
        model = build_model(settings.model, self.data.n_features, self.data.n_classes, seed)
        self.flat = FlatModel(model.to(device))
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
            validation_gradient=make_validation_gradient_fn(
                self.flat, holdout.validation.features, holdout.validation.labels
            ),
        )
        self._driver = _in_memory_driver(self)

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
            device=self.device,
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
        """One round: the federated driver's round over the in-memory grid, with the
        scenario's truth of which nodes were faulty in it."""
        faulty = tuple(sorted(self.data.faulty_in_round(self.engine.round_index)))
        timed = self._driver.play_round(self.engine, self.engine.roster, self.engine.roster)
        return dataclasses.replace(timed, faulty=faulty)

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


def _in_memory_driver(simulation: Simulation) -> FederatedRun:
    """The federated driver over an in-memory grid of the simulation's nodes: each node is
    a :class:`~accord.federation.worker.NodeWorker` around its
    :class:`~accord.fl.TabularNode`, as in an ``accord node`` process, so the simulation is
    the federated run without the network (DESIGN §3: one driver)."""
    from accord.federation.grid import InMemoryGrid
    from accord.federation.settings import FederationSettings
    from accord.federation.worker import NodeWorker
    from accord.simulation.batched import BatchedGrid, batched_training

    settings = simulation.settings
    spec = RunSpec(
        run_id="in-process",
        model=None,
        n_features=0,
        n_classes=0,
        dim=simulation.engine.dim,
        local=settings.local,
        server_learning_rate=settings.rounds.server_learning_rate,
        federated_evaluation=False,
    )
    nodes = {
        data.node_id: node
        for data, node in zip(simulation.data.nodes, simulation.nodes, strict=True)
    }
    workers = {node_id: NodeWorker.of_node(node_id, node) for node_id, node in nodes.items()}
    roster = simulation.engine.roster
    batch = batched_training(settings.node_training, nodes)
    grid = (
        InMemoryGrid(spec, workers) if batch is None else BatchedGrid(spec, workers, nodes, batch)
    )

    def engine(
        roster: tuple[str, ...], counts: Mapping[str, float], standardisation: Any = None
    ) -> RoundEngine:
        del roster, counts, standardisation  # the simulation built its engine already
        return simulation.engine

    return FederatedRun(
        grid,
        engine,
        simulation.policy.name,
        settings.stop,
        FederationSettings(),
        expected_nodes=len(roster),
        quorum=len(roster),
        run_id="in-process",
        sample_seed=settings.scenario.seed,
    )
