"""Flower ``ClientApp``s around Accord nodes: any :class:`accord.fl.Node`, or the nodes of
an Accord scenario.

Flower node ``partition-id`` *i* (its ``node_config``, set by Flower's simulation or by
``flower-supernode --node-config "partition-id=i num-partitions=N"``) holds exactly what
node *i* holds in ``accord simulate`` with the same :class:`ScenarioClientSettings`: the
same split of the same dataset, the same faulty nodes doing the same thing
(:func:`accord.data.faults.node_first_gradient`, the one recipe), and the same local
training (:class:`accord.training.local.LocalTrainer`, seeded per node and round). So a
Flower run with :class:`~accord.flower.strategy.AccordStrategy` and an ``accord simulate``
run of the same policy see the same first gradients.

The node replies as any Flower client does: its trained weights ``w_i = w_t − g_i`` in an
``ArrayRecord`` and ``MetricRecord({"num-examples": n_i, "partition-id": i})``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from accord.data.faults import FaultSpec
from accord.data.partition import PartitionSpec
from accord.errors import ConfigurationError
from accord.fl.contracts import ROUND, FitResult, Node
from accord.fl.tabular import TabularNode
from accord.flower.records import arrays_to_weights, weights_to_arrays
from accord.scenario import ScenarioData, ScenarioSettings, build_scenario, node_seed
from accord.training.local import LocalTrainingSettings
from accord.training.models import ModelSpec
from accord.training.weights import WeightLayout, Weights

__all__ = ["NodeFactory", "ScenarioClientSettings", "node_client_app", "scenario_client_app"]


@dataclass(frozen=True)
class ScenarioClientSettings:
    """The scenario, model and local training of the nodes (defaults: ``accord simulate``'s:
    digits, 10 nodes, Dirichlet 0.5, 3 label flippers, MLP 64-32-10, SGD 0.2, batch 16,
    one epoch)."""

    scenario: ScenarioSettings = field(default_factory=ScenarioSettings)
    model: ModelSpec = field(default_factory=ModelSpec)
    local: LocalTrainingSettings = field(default_factory=LocalTrainingSettings)

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> ScenarioClientSettings:
        """From a Flower run config (``[tool.flwr.app.config]``), keys: ``seed``, ``nodes``,
        ``dataset``, ``alpha``, ``fault``, ``faulty``, ``hidden`` (e.g. ``"32"``),
        ``local-learning-rate``, ``local-epochs``, ``batch-size``; absent keys keep the
        defaults, other keys (the server's) are ignored."""
        base = cls()
        scenario = base.scenario
        try:
            hidden = tuple(int(w) for w in str(config.get("hidden", "32")).split(",") if w)
            scenario = ScenarioSettings(
                dataset=str(config.get("dataset", scenario.dataset)),
                nodes=int(config.get("nodes", scenario.nodes)),
                partition=PartitionSpec(alpha=float(config.get("alpha", 0.5))),
                fault=FaultSpec(
                    kind=str(config.get("fault", "label-flip")),
                    count=int(config["faulty"]) if "faulty" in config else None,
                ),
                seed=int(config.get("seed", scenario.seed)),
            )
            local = LocalTrainingSettings(
                learning_rate=float(config.get("local-learning-rate", 0.2)),
                epochs=int(config.get("local-epochs", 1)),
                batch_size=int(config.get("batch-size", 16)),
            )
        except ConfigurationError:
            raise
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"run config: expected a number, {error}") from error
        return cls(scenario=scenario, model=ModelSpec(hidden=hidden), local=local)


def _scenario_node(settings: ScenarioClientSettings, index: int) -> Node:
    """Node ``index`` of the scenario, built exactly as ``accord simulate`` builds it (the
    built-in :class:`~accord.fl.TabularNode`), scored on its own samples by ``evaluate``."""
    data = _scenario(settings.scenario)
    node = data.nodes[index]
    seed = settings.scenario.seed
    return TabularNode(
        node.features,
        node.labels,
        spec=settings.model,
        n_classes=data.n_classes,
        settings=settings.local,
        seed=node_seed(seed, index),
        model_seed=seed,
        fault=data.node_fault(node),
        validation=(node.features, node.labels),
    )


@functools.lru_cache(maxsize=4)
def _scenario(settings: ScenarioSettings) -> ScenarioData:
    return build_scenario(settings)


