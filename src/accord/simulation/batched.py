"""The simulation's grid with batched local training of the built-in nodes.

:class:`BatchedGrid` is the in-memory grid (:class:`accord.federation.grid.InMemoryGrid`)
with one step added before each round's collection: the round's built-in nodes
(:class:`accord.fl.TabularNode`) train as one stack (:class:`accord.training.batched.NodeBatch`),
and each node's trainer is handed its result. Then every node answers through its
:class:`~accord.federation.worker.NodeWorker` exactly as in the loop (checks, the faulty-node
recipe, digests); the trainer returns the result it was handed instead of training again.
Nothing else changes: a round's replies are the loop's to float rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from accord.aggregation.base import FloatArray
from accord.errors import ConfigurationError
from accord.federation.grid import InMemoryGrid, NodeEndpoint, Replies, RunSpec
from accord.fl.tabular import TabularNode
from accord.training.batched import NodeBatch, stacking_problem
from accord.training.weights import Weights

__all__ = ["BATCHED_FROM_NODES", "BatchedGrid", "batched_training"]

logger = logging.getLogger(__name__)

#: ``node_training = "auto"`` (:data:`accord.run.NODE_TRAINING`) trains the nodes as one
#: batch from this many nodes on. Below it the loop is about as fast, and it keeps the small
#: runs' figures bit for bit (a batched sum rounds in another order, which changes the last
#: digits of a 100-round run).
BATCHED_FROM_NODES = 32


def batched_training(mode: str, nodes: Mapping[str, TabularNode]) -> NodeBatch | None:
    """The stack for ``node_training = mode`` over ``nodes``, or ``None`` for the loop.
    ``batched`` on nodes that cannot be stacked is a :class:`ConfigurationError` naming why;
    ``auto`` then falls back to the loop."""
    if mode == "loop" or (mode == "auto" and len(nodes) < BATCHED_FROM_NODES):
        return None
    trainers = [trainer for node in nodes.values() for trainer in node.trainers()]
    problem = stacking_problem(trainers)
    if problem is not None:
        if mode == "batched":
            raise ConfigurationError(f"node_training: batched, but {problem}")
        logger.info("local training runs node by node: %s", problem)
        return None
    return NodeBatch(trainers)


class BatchedGrid(InMemoryGrid):
    """An :class:`InMemoryGrid` whose built-in nodes train each round as one ``batch``."""

    def __init__(
        self,
        spec: RunSpec,
        endpoints: Mapping[str, NodeEndpoint],
        nodes: Mapping[str, TabularNode],
        batch: NodeBatch,
    ) -> None:
        super().__init__(spec, endpoints)
        self.nodes = dict(nodes)
        self.batch = batch

    def collect_first_gradients(
        self,
        round_index: int,
        weights: FloatArray,
        node_ids: tuple[str, ...],
        timeout: float,
        buffers: Weights | None = None,
    ) -> Replies:
        connected = self.connected()
        trainers = [
            trainer
            for node in node_ids
            if node in connected and node in self.nodes
            for trainer in (self.nodes[node].round_trainer(round_index),)
            if trainer is not None
        ]
        if trainers:
            gradients = self.batch.first_gradients(weights, round_index, trainers)
            for trainer, gradient in zip(trainers, gradients, strict=True):
                trainer.provide(round_index, weights, gradient)
        return super().collect_first_gradients(round_index, weights, node_ids, timeout, buffers)
