"""Accord's weighting policies as a Flower 1.42 strategy (the ``flwr.serverapp`` Message API).

:class:`AccordStrategy` trains every node of the federation each round and hands their
replies to :class:`accord.rounds.RoundEngine`, the same round logic that ``accord simulate``
and ``accord server`` drive: the policy (any name of
:func:`accord.aggregation.registry.make_policy`: ``fedavg``, ``median``, ``trimmed-mean``,
``krum``, ``hedge-loo``, ``fltrust``, ``zeno``, ``actor-critic``, ...) weighs the nodes, the
engine forms the second gradient, applies it and scores the new weights on the server's
validation (and test) set, and the policy learns from that.

What crosses Flower's messages:

- server → node (``train``): ``RecordDict({"arrays": ArrayRecord(w_t), "config":
  ConfigRecord({"server-round": t, ...})})``, ``w_t`` a whole ``state_dict`` (parameters
  and buffers);
- node → server: ``RecordDict({"arrays": ArrayRecord(w_i), "metrics":
  MetricRecord({"num-examples": n_i, ...})})``: the node's *trained weights*, as any Flower
  ``ClientApp`` replies. The strategy computes the first gradient ``g_i = w_t − w_i`` over
  the trainable parameters, as one float32 vector (the policies never see buffers).

Buffers (BatchNorm's running statistics) are combined outside the policy by the round
engine (:func:`accord.training.weights.combine_buffers`), over the nodes whose first
gradient the round uses: a floating-point buffer is the mean weighted by the nodes' data
sizes; an integer buffer (``num_batches_tracked``) is the maximum.

The *roster* is fixed by the first round: the nodes that replied to it (their
``num-examples`` then are the data sizes the policies use). Later rounds train the roster
nodes that are still connected; a node that fails, times out, replies with arrays that do
not fit the model, or whose update is not finite is left out of that round with a logged
reason (the probabilities are renormalised over the rest); a node that joins later is
ignored. A reply that carries ``partition-id`` in its metrics (as Flower's simulation and
the ``accord.flower`` client apps do) names the node ``node-XX`` and orders the roster by
it, as ``accord simulate`` does; otherwise nodes are named by their Flower node id.

Each round's :class:`~accord.rounds.RoundRecord` is kept in :attr:`AccordStrategy.records`,
logged, and returned to Flower as the round's training ``MetricRecord``
(``validation-accuracy``, ``validation-loss``, ``test-accuracy``, ``test-loss``,
``present-nodes``, ``probability/<node>``, ...), so it appears in
``Result.train_metrics_clientapp``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from accord._validation import require_int, require_number
from accord.aggregation.actor_critic import ActorCriticSettings
from accord.aggregation.base import Aggregator, ServerUpdateFn
from accord.aggregation.hedge import HedgeLooSettings
from accord.aggregation.registry import POLICIES, make_policy
from accord.errors import ConfigurationError, InputDataError, PeerError, ProtocolError
from accord.flower.records import (
    HeldOutData,
    ModelSource,
    arrays_to_weights,
    build_model_copy,
    make_scorer,
    weights_to_arrays,
)
from accord.rounds import DivergedError, NodeUpdate, RoundEngine, RoundRecord, RoundSettings
from accord.scenario import node_id, node_seed
from accord.training.local import LocalTrainingSettings, root_update
from accord.training.weights import WeightLayout, Weights

__all__ = ["AccordStrategy", "StrategySettings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StrategySettings:
    """How :class:`AccordStrategy` runs. Every field has a default.

    - ``policy``: a name from :data:`accord.aggregation.registry.POLICIES` (default
      ``actor-critic``; ``fedavg`` is exactly Flower's FedAvg).
    - ``seed``: the policy's seed (default 0).
    - ``server_learning_rate``: η_server in ``w_{t+1} = w_t − η_server · G`` (default 1.0).
    - ``min_nodes``: nodes that must be connected before the first round (default 2).
    - ``node_wait_seconds``: how long the first round waits for them (default 600) before
      it fails with :class:`~accord.errors.PeerError`.
    - ``federated_evaluation``: also send ``evaluate`` messages to the nodes each round and
      average their metrics (default off; the policy learns from the server's validation).
    - ``actor_critic``, ``hedge``: the settings of those policies (defaults: theirs).
    - ``root_training``: FLTrust's server-side update on the first rows of the validation
      set (default: Accord's local training defaults).
    - ``weighted_by_key``, ``arrayrecord_key``, ``configrecord_key``: the record keys, as in
      Flower's own strategies (``num-examples``, ``arrays``, ``config``).
    - ``name_key``: a reply metric naming the node (default ``partition-id``; ``None``
      names nodes by their Flower node id).
    """

    policy: str = "actor-critic"
    seed: int = 0
    server_learning_rate: float = 1.0
    min_nodes: int = 2
    node_wait_seconds: float = 600.0
    federated_evaluation: bool = False
    actor_critic: ActorCriticSettings = field(default_factory=ActorCriticSettings)
    hedge: HedgeLooSettings = field(default_factory=HedgeLooSettings)
    root_training: LocalTrainingSettings = field(default_factory=LocalTrainingSettings)
    weighted_by_key: str = "num-examples"
    arrayrecord_key: str = "arrays"
    configrecord_key: str = "config"
    name_key: str | None = "partition-id"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigurationError(
                f"policy: expected one of {', '.join(POLICIES)}, got {self.policy!r}"
            )
        require_int("seed", self.seed, minimum=0)
        require_number(
            "server_learning_rate", self.server_learning_rate, minimum=0.0, exclusive_minimum=True
        )
        require_int("min_nodes", self.min_nodes, minimum=1)
        require_number(
            "node_wait_seconds", self.node_wait_seconds, minimum=0.0, exclusive_minimum=True
        )
        for key in ("weighted_by_key", "arrayrecord_key", "configrecord_key"):
            if not getattr(self, key):
                raise ConfigurationError(f"{key}: expected a non-empty record key, got ''")


@dataclass
class _Reply:
    """One usable train reply: the node's trained weights and sample count."""

    weights: dict[str, npt.NDArray[np.generic]]
    sample_count: float
    name: int | None


class AccordStrategy(Strategy):
    """A Flower strategy that weighs the nodes with an Accord policy (see the module
    docstring for the message contents and the rules).

    ``model``: the model (or a factory building it) whose ``state_dict`` the nodes train;
    it fixes the layout of the arrays and is what the validation scores. ``validation``:
    the server's held-out set the policies score candidates on (needed by ``actor-critic``,
    ``hedge-loo``, ``zeno`` and ``fltrust``; optional for ``fedavg``, ``median``,
    ``trimmed-mean`` and ``krum``, which then report no validation metrics). ``test``: an
    optional test set scored after every round. ``policy``: an already built policy
    instead of ``settings.policy``.

    Use :meth:`initial_arrays` for ``start(initial_arrays=...)``.
    """

    def __init__(
        self,
        model: ModelSource,
        settings: StrategySettings | None = None,
        *,
        validation: HeldOutData | None = None,
        test: HeldOutData | None = None,
        policy: Aggregator | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings or StrategySettings()
        self.model = model
        self._module = build_model_copy(model)
        self.layout = WeightLayout.of_module(self._module)
        if self.layout.dim == 0:
            raise ConfigurationError("model: expected trainable parameters, found none")
        self.policy = policy or make_policy(
            self.settings.policy,
            seed=self.settings.seed,
            server_learning_rate=self.settings.server_learning_rate,
            actor_critic=self.settings.actor_critic,
            hedge=self.settings.hedge,
        )
        if self.policy.needs_validation and validation is None:
            raise ConfigurationError(
                f"validation: policy {self.policy.name!r} scores candidates on the server's "
                "validation set; give AccordStrategy(validation=HeldOutData(...))"
            )
        self._validation = (
            None if validation is None else make_scorer(model, validation, self.layout)
        )
        self._test = None if test is None else make_scorer(model, test, self.layout)
        self._server_update: ServerUpdateFn | None = None
        if self.policy.root_samples > 0:
            assert validation is not None  # FLTrust needs validation (checked above)
            self._server_update = root_update(
                build_model_copy(model).train(),
                validation.features,
                validation.labels,
                self.settings.root_training,
                node_seed(self.settings.seed, -1),
                self.policy.root_samples,
            )
        self._clock = clock
        self._sleep = sleep
        self.engine: RoundEngine | None = None
        #: Flower node id of each roster name, in roster order (set by the first round).
        self.node_ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        #: One record per finished round.
        self.records: list[RoundRecord] = []
        #: Why the run diverged, once it did (later rounds then keep the last weights).
        self.diverged: str | None = None
        self._sent: dict[str, npt.NDArray[Any]] | None = None

    # -- Flower's Strategy ---------------------------------------------------------------

    def initial_arrays(self) -> ArrayRecord:
        """The model's current ``state_dict`` as an ``ArrayRecord`` (``w_0``)."""
        return weights_to_arrays(
            {name: t.detach().cpu().numpy() for name, t in self._module.state_dict().items()}
        )

    def summary(self) -> None:
        """Log the policy and the layout."""
        logger.info(
            "AccordStrategy: policy %s, %d trainable values, buffers %s, validation %s, "
            "test %s, min_nodes %d",
            self.policy.name,
            self.layout.dim,
            [entry.name for entry in self.layout.buffers],
            "yes" if self._validation is not None else "no",
            "yes" if self._test is not None else "no",
            self.settings.min_nodes,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send ``w_t`` to every roster node still connected (round 1: every node, once
        ``min_nodes`` are connected)."""
        weights = arrays_to_weights(arrays)
        reason = _mismatch(self.layout, weights)
        if reason is not None:
            raise ConfigurationError(f"arrays of round {server_round}: {reason}")
        if self.engine is not None and not np.array_equal(
            self.layout.flatten(weights), self.engine.global_weights
        ):
            raise ProtocolError(
                f"arrays of round {server_round}: expected the weights this strategy returned "
                "last round (the strategy keeps the global model; do not change it between "
                "rounds)"
            )
        self._sent = weights
        targets = self._targets(grid)
        config["server-round"] = server_round
        content = RecordDict(
            {self.settings.arrayrecord_key: arrays, self.settings.configrecord_key: config}
        )
        logger.info("round %d: training on %d nodes", server_round, len(targets))
        return [
            Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            for node in targets
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weigh the nodes with the policy, apply the second gradient, combine the buffers
        and score the new weights; ``(None, None)`` when the round could not be used."""
        if self.diverged is not None:
            logger.warning(
                "round %d: not aggregated, the run diverged: %s", server_round, self.diverged
            )
            return None, None
        usable, failed = self._read_replies(replies)
        if self.engine is None:
            if not usable:
                logger.warning(
                    "round %d: no usable reply; the roster is not fixed yet", server_round
                )
                return None, None
            self._start_engine(usable)
        engine = self.engine
        assert engine is not None and self._sent is not None
        by_name = {self._name_of(node): reply for node, reply in usable.items()}
        failures = {self._name_of(node): reason for node, reason in failed.items()}
        # The first gradient w_t − w_i over the trainable arrays; with buffers the engine
        # also gets the node's buffers and combines them (accord.training.weights).
        answers: dict[str, object] = {}
        for name, reply in by_name.items():
            gradient = np.asarray(
                engine.global_weights - self.layout.flatten(reply.weights), np.float32
            )
            answers[name] = (
                NodeUpdate(gradient, self.layout.buffers_of(reply.weights))
                if self.layout.buffers
                else gradient
            )
        try:
            pending = engine.aggregate(answers, failures)
        except DivergedError as error:
            self.diverged = error.reason
            logger.warning("round %d: the run diverged: %s", server_round, error.reason)
            return None, None
        except ProtocolError as error:
            logger.warning("round %d: not aggregated: %s", server_round, error)
            return None, None
        record = engine.conclude(pending)
        self.records.append(record)
        if record.diverged is not None:
            self.diverged = record.diverged
        new_weights = self.layout.join(np.array(engine.global_weights), engine.global_buffers)
        _log_record(record)
        return weights_to_arrays(new_weights), _metrics_of(record)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation on the roster nodes, when ``federated_evaluation`` is on."""
        if not self.settings.federated_evaluation or self.engine is None:
            return []
        config["server-round"] = server_round
        content = RecordDict(
            {self.settings.arrayrecord_key: arrays, self.settings.configrecord_key: config}
        )
        connected = set(grid.get_node_ids())
        return [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
            for node in self.node_ids.values()
            if node in connected
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The ``num-examples``-weighted mean of each numeric metric the nodes report."""
        key = self.settings.weighted_by_key
        rows: list[tuple[float, Mapping[str, Any]]] = []
        for message in replies:
            if message.has_error():
                logger.warning(
                    "round %d: evaluate error from node %d: %s",
                    server_round,
                    message.metadata.src_node_id,
                    message.error.reason,
                )
                continue
            for record in message.content.metric_records.values():
                count = record.get(key)
                if isinstance(count, int | float) and count > 0:
                    rows.append((float(count), record))
        if not rows:
            return None
        total = sum(count for count, _ in rows)
        names = sorted({name for _, record in rows for name in record if name != key})
        merged = MetricRecord()
        for name in names:
            values = [
                (count, float(record[name]))
                for count, record in rows
                if isinstance(record.get(name), int | float)
            ]
            if values:
                merged[name] = sum(c * v for c, v in values) / sum(c for c, _ in values)
        merged[key] = int(total)
        return merged

    # -- helpers -------------------------------------------------------------------------

    def _targets(self, grid: Grid) -> list[int]:
        if self.engine is None:
            deadline = self._clock() + self.settings.node_wait_seconds
            while len(nodes := sorted(grid.get_node_ids())) < self.settings.min_nodes:
                if self._clock() >= deadline:
                    raise PeerError(
                        f"min_nodes: expected {self.settings.min_nodes} connected nodes within "
                        f"{self.settings.node_wait_seconds:g} s, got {len(nodes)}"
                    )
                logger.info(
                    "waiting for nodes: %d of %d connected", len(nodes), self.settings.min_nodes
                )
                self._sleep(0.5)
            return nodes
        connected = set(grid.get_node_ids())
        targets = [node for node in self.node_ids.values() if node in connected]
        gone = [name for name, node in self.node_ids.items() if node not in connected]
        if gone:
            logger.warning("nodes no longer connected, left out: %s", gone)
        return targets

    def _read_replies(self, replies: Iterable[Message]) -> tuple[dict[int, _Reply], dict[int, str]]:
        usable: dict[int, _Reply] = {}
        failures: dict[int, str] = {}
        for message in replies:
            node = int(message.metadata.src_node_id)
            if message.has_error():
                failures[node] = f"error reply: {message.error.reason}"
                continue
            reply, reason = self._read_reply(message.content)
            if reply is None:
                failures[node] = f"unusable reply: {reason}"
            else:
                usable[node] = reply
        return usable, failures

    def _read_reply(self, content: RecordDict) -> tuple[_Reply | None, str]:
        arrays = content.array_records.get(self.settings.arrayrecord_key)
        if arrays is None:
            return None, f"no ArrayRecord {self.settings.arrayrecord_key!r}"
        weights = arrays_to_weights(arrays)
        reason = _mismatch(self.layout, weights)
        if reason is not None:
            return None, reason
        count: float | None = None
        name: int | None = None
        for metrics in content.metric_records.values():
            value = metrics.get(self.settings.weighted_by_key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                count = float(value)
            label = metrics.get(self.settings.name_key) if self.settings.name_key else None
            if isinstance(label, int) and not isinstance(label, bool) and label >= 0:
                name = label
        if count is None or not np.isfinite(count) or count <= 0:
            return None, f"expected a positive metric {self.settings.weighted_by_key!r}"
        return _Reply(weights, count, name), ""

    def _start_engine(self, usable: Mapping[int, _Reply]) -> None:
        labels = [reply.name for reply in usable.values()]
        named = all(label is not None for label in labels) and len(set(labels)) == len(labels)
        if named:
            order = sorted(usable, key=lambda node: usable[node].name or 0)
            self.node_ids = {node_id(usable[node].name or 0): node for node in order}
        else:
            self.node_ids = {str(node): node for node in sorted(usable)}
        self._names = {node: name for name, node in self.node_ids.items()}
        roster = tuple(self.node_ids)
        assert self._sent is not None
        self.engine = RoundEngine(
            roster=roster,
            sample_counts={self._names[node]: reply.sample_count for node, reply in usable.items()},
            initial_weights=self.layout.flatten(self._sent),
            aggregator=self.policy,
            validate=self._validation,
            test=self._test,
            settings=RoundSettings(server_learning_rate=self.settings.server_learning_rate),
            server_update=self._server_update,
            layout=self.layout,
            initial_buffers=self.layout.buffers_of(self._sent),
            validation_gradient=None if self._validation is None else self._validation.gradient,
        )
        logger.info("roster fixed by round 1: %d nodes %s", len(roster), list(roster))

    def _name_of(self, node: int) -> str:
        return self._names.get(node, f"unknown-{node}")


def _mismatch(layout: WeightLayout, weights: Weights) -> str | None:
    """Why ``weights`` cannot be used with ``layout`` (names, shapes, dtypes, a non-finite
    buffer), or ``None``. Non-finite trainable values are the round engine's to judge."""
    try:
        layout.check(weights, "arrays")
    except InputDataError as error:
        return str(error).removeprefix("arrays: ")
    for entry in layout.buffers:
        array = np.asarray(weights[entry.name])
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return f"buffer {entry.name} contains NaN or Inf"
    return None


def _metrics_of(record: RoundRecord) -> MetricRecord:
    metrics: dict[str, float | int] = {
        "present-nodes": len(record.present),
        "dropped-nodes": len(record.dropped),
        "aggregate-seconds": record.aggregate_seconds,
        "learn-seconds": record.learn_seconds,
    }
    optional = {
        "validation-accuracy": record.validation_accuracy_after,
        "validation-loss": record.validation_loss_after,
        "test-accuracy": record.test_accuracy,
        "test-loss": record.test_loss,
    }
    metrics.update({key: value for key, value in optional.items() if value is not None})
    metrics.update({f"probability/{node}": p for node, p in record.probabilities.items()})
    metrics.update({f"diagnostics/{key}": float(v) for key, v in record.diagnostics.items()})
    return MetricRecord(metrics)  # type: ignore[arg-type]


def _log_record(record: RoundRecord) -> None:
    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    logger.info(
        "round %d: validation accuracy %s loss %s, test accuracy %s, %d nodes used, "
        "largest probabilities %s",
        record.round_index + 1,
        shown(record.validation_accuracy_after),
        shown(record.validation_loss_after),
        shown(record.test_accuracy),
        len(record.present),
        sorted(record.probabilities.items(), key=lambda item: -item[1])[:3],
    )