def _partition(context: Context, nodes: int | None) -> int:
    """The node's ``partition-id`` from its node config, checked against ``nodes``."""
    try:
        index = int(context.node_config["partition-id"])
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(
            "node config: expected an integer 'partition-id' (flower-supernode "
            f'--node-config "partition-id=I num-partitions=N"), got {dict(context.node_config)}'
        ) from error
    if nodes is None:
        return index
    partitions = context.node_config.get("num-partitions")
    if partitions is not None and int(partitions) != nodes:
        raise ConfigurationError(
            f"node config: num-partitions is {partitions}, expected the scenario's {nodes} nodes"
        )
    if not 0 <= index < nodes:
        raise ConfigurationError(f"node config: partition-id must be in [0, {nodes}), got {index}")
    return index


#: Builds (or returns a cached) node for a Flower ``Context``.
NodeFactory = Callable[[Context], Node]


def node_client_app(factory: NodeFactory) -> ClientApp:
    """A ``ClientApp`` around any :class:`accord.fl.Node`: ``train`` calls the node's
    ``fit`` with the received weights and ``{ROUND: server-round − 1, **config}`` and replies
    with its trained weights (``w_t − g_i`` and its buffers when ``fit`` returns a first
    gradient) and ``MetricRecord({"num-examples", "partition-id" (when the node config has
    one), **fit metrics})``; ``evaluate`` replies with the node's loss, accuracy and count.
    ``factory(context)`` is called for every message: cache the node in it (e.g. by
    ``partition-id``) to keep its data and model between rounds."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        node = factory(context)
        weights = arrays_to_weights(message.content.array_records["arrays"])
        layout = node.layout()
        layout.check(weights, "arrays from the server")
        config = dict(message.content.config_records["config"])
        server_round = config.get("server-round")
        if not isinstance(server_round, int) or server_round < 1:
            raise ConfigurationError(
                f"config from the server: expected server-round >= 1, got {server_round!r}"
            )
        result = node.fit(weights, {**config, ROUND: server_round - 1})
        trained = _trained_weights(layout, weights, result)
        metrics: dict[str, int | float] = {"num-examples": result.sample_count}
        metrics.update({key: float(value) for key, value in result.metrics.items()})
        if "partition-id" in context.node_config:
            metrics["partition-id"] = int(context.node_config["partition-id"])
        content = RecordDict(
            {"arrays": weights_to_arrays(trained), "metrics": MetricRecord(metrics)}  # type: ignore[arg-type]
        )
        return Message(content=content, reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        node = factory(context)
        weights = arrays_to_weights(message.content.array_records["arrays"])
        config = dict(message.content.config_records.get("config", {}))
        result = node.evaluate(weights, config)
        metrics = {
            "num-examples": result.sample_count,
            "loss": result.loss,
            "accuracy": result.accuracy,
            **{key: float(value) for key, value in result.metrics.items()},
        }
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)  # type: ignore[arg-type]

    return app


def _trained_weights(layout: WeightLayout, sent: Weights, result: FitResult) -> dict[str, Any]:
    """``w_i`` from a node's ``fit``: its weights, or ``w_t − g_i`` with its buffers."""
    if result.weights is not None:
        layout.check(result.weights, "the node's weights")
        return dict(result.weights)
    assert result.first_gradient is not None  # FitResult holds exactly one of the two
    gradient = layout.flatten(result.first_gradient)
    buffers = result.buffers if result.buffers else layout.buffers_of(sent)
    return layout.join(layout.flatten(sent) - gradient, buffers)


def scenario_client_app(settings: ScenarioClientSettings | None = None) -> ClientApp:
    """A ``ClientApp`` whose node ``partition-id`` is that node of the scenario (``None``:
    read the settings from the run config with
    :meth:`ScenarioClientSettings.from_run_config`)."""
    cache: dict[tuple[ScenarioClientSettings, int], Node] = {}

    def factory(context: Context) -> Node:
        chosen = settings or ScenarioClientSettings.from_run_config(context.run_config)
        index = _partition(context, chosen.scenario.nodes)
        key = (chosen, index)
        if key not in cache:
            cache[key] = _scenario_node(chosen, index)
        return cache[key]

    return node_client_app(factory)
