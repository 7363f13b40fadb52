"""The line between the round driver and the transport (Flower's ``Grid``).

:class:`accord.federation.driver.FederatedRun` speaks only to a :class:`Grid`: wait for
nodes, ask the connected ones for first gradients before a deadline, send the second
gradient, ask for evaluations, shut down. :class:`accord.federation.server.GrpcGrid` does it
over gRPC; :class:`InMemoryGrid` calls node objects in this process (tests, debugging).

Nothing a node does can raise out of a grid method: a node that fails, vanishes or answers
late is reported in the ``failures`` mapping with a reason.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from accord.aggregation.base import FloatArray
from accord.credentials.naming import check_node_id
from accord.data.standardise import FeatureMoments, Standardisation
from accord.errors import AccordError
from accord.federation.fingerprint import FEATURES, SCENARIO, Fingerprint
from accord.federation.tensors import state_digest
from accord.training.local import LocalTrainingSettings
from accord.training.models import ModelSpec
from accord.training.weights import WeightLayout, Weights

__all__ = [
    "Evaluation",
    "Grid",
    "InMemoryGrid",
    "NodeEndpoint",
    "NodeInfo",
    "Replies",
    "RunSpec",
    "admission_problem",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    """What a node says about itself when it registers."""

    node_id: str
    sample_count: int
    n_features: int
    n_classes: int
    validation_sample_count: int = 0
    fingerprint: Fingerprint = field(default_factory=Fingerprint)
    #: The moments of its training features, when it asks for the run's global
    #: standardisation (``None``: its data needs none, or it scales its data itself).
    feature_moments: FeatureMoments | None = None


@dataclass(frozen=True)
class RunSpec:
    """What the server tells every node when it registers (``Welcome``)."""

    run_id: str
    #: The built-in model to build; ``None`` in a run of a user app (``--app``).
    model: ModelSpec | None
    n_features: int
    n_classes: int
    dim: int
    local: LocalTrainingSettings
    server_learning_rate: float
    federated_evaluation: bool
    #: What a registering node's fingerprint is compared with (server side only).
    fingerprint: Fingerprint = field(default_factory=Fingerprint)
    #: The server's scenario in words, for the refusal of a node whose scenario differs.
    scenario_summary: str = ""
    #: The server's feature columns in words, for the refusal of a node whose columns differ.
    feature_summary: str = ""
    #: The model's arrays (names, shapes, dtypes, trained or not); a node whose own model
    #: differs is refused. ``None``: not compared (a built-in model, which the node builds
    #: from ``model``).
    layout: WeightLayout | None = None
    #: Values for the node's ``fit``/``evaluate`` config and its app's factory (JSON types).
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """A node's accuracy and loss of ``w_{t+1}`` on its own validation split."""

    accuracy: float
    loss: float
    sample_count: int


@dataclass(frozen=True)
class Replies:
    """Answers of one request to several nodes: ``values`` by node, or a failure reason."""

    values: dict[str, object] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    #: Wall seconds each answering node reported for its own work (local training).
    work_seconds: dict[str, float] = field(default_factory=dict)


def admission_problem(info: NodeInfo, spec: RunSpec, roster: frozenset[str] | None) -> str | None:
    """Why a registering node cannot join this run, or ``None`` (not secret: sent back)."""
    problem = check_node_id(info.node_id)
    if problem is not None:
        return problem
    if roster is not None and info.node_id not in roster:
        return f"node {info.node_id} is not in this run's roster"
    differ = info.fingerprint.mismatches(spec.fingerprint)
    if SCENARIO in differ:
        return (
            "the node's scenario options differ from the server's "
            f"({spec.scenario_summary or 'see its config.toml'}); start the node with the "
            "server's scenario options (--config with the run folder's config.toml works)"
        )
    if FEATURES in differ:
        return (
            "the node's feature columns differ from the server's files (names and order must "
            f"agree; the server's: {spec.feature_summary or 'see its validation file'})"
        )
    if differ:
        return f"the node's {', '.join(differ)} differs from the server's"
    if spec.model is None:  # a user app: the node is built, and checked, after Welcome
        return None
    return _data_problem(info, spec)


