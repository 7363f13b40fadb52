"""A Flower ``ClientApp`` whose nodes are the nodes of an Accord scenario.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from accord.aggregation.base import FloatArray
from accord.data.faults import FaultSpec, node_first_gradient
from accord.data.partition import PartitionSpec
from accord.errors import ConfigurationError
from accord.flower._weights import Layout
from accord.flower.strategy import arrays_to_weights, weights_to_arrays
from accord.scenario import ScenarioData, ScenarioSettings, build_scenario, node_seed
from accord.training.local import LocalTrainer, LocalTrainingSettings
from accord.training.models import ModelSpec, build_model

__all__ = ["ScenarioClientSettings", "scenario_client_app"]


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


class _Node:
    """One scenario node's data and trainers, built once per process."""

    def __init__(self, settings: ScenarioClientSettings, data: ScenarioData, index: int) -> None:
        seed = settings.scenario.seed
        self.data = data
        self.node = data.nodes[index]

        def trainer(labels: np.ndarray[Any, Any]) -> LocalTrainer:
            model = build_model(settings.model, data.n_features, data.n_classes, seed)
            return LocalTrainer(
                model, self.node.features, labels, settings.local, node_seed(seed, index)
            )

        self.trainer = trainer(self.node.labels)
        self.flipped = (
            trainer(self.node.flipped_labels) if self.node.flipped_labels is not None else None
        )
        self.layout = Layout.of_module(self.trainer.flat.module)

    def first_gradient(self, weights: FloatArray, round_index: int) -> FloatArray:
        def train(flipped: bool) -> FloatArray:
            chosen = self.flipped if flipped and self.flipped is not None else self.trainer
            return chosen.first_gradient(weights, round_index)

        return node_first_gradient(
            self.data.node_fault(self.node), round_index, train, self.layout.dim
        )


@functools.lru_cache(maxsize=4)
def _scenario(settings: ScenarioSettings) -> ScenarioData:
    return build_scenario(settings)


@functools.lru_cache(maxsize=64)
def _node(settings: ScenarioClientSettings, index: int) -> _Node:
    return _Node(settings, _scenario(settings.scenario), index)


def _partition(context: Context, settings: ScenarioClientSettings) -> int:
    try:
        index = int(context.node_config["partition-id"])
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(
            "node config: expected an integer 'partition-id' (flower-supernode "
            f'--node-config "partition-id=I num-partitions=N"), got {dict(context.node_config)}'
        ) from error
    partitions = context.node_config.get("num-partitions")
    nodes = settings.scenario.nodes
    if partitions is not None and int(partitions) != nodes:
        raise ConfigurationError(
            f"node config: num-partitions is {partitions}, expected the scenario's {nodes} nodes"
        )
    if not 0 <= index < nodes:
        raise ConfigurationError(f"node config: partition-id must be in [0, {nodes}), got {index}")
    return index


def scenario_client_app(settings: ScenarioClientSettings | None = None) -> ClientApp:
    """A ``ClientApp`` training the scenario's nodes (``None``: read the settings from the
    run config with :meth:`ScenarioClientSettings.from_run_config`)."""
    app = ClientApp()

    def settings_of(context: Context) -> ScenarioClientSettings:
        if settings is not None:
            return settings
        return ScenarioClientSettings.from_run_config(context.run_config)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        chosen = settings_of(context)
        index = _partition(context, chosen)
        node = _node(chosen, index)
        weights = arrays_to_weights(message.content.array_records["arrays"])
        reason = node.layout.mismatch(weights)
        if reason is not None:
            raise ConfigurationError(f"arrays from the server: {reason}")
        server_round = message.content.config_records["config"].get("server-round")
        if not isinstance(server_round, int) or server_round < 1:
            raise ConfigurationError(
                f"config from the server: expected server-round >= 1, got {server_round!r}"
            )
        round_index = server_round - 1
        flat = node.layout.flatten(weights)
        trained = flat - node.first_gradient(flat, round_index)
        reply = node.layout.join(trained.astype(np.float32), node.layout.buffers_of(weights))
        metrics = MetricRecord({"num-examples": node.node.sample_count, "partition-id": index})
        content = RecordDict({"arrays": weights_to_arrays(reply), "metrics": metrics})
        return Message(content=content, reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        chosen = settings_of(context)
        index = _partition(context, chosen)
        node = _node(chosen, index)
        weights = arrays_to_weights(message.content.array_records["arrays"])
        node.trainer.flat.set_flat(node.layout.flatten(weights))
        loss, accuracy = node.trainer.evaluate()
        metrics = MetricRecord(
            {
                "num-examples": node.node.sample_count,
                "loss": loss,
                "accuracy": accuracy,
            }
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=message)

    return app
