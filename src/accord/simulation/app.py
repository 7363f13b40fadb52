"""A user's app in this process: the federated run over the in-memory grid.

:func:`run_app` is what ``accord server --app`` and ``accord node --app`` processes do,
without the processes: the same :class:`~accord.federation.driver.FederatedRun`, the same
node-side :class:`~accord.federation.worker.NodeWorker` around each user node, an
:class:`~accord.federation.grid.InMemoryGrid` in place of gRPC. The same seed therefore
gives the same metrics in process and over the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from accord.aggregation.actor_critic import ActorCriticSettings
from accord.aggregation.base import Aggregator
from accord.aggregation.hedge import HedgeLooSettings
from accord.errors import ConfigurationError
from accord.federation.driver import FederatedResult, FederatedRun
from accord.federation.engine import prepare_app_run
from accord.federation.grid import InMemoryGrid
from accord.federation.settings import FederationSettings
from accord.federation.worker import NodeWorker
from accord.fl.contracts import Node, ServerApp
from accord.rounds import RoundSettings
from accord.run import StopConditions, TimedRecord

__all__ = ["run_app"]

logger = logging.getLogger(__name__)


def run_app(
    server: ServerApp,
    nodes: Mapping[str, Node],
    policy: str | Callable[[], Aggregator] = "actor-critic",
    *,
    rounds: int = 20,
    stop: StopConditions | None = None,
    seed: int = 0,
    server_learning_rate: float = 1.0,
    actor_critic: ActorCriticSettings | None = None,
    hedge: HedgeLooSettings | None = None,
    config: Mapping[str, Any] | None = None,
    on_round: Callable[[TimedRecord], None] | None = None,
) -> FederatedResult:
    """Train ``server``'s model on ``nodes`` (node id → :class:`~accord.fl.Node`) with
    ``policy`` (a name such as ``actor-critic``, ``hedge-loo``, ``fedavg``, or a factory of
    an :class:`~accord.aggregation.base.Aggregator`) for ``rounds`` rounds (or until
    ``stop`` says so). ``seed`` seeds the policy; ``config`` reaches every node's ``fit``
    and ``evaluate``. Returns every round's record (``result.rounds``)."""
    if not nodes:
        raise ConfigurationError("nodes: expected at least one node")
    spec, factory = prepare_app_run(
        server,
        policy,
        run_id="in-process",
        seed=seed,
        rounds=RoundSettings(server_learning_rate=server_learning_rate),
        actor_critic=actor_critic,
        hedge=hedge,
        config=config,
    )
    workers = {node_id: NodeWorker.of_node(node_id, node) for node_id, node in nodes.items()}
    grid = InMemoryGrid(spec, workers)
    refused = sorted(set(nodes) - set(grid.connected()))
    if refused:
        raise ConfigurationError(
            f"nodes {refused} were refused (see the log): their model differs from the server's"
            " or they have no samples"
        )
    run = FederatedRun(
        grid,
        factory,
        policy if isinstance(policy, str) else "custom",
        stop or StopConditions(max_rounds=rounds),
        FederationSettings(),
        expected_nodes=len(nodes),
        quorum=len(nodes),
        run_id="in-process",
        on_round=on_round,
        sample_seed=seed,
    )
    return run.run()