def _data_problem(info: NodeInfo, spec: RunSpec) -> str | None:
    """Why a node of the built-in model cannot train it on its data, or ``None``."""
    if info.sample_count < 1:
        return "a node needs at least one training sample"
    if info.n_features != spec.n_features:
        return f"the model takes {spec.n_features} features; the node has {info.n_features}"
    if info.feature_moments is not None and info.feature_moments.n_features != info.n_features:
        return (
            f"the node's feature moments cover {info.feature_moments.n_features} features; "
            f"it has {info.n_features}"
        )
    if info.n_classes > spec.n_classes:
        return (
            f"the model has {spec.n_classes} classes (labels 0..{spec.n_classes - 1}); the node "
            f"holds label {info.n_classes - 1}"
        )
    if spec.federated_evaluation and info.validation_sample_count < 1:
        return (
            "this run uses federated evaluation; the node has no validation split "
            "(start it with --validation-fraction)"
        )
    return None


class Grid(ABC):
    """The nodes of a run as the round driver sees them."""

    #: The run's feature transform, sent with every round start that carries full weights
    #: (set once the roster is fixed; ``None``: the run standardises nothing).
    standardisation: Standardisation | None = None

    def set_standardisation(self, standardisation: Standardisation | None) -> None:
        """Send ``standardisation`` to the nodes from the next round start on."""
        self.standardisation = standardisation

    @abstractmethod
    def connected(self) -> dict[str, NodeInfo]:
        """Nodes registered and connected right now."""

    @abstractmethod
    def wait_for_nodes(
        self, count: int, timeout: float, among: frozenset[str] | None = None
    ) -> dict[str, NodeInfo]:
        """Block until ``count`` nodes (of ``among``, if given) are connected or ``timeout``
        seconds passed; return the connected nodes."""

    @abstractmethod
    def fix_roster(self, roster: tuple[str, ...]) -> None:
        """From now on only these nodes may register (rejoin)."""

    @abstractmethod
    def collect_first_gradients(
        self,
        round_index: int,
        weights: FloatArray,
        node_ids: tuple[str, ...],
        timeout: float,
        buffers: Weights | None = None,
    ) -> Replies:
        """Start round ``round_index`` on ``node_ids`` from ``weights`` (and ``buffers``,
        for a model that has them); the first gradients (or
        :class:`~accord.rounds.NodeUpdate`) that arrived within ``timeout`` seconds, and
        why the others are missing."""

    @abstractmethod
    def broadcast_second_gradient(
        self,
        round_index: int,
        second_gradient: FloatArray,
        server_learning_rate: float,
        weights: FloatArray,
        next_weights: FloatArray,
        next_buffers: Weights | None = None,
    ) -> None:
        """Send ``G`` (and the round's combined buffers) to every connected node whose copy
        is ``weights`` (w_t), so that it holds ``next_weights`` (w_{t+1}); the others get
        full weights next round."""

    @abstractmethod
    def collect_evaluations(
        self,
        round_index: int,
        weights: FloatArray,
        node_ids: tuple[str, ...],
        timeout: float,
        buffers: Weights | None = None,
    ) -> Replies:
        """Ask ``node_ids`` for their validation accuracy of ``weights`` (w_{t+1})."""

    @abstractmethod
    def shutdown(self, reason: str | None) -> None:
        """Tell every node the run is over (``reason``) and release the transport; with
        ``None`` release it without ending the run for the nodes, which then wait and
        reconnect (the server was interrupted and may be resumed)."""

    def traffic(self) -> tuple[int, int]:
        """Bytes (sent, received) so far, where the transport counts them."""
        return 0, 0

    def interrupt(self, grace: float) -> None:
        """The run is stopping (a signal): from now on :meth:`wait_for_nodes` returns at
        once, and a collection in progress or to come waits at most ``grace`` more
        seconds (or until its own deadline, if sooner). Safe to call from a signal handler
        or another thread; the default does nothing (a grid whose waits never block)."""
        del grace


class NodeEndpoint(Protocol):
    """The node side of the protocol without a transport (see :class:`NodeWorker`)."""

    def info(self) -> NodeInfo: ...

    def configure(self, spec: RunSpec) -> NodeInfo: ...

    def start_round(
        self,
        round_index: int,
        weights: FloatArray | None,
        weights_sha256: bytes,
        buffers: Weights | None = None,
        standardisation: Standardisation | None = None,
    ) -> object: ...

    def apply_second_gradient(
        self,
        round_index: int,
        second_gradient: FloatArray,
        server_learning_rate: float,
        next_weights_sha256: bytes,
        next_buffers: Weights | None = None,
    ) -> None: ...

    def evaluate(self, round_index: int, weights_sha256: bytes) -> Evaluation: ...


