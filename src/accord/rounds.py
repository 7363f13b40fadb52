"""One gradient update process, written once and driven by both runtimes.

:class:`RoundEngine` owns the global weights and the policy. A driver (the in-process
:mod:`accord.simulation` or the networked :mod:`accord.federation`) broadcasts
:attr:`RoundEngine.global_weights`, collects first gradients however it likes, and calls
:meth:`RoundEngine.aggregate` and then :meth:`RoundEngine.conclude`. Between the two calls
the driver sends the second gradient to the nodes and, for federated evaluation, collects
their accuracy on ``w_{t+1}``.

A first gradient that is missing, of the wrong shape or dtype, or not finite is left out of
the round with a logged reason; probabilities are renormalised over the rest.

A run whose model diverges ends: non-finite probabilities from the policy, a non-finite
second gradient or new weights, every first gradient non-finite (:meth:`RoundEngine.aggregate`
raises :class:`DivergedError`), or a non-finite validation or test loss of the new weights
(:meth:`RoundEngine.conclude` returns the round's record with ``diverged`` set, without
letting the policy learn from it; the next ``aggregate`` raises). Rounds in these messages
are numbered from 1, as in the tables.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from accord._validation import require_int, require_number
from accord.aggregation.base import (
    Aggregation,
    Aggregator,
    FloatArray,
    RoundFeedback,
    RoundInput,
    ServerUpdateFn,
    ValidationFn,
    ValidationGradientFn,
    ValidationScores,
)
from accord.errors import AccordError, ConfigurationError, ProtocolError
from accord.training.weights import WeightLayout, Weights, combine_buffers

__all__ = [
    "DivergedError",
    "NodeUpdate",
    "PendingRound",
    "RoundEngine",
    "RoundRecord",
    "RoundSettings",
    "check_first_gradient",
]

logger = logging.getLogger(__name__)

#: Scores flat weights on a held-out set: (K, dim) -> losses and accuracies.
TestFn = Callable[[FloatArray], ValidationScores]


class DivergedError(ProtocolError):
    """The run's model diverged; ``reason`` says how and in which round (from 1), e.g.
    ``validation loss is not finite at round 48``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RoundSettings:
    """``server_learning_rate``: η_server in ``w_{t+1} = w_t − η_server · G`` (default 1.0,
    which with data-size probabilities is exactly FedAvg). ``nodes_per_round``: ask only
    this many of the connected nodes each round, a sample drawn from the run's seed and the
    round (default ``None``: every node). A node not asked is absent from the round, as a
    node that did not answer is, but without a reason or a warning."""

    server_learning_rate: float = 1.0
    nodes_per_round: int | None = None

    def __post_init__(self) -> None:
        require_number(
            "server_learning_rate", self.server_learning_rate, minimum=0.0, exclusive_minimum=True
        )
        if self.nodes_per_round is not None:
            require_int("nodes_per_round", self.nodes_per_round, minimum=1)


def check_first_gradient(gradient: object, dim: int) -> str | None:
    """Why ``gradient`` cannot be used as a first gradient of length ``dim``, or ``None``."""
    if not isinstance(gradient, np.ndarray):
        return f"expected a numpy array, got {type(gradient).__name__}"
    if gradient.dtype != np.float32:
        return f"expected dtype float32, got {gradient.dtype}"
    if gradient.shape != (dim,):
        return f"expected shape ({dim},), got {gradient.shape}"
    if not np.isfinite(gradient).all():
        return "contains NaN or Inf"
    return None


@dataclass(frozen=True)
class NodeUpdate:
    """A node's answer in a round of a model with buffers: its first gradient (flat, over
    the trainable arrays) and its buffers after local training (by name)."""

    first_gradient: FloatArray
    buffers: Weights


@dataclass(frozen=True)
class PendingRound:
    """A round whose second gradient is known but whose outcome is not yet scored."""

    round_index: int
    present: tuple[str, ...]
    dropped: Mapping[str, str]
    aggregation: Aggregation
    new_weights: FloatArray
    aggregate_seconds: float
    #: The round's combined buffers (see :func:`accord.training.weights.combine_buffers`);
    #: empty for a model without buffers.
    new_buffers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundRecord:
    """The metrics of one finished round (what ``metrics.jsonl`` holds, one per line)."""

    round_index: int
    probabilities: dict[str, float]
    present: tuple[str, ...]
    dropped: dict[str, str]
    validation_accuracy_before: float | None
    validation_accuracy_after: float | None
    validation_loss_before: float | None
    validation_loss_after: float | None
    test_accuracy: float | None
    test_loss: float | None
    aggregate_seconds: float
    learn_seconds: float
    diagnostics: dict[str, float] = field(default_factory=dict)
    #: Why the run diverged in this round (its last), e.g. ``validation loss is not finite
    #: at round 48``; ``None`` for a healthy round.
    diverged: str | None = None

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {} if self.diverged is None else {"diverged": self.diverged}
        return {
            "round": self.round_index,
            "probabilities": self.probabilities,
            "present": list(self.present),
            "dropped": self.dropped,
            "validation_accuracy_before": self.validation_accuracy_before,
            "validation_accuracy_after": self.validation_accuracy_after,
            "validation_loss_before": self.validation_loss_before,
            "validation_loss_after": self.validation_loss_after,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "aggregate_seconds": self.aggregate_seconds,
            "learn_seconds": self.learn_seconds,
            "diagnostics": self.diagnostics,
            **extra,
        }