class InMemoryGrid(Grid):
    """Nodes as objects in this process; :meth:`disconnect` and :meth:`connect` emulate a
    node going away and coming back. Full weights are sent every round."""

    def __init__(self, spec: RunSpec, endpoints: Mapping[str, NodeEndpoint]) -> None:
        self.spec = spec
        self._endpoints = dict(endpoints)
        self._connected: dict[str, NodeInfo] = {}
        self._roster: frozenset[str] | None = None
        #: The state digest each node's copy holds, as far as this grid sent it; only a
        #: node holding the round's ``w_t`` can apply its second gradient (a node left out
        #: of a round's sample has an older copy, or none).
        self._holds: dict[str, bytes] = {}
        self._digest_of_current: bytes | None = None
        for node_id in self._endpoints:
            self.connect(node_id)

    def connect(self, node_id: str) -> str | None:
        """Register a node as its process would; return why it was refused, if it was."""
        endpoint = self._endpoints[node_id]
        info = endpoint.info()
        problem = admission_problem(info, self.spec, self._roster)
        if problem is None:
            try:
                ready = endpoint.configure(self.spec)
                info = ready if isinstance(ready, NodeInfo) else info
            except AccordError as error:
                problem = str(error)
        if problem is None and info.sample_count < 1:
            problem = "a node needs at least one training sample"
        self._holds.pop(node_id, None)  # configured afresh: no copy of the weights
        if problem is not None:
            logger.warning("node %s refused: %s", node_id, problem)
            return problem
        self._connected[node_id] = info
        return None

    def disconnect(self, node_id: str) -> None:
        self._connected.pop(node_id, None)
        self._holds.pop(node_id, None)

    def connected(self) -> dict[str, NodeInfo]:
        return dict(self._connected)

    def wait_for_nodes(
        self, count: int, timeout: float, among: frozenset[str] | None = None
    ) -> dict[str, NodeInfo]:
        return {
            node: info for node, info in self._connected.items() if among is None or node in among
        }

    def fix_roster(self, roster: tuple[str, ...]) -> None:
        self._roster = frozenset(roster)

    def collect_first_gradients(
        self,
        round_index: int,
        weights: FloatArray,
        node_ids: tuple[str, ...],
        timeout: float,
        buffers: Weights | None = None,
    ) -> Replies:
        replies = Replies()
        digest = state_digest(weights, buffers or {})
        self._digest_of_current = digest
        for node in node_ids:
            if node not in self._connected:
                replies.failures[node] = "not connected"
                continue
            try:
                # Buffers only for a model that has them, the standardisation only for a
                # run that has one: older endpoints take neither.
                extra: dict[str, Any] = {"buffers": buffers} if buffers else {}
                if self.standardisation is not None:
                    extra["standardisation"] = self.standardisation
                replies.values[node] = self._endpoints[node].start_round(
                    round_index, np.array(weights), digest, **extra
                )
                self._holds[node] = digest
            except AccordError as error:
                self._holds.pop(node, None)
                replies.failures[node] = f"node reported: {error}"
        return replies

    def broadcast_second_gradient(
        self,
        round_index: int,
        second_gradient: FloatArray,
        server_learning_rate: float,
        weights: FloatArray,
        next_weights: FloatArray,
        next_buffers: Weights | None = None,
    ) -> None:
        before = self._digest_of_current or state_digest(weights, {})
        digest = state_digest(next_weights, next_buffers or {})
        for node in list(self._connected):
            if self._holds.pop(node, None) != before:
                continue  # not at w_t (left out of the round): full weights next round
            try:
                extra = {"next_buffers": next_buffers} if next_buffers else {}
                self._endpoints[node].apply_second_gradient(
                    round_index, np.array(second_gradient), server_learning_rate, digest, **extra
                )
                self._holds[node] = digest
            except AccordError as error:
                logger.warning("node %s could not apply the second gradient: %s", node, error)

    def collect_evaluations(
        self,
        round_index: int,
        weights: FloatArray,
        node_ids: tuple[str, ...],
        timeout: float,
        buffers: Weights | None = None,
    ) -> Replies:
        digest = state_digest(weights, buffers or {})
        replies = Replies()
        for node in node_ids:
            if node not in self._connected:
                replies.failures[node] = "not connected"
                continue
            try:
                replies.values[node] = self._endpoints[node].evaluate(round_index, digest)
            except AccordError as error:
                replies.failures[node] = f"node reported: {error}"
        return replies

    def shutdown(self, reason: str | None) -> None:
        self._connected.clear()