class RoundEngine:
    """The server side of the gradient update process, free of any transport."""

    def __init__(
        self,
        roster: tuple[str, ...],
        sample_counts: Mapping[str, float],
        initial_weights: FloatArray,
        aggregator: Aggregator,
        *,
        validate: ValidationFn | None = None,
        test: TestFn | None = None,
        settings: RoundSettings | None = None,
        server_update: ServerUpdateFn | None = None,
        layout: WeightLayout | None = None,
        initial_buffers: Weights | None = None,
        validation_gradient: ValidationGradientFn | None = None,
    ) -> None:
        if len(roster) == 0 or len(set(roster)) != len(roster):
            raise ConfigurationError(f"roster: expected distinct node ids, got {roster!r}")
        missing = [node for node in roster if node not in sample_counts]
        if missing:
            raise ConfigurationError(f"sample_counts: no count for nodes {missing}")
        if aggregator.needs_validation and validate is None:
            raise ConfigurationError(
                f"policy {aggregator.name!r} needs a server validation set; none was given"
            )
        if aggregator.root_samples > 0 and server_update is None:
            raise ConfigurationError(
                f"policy {aggregator.name!r} needs a server update on a root dataset; "
                "this driver gives none"
            )
        self.roster = roster
        self.sample_counts = np.array([float(sample_counts[n]) for n in roster], dtype=np.float64)
        self.aggregator = aggregator
        self.validate = validate
        self.test = test
        self.server_update = server_update
        self.validation_gradient = validation_gradient
        self.settings = settings or RoundSettings()
        self.round_index = 0
        self._weights = np.ascontiguousarray(initial_weights, dtype=np.float32).copy()
        #: The model's layout when it has buffers (then every node answers a NodeUpdate).
        self.layout = layout if layout is not None and layout.buffers else None
        self._buffers: dict[str, Any] = {}
        if self.layout is not None:
            if initial_buffers is None:
                raise ConfigurationError("initial_buffers: the model has buffers; none given")
            self.layout.check(initial_buffers, "initial buffers", buffers_only=True)
            self._buffers = {k: np.array(v) for k, v in initial_buffers.items()}
            self._set_scorer_buffers(self._buffers)
        self._scores_of_current: tuple[float, float] | None = None  # (loss, accuracy) of w_t
        self._federated_accuracy: float | None = None  # nodes' accuracy of w_t, if federated
        self.diverged: str | None = None  # why the run cannot go on, once it diverged

    @property
    def global_weights(self) -> FloatArray:
        """``w_t``: a read-only view; drivers copy it into messages."""
        view = self._weights.view()
        view.flags.writeable = False
        return view

    @property
    def global_buffers(self) -> dict[str, Any]:
        """The buffers of ``w_t`` (copies); empty for a model without buffers."""
        return {name: array.copy() for name, array in self._buffers.items()}

    def _set_scorer_buffers(self, buffers: Weights) -> None:
        for scorer in (self.validate, self.test):
            set_buffers = getattr(scorer, "set_buffers", None)
            if set_buffers is not None:
                set_buffers(buffers)

    def _split_update(self, answer: object) -> tuple[object, Weights | None, str | None]:
        """(first gradient, buffers, why unusable) of one node's answer."""
        if self.layout is None:
            if isinstance(answer, NodeUpdate):
                return answer.first_gradient, None, None
            return answer, None, None
        if not isinstance(answer, NodeUpdate):
            return answer, None, "the model has buffers; the node sent none"
        try:
            self.layout.check(answer.buffers, "buffers", buffers_only=True)
        except AccordError as error:
            return answer.first_gradient, None, str(error)
        for name, array in answer.buffers.items():
            if np.issubdtype(np.asarray(array).dtype, np.floating) and not np.isfinite(array).all():
                return answer.first_gradient, None, f"buffer {name} contains NaN or Inf"
        return answer.first_gradient, answer.buffers, None

    def _usable_answers(
        self,
        first_gradients: Mapping[str, object],
        dropped: dict[str, str],
        not_asked: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, FloatArray], dict[str, Weights]]:
        """The roster's usable first gradients (and buffers); every other node that was
        asked goes into ``dropped`` with its reason."""
        usable: dict[str, FloatArray] = {}
        node_buffers: dict[str, Weights] = {}
        for node in self.roster:
            if node in dropped or node in not_asked:
                continue
            if node not in first_gradients:
                dropped[node] = "no first gradient this round"
                continue
            gradient, buffers, buffer_problem = self._split_update(first_gradients[node])
            reason = check_first_gradient(gradient, self.dim)
            if reason is None and buffer_problem is None:
                usable[node] = gradient  # type: ignore[assignment]
                if buffers is not None:
                    node_buffers[node] = buffers
            elif reason is None:
                dropped[node] = f"malformed buffers: {buffer_problem}"
            else:
                dropped[node] = f"malformed first gradient: {reason}"
        return usable, node_buffers

    @property
    def dim(self) -> int:
        return int(self._weights.shape[0])

    def aggregate(
        self,
        first_gradients: Mapping[str, object],
        failures: Mapping[str, str] | None = None,
        not_asked: Collection[str] = (),
    ) -> PendingRound:
        """Check the first gradients, weigh the nodes and form the second gradient.

        ``failures`` carries nodes the driver already knows failed (timeouts, errors);
        ``not_asked`` the nodes left out of this round's sample (absent, no reason).
        Raises :class:`ProtocolError` when no usable first gradient arrived.
        """
        if self.diverged is not None:
            raise DivergedError(self.diverged)
        number = self.round_index + 1  # rounds in messages count from 1, as in the tables
        dropped: dict[str, str] = dict(failures or {})
        usable, node_buffers = self._usable_answers(first_gradients, dropped, frozenset(not_asked))
        unknown = sorted(set(first_gradients) - set(self.roster))
        # Named by policy: a side-by-side simulation runs one engine per policy.
        policy = self.aggregator.name
        for node in unknown:
            logger.warning(
                "%s: round %d: ignoring gradient from unknown node %s", policy, number, node
            )
        for node, reason in dropped.items():
            logger.warning("%s: round %d: node %s left out: %s", policy, number, node, reason)
        if not usable:
            # Diverged when every node that answered sent a non-finite gradient, whatever
            # the nodes that did not answer (disconnected, timed out) would have sent.
            answered = [node for node in first_gradients if node in dropped]
            if answered and all(dropped[node].endswith("NaN or Inf") for node in answered):
                raise DivergedError(f"every first gradient is not finite at round {number}")
            raise ProtocolError(f"round {number}: no usable first gradient")
        present_mask = np.array([node in usable for node in self.roster], dtype=bool)
        stacked = np.stack([usable[node] for node in self.roster if node in usable])
        new_buffers: dict[str, Any] = {}
        if self.layout is not None:
            if self._scores_of_current is None and self.validate is not None:
                # w_t's own score, with w_t's buffers, before the scorers take this
                # round's (the first round's "before" and the reward's baseline).
                scores = self.validate(self._weights[None, :])
                self._scores_of_current = (float(scores.losses[0]), float(scores.accuracies[0]))
            present_nodes = [node for node in self.roster if node in usable]
            new_buffers = combine_buffers(
                [node_buffers[node] for node in present_nodes],
                [self.sample_counts[self.roster.index(node)] for node in present_nodes],
                self.layout,
            )
            # The policy scores its candidates with this round's buffers.
            self._set_scorer_buffers(new_buffers)
        round_input = RoundInput(
            round_index=self.round_index,
            roster=self.roster,
            sample_counts=self.sample_counts,
            present=present_mask,
            global_weights=self.global_weights,
            first_gradients=stacked,
            validate=self.validate,
            server_update=self.server_update,
            validation_gradient=self.validation_gradient,
        )
        started = time.perf_counter()
        try:
            aggregation = self.aggregator.aggregate(round_input)
            aggregate_seconds = time.perf_counter() - started
            _check_aggregation(aggregation, present_mask, self.dim, self.aggregator.name, number)
        except BaseException:
            if self.layout is not None:  # the round is not taken: back to w_t's buffers
                self._set_scorer_buffers(self._buffers)
            raise
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: checked just below
            new_weights = self._weights - np.float32(self.settings.server_learning_rate) * (
                aggregation.second_gradient
            )
        if not np.isfinite(new_weights).all():
            raise DivergedError(f"the new weights are not finite at round {number}")
        return PendingRound(
            round_index=self.round_index,
            present=tuple(node for node in self.roster if node in usable),
            dropped=dropped,
            aggregation=aggregation,
            new_weights=new_weights.astype(np.float32),
            aggregate_seconds=aggregate_seconds,
            new_buffers=new_buffers,
        )

    def conclude(
        self,
        pending: PendingRound,
        federated_accuracy_after: float | None = None,
    ) -> RoundRecord:
        """Apply ``w_{t+1}``, score it, let the policy learn and return the round's record.

        With ``federated_accuracy_after`` (the nodes' sample-weighted validation accuracy of
        ``w_{t+1}``) the reward uses it instead of the server's validation set.
        """
        if pending.round_index != self.round_index:
            raise ProtocolError(
                f"conclude: pending round {pending.round_index} is not the current round "
                f"{self.round_index}"
            )
        loss_before, accuracy_before, loss_after, accuracy_after = self._validation_of(
            pending.new_weights
        )
        if federated_accuracy_after is not None:
            accuracy_before = self._federated_accuracy
            accuracy_after = federated_accuracy_after
        test_loss: float | None = None
        test_accuracy: float | None = None
        if self.test is not None:
            test_scores = self.test(pending.new_weights[None, :])
            test_loss, test_accuracy = (
                float(test_scores.losses[0]),
                float(test_scores.accuracies[0]),
            )
        diverged: str | None = None
        number = self.round_index + 1
        if loss_after is not None and not np.isfinite(loss_after):
            diverged = f"validation loss is not finite at round {number}"
        elif test_loss is not None and not np.isfinite(test_loss):
            diverged = f"test loss is not finite at round {number}"
        learn_seconds = 0.0
        if diverged is None and accuracy_before is not None and accuracy_after is not None:
            started = time.perf_counter()
            self.aggregator.learn(
                RoundFeedback(
                    round_index=self.round_index,
                    accuracy_before=accuracy_before,
                    accuracy_after=accuracy_after,
                    loss_before=loss_before,
                    loss_after=loss_after,
                )
            )
            learn_seconds = time.perf_counter() - started
        if federated_accuracy_after is not None:
            self._federated_accuracy = federated_accuracy_after
        self._weights = pending.new_weights
        if self.layout is not None:
            self._buffers = dict(pending.new_buffers)
        self._scores_of_current = (
            (loss_after, accuracy_after)
            if loss_after is not None and accuracy_after is not None and self.validate is not None
            else None
        )
        record = RoundRecord(
            round_index=self.round_index,
            probabilities={
                node: float(p)
                for node, p in zip(self.roster, pending.aggregation.probabilities, strict=True)
            },
            present=pending.present,
            dropped=dict(pending.dropped),
            validation_accuracy_before=accuracy_before,
            validation_accuracy_after=accuracy_after,
            validation_loss_before=loss_before,
            validation_loss_after=loss_after,
            test_accuracy=test_accuracy,
            test_loss=test_loss,
            aggregate_seconds=pending.aggregate_seconds,
            learn_seconds=learn_seconds,
            diagnostics=self.aggregator.diagnostics(),
            diverged=diverged,
        )
        if diverged is not None:
            logger.warning("%s: diverged: %s", self.aggregator.name, diverged)
            self.diverged = diverged
        self.round_index += 1
        return record

    def _validation_of(
        self, new_weights: FloatArray
    ) -> tuple[float | None, float | None, float | None, float | None]:
        """(loss, accuracy) of ``w_t`` (scored once, then kept) and of ``w_{t+1}`` on the
        validation set; ``None`` each without one."""
        if self.validate is None:
            return None, None, None, None
        candidates = [new_weights]
        if self._scores_of_current is None:
            candidates.insert(0, self._weights)
        scores = self.validate(np.stack(candidates))
        if self._scores_of_current is None:
            self._scores_of_current = (float(scores.losses[0]), float(scores.accuracies[0]))
        loss_before, accuracy_before = self._scores_of_current
        return (
            loss_before,
            accuracy_before,
            float(scores.losses[-1]),
            float(scores.accuracies[-1]),
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run (weights, round, policy state)."""
        return {
            "round_index": self.round_index,
            "weights": self._weights.copy(),
            "buffers": self.global_buffers,
            "scores_of_current": self._scores_of_current,
            "federated_accuracy": self._federated_accuracy,
            "aggregator": self.aggregator.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        weights = np.asarray(state["weights"], dtype=np.float32)
        if weights.shape != self._weights.shape:
            raise ConfigurationError(
                f"checkpoint weights: expected shape {self._weights.shape}, got {weights.shape}"
            )
        self.round_index = int(state["round_index"])
        self._weights = weights.copy()
        if self.layout is not None:
            buffers = state.get("buffers") or {}
            self.layout.check(buffers, "checkpoint buffers", buffers_only=True)
            self._buffers = {k: np.array(v) for k, v in buffers.items()}
            self._set_scorer_buffers(self._buffers)
        scores = state["scores_of_current"]
        self._scores_of_current = None if scores is None else (float(scores[0]), float(scores[1]))
        federated = state.get("federated_accuracy")
        self._federated_accuracy = None if federated is None else float(federated)
        self.aggregator.load_state_dict(state["aggregator"])


def _check_aggregation(
    aggregation: Aggregation,
    present: npt.NDArray[np.bool_],
    dim: int,
    policy: str = "policy",
    round_number: int | None = None,
) -> None:
    """A policy bug must not silently corrupt the model: check its answer. Non-finite
    probabilities or second gradient mean the run diverged (:class:`DivergedError`); any
    other malformed answer is a :class:`ProtocolError`. Both name the policy and round."""
    where = "" if round_number is None else f" at round {round_number}"
    p = aggregation.probabilities
    if p.shape != present.shape:
        raise ProtocolError(
            f"policy {policy} returned {p.shape} probabilities for {present.shape[0]} nodes{where}"
        )
    if not np.isfinite(p).all():
        raise DivergedError(f"policy {policy} returned non-finite probabilities{where}")
    if np.any(p < -1e-9):
        raise ProtocolError(f"policy {policy} returned negative probabilities{where}: {p}")
    if abs(float(p.sum()) - 1.0) > 1e-6 or np.any(p[~present] > 0):
        raise ProtocolError(
            f"policy {policy}'s probabilities must sum to 1 over present nodes{where}: {p}"
        )
    g = aggregation.second_gradient
    if g.shape != (dim,) or g.dtype != np.float32:
        raise ProtocolError(f"policy {policy} returned a malformed second gradient{where}")
    if not np.isfinite(g).all():
        raise DivergedError(f"the second gradient is not finite{where}")
