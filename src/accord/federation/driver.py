"""The networked driver of :class:`accord.rounds.RoundEngine`.

:class:`FederatedRun` does what :meth:`accord.simulation.Simulation.run` does, through a
:class:`~accord.federation.grid.Grid`: wait for a quorum, fix the roster, then per round
collect first gradients before a deadline (late, failed and disconnected nodes become the
``failures`` the engine renormalises around), send the second gradient, optionally collect
federated evaluations, conclude, checkpoint, and stop on the stop conditions. A round in
which no usable first gradient arrived is retried, up to ``max_failed_rounds`` times; that,
or a quorum missing for ``quorum_timeout`` seconds, raises :class:`PeerError` and leaves
the run to ``--resume``.

A :class:`StopRequest` (a signal) ends the run cleanly: the round in progress finishes with
the answers that arrive before its deadline or the request's grace, whichever is sooner, is
checkpointed as resumable, and the result's ``stop_reason`` is :data:`INTERRUPTED`.

Rounds are counted from 0 in the protocol, the checkpoint and ``metrics.jsonl``'s
``round`` field (as in :class:`accord.rounds.RoundRecord`); every log line numbers them
from 1, as the tables and plots do.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from accord.checkpoint_files import read_checkpoint, write_checkpoint
from accord.data.standardise import Standardisation
from accord.errors import InputDataError, PeerError, ProtocolError
from accord.federation.grid import Evaluation, Grid, NodeInfo
from accord.federation.settings import FederationSettings
from accord.rounds import DivergedError, RoundEngine, RoundRecord
from accord.run import StopConditions, StopTracker, TimedRecord

__all__ = [
    "CHECKPOINT_FORMAT",
    "INTERRUPTED",
    "ROUND_STAGES",
    "FederatedResult",
    "FederatedRun",
    "RoundTraffic",
    "StandardisationFit",
    "StopRequest",
    "load_run_checkpoint",
    "record_from_json",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "accord-federation-checkpoint"
#: 2 since protocol version 2 (user apps; the engine state holds the model's buffers).
CHECKPOINT_VERSION = 2

#: The stop reason of a run ended by a :class:`StopRequest`; its checkpoint stays resumable.
INTERRUPTED = "interrupted"
#: The stages of :meth:`FederatedRun.play_round`, in order: collecting the first gradients
#: (the nodes' training and the transport both ways), the engine's aggregation (credit,
#: policy, second gradient), handing the second gradient to the grid, collecting federated
#: evaluations (0 without them), and the engine's conclusion (validation, learning).
ROUND_STAGES = ("first_gradients", "aggregate", "second_gradient", "evaluations", "conclude")

#: The stop reason's prefix when the model diverged (the run cannot go on, nor be resumed).
DIVERGED = "diverged"


class EngineFactory(Protocol):
    """Builds the engine once the roster is known, from the roster, the sample counts and
    the run's feature standardisation (``None``: none), which the factory applies to the
    server's own validation and test data."""

    def __call__(
        self,
        roster: tuple[str, ...],
        counts: Mapping[str, float],
        standardisation: Standardisation | None = None,
    ) -> RoundEngine: ...


#: Decides the run's standardisation once the roster is fixed, from the roster's
#: registrations (their feature moments); ``None``: the run standardises nothing.
StandardisationFit = Callable[[Mapping[str, NodeInfo]], Standardisation | None]


class StopRequest:
    """A request to stop a run after the round in progress, set from a signal handler.

    ``grace`` is the most the round in progress may still wait for its nodes (default 10
    s; its own deadline if that comes first). :meth:`request` is safe to call from a
    signal handler or another thread; the grids attached to it are interrupted at once."""

    def __init__(self, grace: float = 10.0) -> None:
        if not grace >= 0:
            raise ValueError(f"grace: expected seconds >= 0, got {grace!r}")
        self.grace = grace
        self.signal_number: int | None = None
        self._grids: list[Grid] = []
        self._at_once: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def request(self, signal_number: int) -> None:
        """Ask the run to stop; the first request wins, later ones change nothing."""
        if self.signal_number is not None:
            return
        self.signal_number = signal_number
        for grid in list(self._grids):
            grid.interrupt(self.grace)

    def attach(self, grid: Grid) -> None:
        """Interrupt ``grid`` when the stop is requested (at once if it already was)."""
        self._grids.append(grid)
        if self.requested:
            grid.interrupt(self.grace)

    def on_stop_at_once(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` when the process stops at once (a second signal), which skips
        every ``finally``: private files such as throw-away keys must not outlive it."""
        self._at_once.append(cleanup)

    def stop_at_once(self) -> None:
        """The cleanups of :meth:`on_stop_at_once`, newest first; one that fails does not
        keep the others from running."""
        for cleanup in reversed(self._at_once):
            with contextlib.suppress(Exception):
                cleanup()


@dataclass(frozen=True)
class RoundTraffic:
    """Bytes the server sent and received during one round (all nodes together)."""

    sent: int
    received: int


@dataclass(frozen=True)
class FederatedResult:
    policy: str
    roster: tuple[str, ...]
    rounds: tuple[TimedRecord, ...]
    traffic: tuple[RoundTraffic, ...]
    stop_reason: str
    seconds: float
    resumed_at: int | None = None
    first_round_done_at: float | None = None  # time.time() when round 0 was concluded
    #: Per round played by this process: each stage's wall seconds (:data:`ROUND_STAGES`)
    #: and ``process_cpu``, the CPU seconds of this whole process during the round.
    stage_seconds: tuple[Mapping[str, float], ...] = ()


def record_from_json(data: Mapping[str, Any]) -> RoundRecord:
    """The inverse of :meth:`RoundRecord.to_json`."""
    return RoundRecord(
        round_index=int(data["round"]),
        probabilities={str(k): float(v) for k, v in data["probabilities"].items()},
        present=tuple(data["present"]),
        dropped={str(k): str(v) for k, v in data["dropped"].items()},
        validation_accuracy_before=data["validation_accuracy_before"],
        validation_accuracy_after=data["validation_accuracy_after"],
        validation_loss_before=data["validation_loss_before"],
        validation_loss_after=data["validation_loss_after"],
        test_accuracy=data["test_accuracy"],
        test_loss=data["test_loss"],
        aggregate_seconds=float(data["aggregate_seconds"]),
        learn_seconds=float(data["learn_seconds"]),
        diagnostics={str(k): float(v) for k, v in data.get("diagnostics", {}).items()},
        diverged=None if data.get("diverged") is None else str(data["diverged"]),
    )


def load_run_checkpoint(path: Path) -> dict[str, Any]:
    """Read a run checkpoint and check that it is one."""
    state = read_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputDataError(f"{path}: not a federated-run checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise InputDataError(
            f"{path}: checkpoint format version {state.get('version')!r}; this Accord reads "
            f"version {CHECKPOINT_VERSION} only (a run of an older Accord cannot be resumed)"
        )
    return state


@dataclass
class _Progress:
    """The rounds played so far (those of the resumed checkpoint first) and the time."""

    started: float  # time.perf_counter() when this process began the run
    rounds: list[TimedRecord] = field(default_factory=list)
    traffic: list[RoundTraffic] = field(default_factory=list)
    elapsed_before: float = 0.0  # the run's seconds before this process resumed it
    first_round_done_at: float | None = None  # time.time() when this process's first round ended

    def add(self, timed: TimedRecord, traffic: RoundTraffic) -> None:
        if self.first_round_done_at is None:
            self.first_round_done_at = time.time()
        self.rounds.append(timed)
        self.traffic.append(traffic)

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.started)


@dataclass(frozen=True)
class _Begun:
    """A run's engine and roster, new or resumed."""

    engine: RoundEngine
    roster: tuple[str, ...]
    counts: dict[str, float]
    resumed_at: int | None = None


class FederatedRun:
    """One run of the gradient update process over a grid of nodes."""

    def __init__(
        self,
        grid: Grid,
        engine_factory: EngineFactory,
        policy_name: str,
        stop: StopConditions,
        settings: FederationSettings,
        *,
        expected_nodes: int,
        quorum: int,
        run_id: str,
        checkpoint_path: Path | None = None,
        resume: Mapping[str, Any] | None = None,
        extra_state: Mapping[str, Any] | None = None,
        on_round: Callable[[TimedRecord], None] | None = None,
        on_resume: Callable[[tuple[TimedRecord, ...]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        after_round: Callable[[int], None] | None = None,
        stop_request: StopRequest | None = None,
        end_nodes_when_interrupted: bool = False,
        sample_seed: int = 0,
        fit_standardisation: StandardisationFit | None = None,
    ) -> None:
        self.grid = grid
        self.engine_factory = engine_factory
        self.policy_name = policy_name
        self.stop = stop
        self.settings = settings
        self.expected_nodes = expected_nodes
        self.quorum = quorum
        self.run_id = run_id
        self.checkpoint_path = checkpoint_path
        self.resume = resume
        self.extra_state = dict(extra_state or {})
        self.on_round = on_round
        self.on_resume = on_resume
        self.clock = clock
        self.after_round = after_round
        self.stop_request = stop_request or StopRequest()
        self.stop_request.attach(grid)
        self.end_nodes_when_interrupted = end_nodes_when_interrupted
        #: Seeds the nodes sampled each round (``RoundSettings.nodes_per_round``).
        self.sample_seed = sample_seed
        self.engine: RoundEngine | None = None
        self.fit_standardisation = fit_standardisation
        #: The run's feature transform, frozen once the roster is fixed (checkpointed).
        self.standardisation: Standardisation | None = None
        #: Wall seconds of each stage (:data:`ROUND_STAGES`) of every round played by this
        #: object, and the process's CPU seconds (``process_cpu``) in the round (not
        #: checkpointed; for benchmarks and ``federation_stats.json``).
        self.stage_seconds: list[dict[str, float]] = []

    # ------------------------------------------------------------------ roster

    def _register_roster(
        self,
    ) -> tuple[tuple[str, ...], dict[str, float], dict[str, NodeInfo]] | None:
        """The roster, sample counts and registrations, or ``None`` if the run was asked to
        stop."""
        s = self.settings
        logger.info(
            "waiting for %d nodes (quorum %d, %g s)",
            self.expected_nodes,
            self.quorum,
            s.registration_timeout,
        )
        nodes = self.grid.wait_for_nodes(self.expected_nodes, s.registration_timeout)
        if len(nodes) < self.quorum and not self.stop_request.requested:
            nodes = self.grid.wait_for_nodes(self.quorum, s.quorum_timeout)
        if self.stop_request.requested:
            return None
        if len(nodes) < self.quorum:
            raise PeerError(
                f"only {len(nodes)} of the quorum of {self.quorum} nodes registered within "
                f"{s.registration_timeout + s.quorum_timeout:g} s"
            )
        chosen = sorted(nodes)[: self.expected_nodes]
        return (
            tuple(chosen),
            {node: float(nodes[node].sample_count) for node in chosen},
            {node: nodes[node] for node in chosen},
        )

    # --------------------------------------------------------------------- run

    def run(self) -> FederatedResult:
        """Run (or continue) rounds until a stop condition holds, then tell the nodes. If
        the server is interrupted or fails, the grid is closed without ending the run for
        the nodes: they keep reconnecting, and ``--resume`` continues from the checkpoint."""
        reason: str | None = None
        try:
            result = self._run()
            reason = result.stop_reason
            if reason == INTERRUPTED and not self.end_nodes_when_interrupted:
                reason = None  # the nodes wait for the resumed server
            return result
        finally:
            self.grid.shutdown(reason)

    def _run(self) -> FederatedResult:
        started = time.perf_counter()
        progress = _Progress(started=started)
        begun = self._resume_engine(progress) if self.resume is not None else self._new_engine()
        if begun is None:
            logger.info("stopping before the first round: %s", INTERRUPTED)
            return FederatedResult(
                self.policy_name, (), (), (), INTERRUPTED, time.perf_counter() - started
            )
        self.engine = begun.engine
        self.grid.set_standardisation(self.standardisation)
        self.grid.fix_roster(begun.roster)
        if self.resume is not None and not self.resume.get("stop_reason"):
            self._wait_for_roster(begun.roster)
        reason = self._play_rounds(begun, progress)
        logger.info("stopping after round %d: %s", begun.engine.round_index, reason)
        return FederatedResult(
            policy=self.policy_name,
            roster=begun.roster,
            rounds=tuple(progress.rounds),
            traffic=tuple(progress.traffic),
            stop_reason=reason,
            seconds=progress.elapsed(),
            resumed_at=begun.resumed_at,
            first_round_done_at=progress.first_round_done_at,
            stage_seconds=tuple(self.stage_seconds),
        )

    def _resume_engine(self, progress: _Progress) -> _Begun:
        """The engine, roster and finished rounds of the checkpoint being resumed."""
        assert self.resume is not None
        state = self.resume
        roster = tuple(state["roster"])
        counts = {str(k): float(v) for k, v in state["sample_counts"].items()}
        saved = state.get("standardisation")
        self.standardisation = None if saved is None else Standardisation.from_json(saved)
        engine = self.engine_factory(roster, counts, self.standardisation)
        engine.load_state_dict(state["engine"])
        for record, timing, traffic in zip(
            state["records"], state["timings"], state["traffic"], strict=True
        ):
            progress.rounds.append(
                TimedRecord(record_from_json(record), float(timing[0]), float(timing[1]))
            )
            progress.traffic.append(RoundTraffic(int(traffic[0]), int(traffic[1])))
        progress.elapsed_before = float(state["elapsed_seconds"])
        if self.on_resume is not None:
            self.on_resume(tuple(progress.rounds))
        logger.info("resuming run %s after round %d", self.run_id, engine.round_index)
        return _Begun(engine, roster, counts, resumed_at=engine.round_index)

    def _new_engine(self) -> _Begun | None:
        """The engine of a new run, once its roster has registered; None when interrupted
        before that."""
        registered = self._register_roster()
        if registered is None:
            return None
        roster, counts, registrations = registered
        if self.fit_standardisation is not None:
            self.standardisation = self.fit_standardisation(registrations)
        return _Begun(self.engine_factory(roster, counts, self.standardisation), roster, counts)

    def _wait_for_roster(self, roster: tuple[str, ...]) -> None:
        """Wait for the whole saved roster, not just a quorum, before the first resumed
        round, so that a resumed run equals an uninterrupted one when every node comes back."""
        timeout = self.settings.registration_timeout
        logger.info("waiting for the %d nodes of the roster (%g s)", len(roster), timeout)
        back = self.grid.wait_for_nodes(len(roster), timeout, among=frozenset(roster))
        if len(back) < len(roster) and not self.stop_request.requested:
            logger.warning(
                "%d of %d nodes are back after %g s; missing: %s",
                len(back),
                len(roster),
                timeout,
                ", ".join(sorted(set(roster) - set(back))),
            )

    def _play_rounds(self, begun: _Begun, progress: _Progress) -> str:
        """Rounds until a stop condition holds (or the run ends resumed at one); returns
        the stop reason. Raises :class:`PeerError` when the quorum is lost or a round keeps
        failing."""
        engine, roster = begun.engine, begun.roster
        tracker = StopTracker(self.stop, self.clock() - progress.elapsed_before)
        reason: str | None = None
        for timed in progress.rounds:
            reason = tracker.update(timed.record.validation_accuracy_after, tracker.started_at)
        if self.resume is not None and self.resume.get("stop_reason"):
            reason = str(self.resume["stop_reason"])
        failed_attempts = 0
        while reason is None:
            connected = self._quorum(engine.round_index, frozenset(roster))
            if connected is None:
                return INTERRUPTED
            sent_before, received_before = self.grid.traffic()
            try:
                timed = self.play_round(engine, roster, connected)
            except DivergedError as error:
                # No retry can help: the model (or the policy's answer) is not finite. The
                # checkpoint keeps the reason, so --resume reports the run instead of redoing it.
                reason = f"{DIVERGED}: {error.reason}"
                self._checkpoint(engine, roster, begun.counts, progress, reason)
                break
            except ProtocolError as error:
                failed_attempts += 1
                self._failed_attempt(engine.round_index, failed_attempts, error)
                if self.stop_request.requested:
                    return INTERRUPTED
                continue
            failed_attempts = 0
            sent_after, received_after = self.grid.traffic()
            progress.add(
                timed, RoundTraffic(sent_after - sent_before, received_after - received_before)
            )
            reason = self._stop_reason_after(timed, tracker)
            saved_reason = None if reason == INTERRUPTED else reason  # resumable
            self._checkpoint(engine, roster, begun.counts, progress, saved_reason)
            if self.on_round is not None:
                self.on_round(timed)
            if self.after_round is not None:
                self.after_round(engine.round_index)
        return reason

    def _quorum(self, round_index: int, roster: frozenset[str]) -> Collection[str] | None:
        """The connected nodes of the roster once a quorum is; None when interrupted."""
        if self.stop_request.requested:
            return None
        connected = self.grid.wait_for_nodes(
            self.quorum, self.settings.quorum_timeout, among=roster
        )
        if self.stop_request.requested:
            return None
        if len(connected) < self.quorum:
            raise PeerError(
                f"quorum lost before round {round_index + 1}: {len(connected)} of "
                f"{self.quorum} nodes connected after {self.settings.quorum_timeout:g} s; "
                "the run can be continued with --resume"
            )
        return connected

    def _failed_attempt(self, round_index: int, attempts: int, error: ProtocolError) -> None:
        """Log a round attempt without a usable first gradient; raise :class:`PeerError`
        once ``max_failed_rounds`` attempts in a row failed (unless interrupted)."""
        logger.warning("round %d: attempt %d failed: %s", round_index + 1, attempts, error)
        if attempts >= self.settings.max_failed_rounds and not self.stop_request.requested:
            raise PeerError(
                f"round {round_index + 1}: no usable first gradient in {attempts} "
                "attempts; the run can be continued with --resume"
            ) from error

    def _stop_reason_after(self, timed: TimedRecord, tracker: StopTracker) -> str | None:
        """Why the run stops after this round, or None to go on."""
        record = timed.record
        reason = tracker.update(record.validation_accuracy_after, self.clock())
        if record.diverged is not None:
            reason = f"{DIVERGED}: {record.diverged}"
        if reason is None and self.stop_request.requested:
            reason = INTERRUPTED
        return reason

    def play_round(
        self, engine: RoundEngine, roster: tuple[str, ...], connected: Collection[str]
    ) -> TimedRecord:
        """One round over the grid: first gradients from the connected nodes of the
        roster, the engine's aggregation, the second gradient back to the nodes, their
        evaluation when it is federated, and the engine's conclusion. Raises
        :class:`DivergedError`, or :class:`ProtocolError` when no usable first gradient
        arrived (the caller may retry). The in-process simulation plays its rounds here too."""
        round_started = time.perf_counter()
        cpu_started = time.process_time()
        stages: dict[str, float] = {}
        last = round_started

        def lap(stage: str) -> None:
            nonlocal last
            now = time.perf_counter()
            stages[stage], last = now - last, now

        round_index = engine.round_index
        weights = np.array(engine.global_weights)
        targets = tuple(node for node in roster if node in connected)
        sample = engine.settings.nodes_per_round
        not_asked: tuple[str, ...] = ()
        if sample is not None and len(targets) > sample:
            rng = np.random.default_rng([self.sample_seed, round_index, 4051])
            chosen = set(rng.choice(len(targets), size=sample, replace=False).tolist())
            not_asked = tuple(node for i, node in enumerate(targets) if i not in chosen)
            targets = tuple(node for i, node in enumerate(targets) if i in chosen)
        buffers = engine.global_buffers if engine.layout is not None else None
        replies = self.grid.collect_first_gradients(
            round_index, weights, targets, self.settings.round_deadline, buffers
        )
        lap("first_gradients")
        local_seconds = stages["first_gradients"]
        failures = {node: "not connected" for node in roster if node not in connected}
        failures.update(replies.failures)
        pending = engine.aggregate(replies.values, failures, not_asked)
        new_buffers = pending.new_buffers if engine.layout is not None else None
        lap("aggregate")
        self.grid.broadcast_second_gradient(
            round_index,
            pending.aggregation.second_gradient,
            engine.settings.server_learning_rate,
            weights,
            pending.new_weights,
            new_buffers,
        )
        lap("second_gradient")
        federated_accuracy: float | None = None
        if self.settings.evaluation == "federated":
            federated_accuracy = self._federated_accuracy(
                round_index, pending.new_weights, pending.present, new_buffers
            )
        lap("evaluations")
        record = engine.conclude(pending, federated_accuracy_after=federated_accuracy)
        lap("conclude")
        stages["process_cpu"] = time.process_time() - cpu_started
        self.stage_seconds.append(stages)
        return TimedRecord(record, time.perf_counter() - round_started, local_seconds)

    def _federated_accuracy(
        self,
        round_index: int,
        next_weights: np.ndarray[Any, Any],
        present: tuple[str, ...],
        next_buffers: Mapping[str, Any] | None = None,
    ) -> float | None:
        replies = self.grid.collect_evaluations(
            round_index, next_weights, present, self.settings.round_deadline, next_buffers
        )
        for node, problem in replies.failures.items():
            logger.warning(
                "round %d: no evaluation from node %s: %s", round_index + 1, node, problem
            )
        evaluations = [value for value in replies.values.values() if isinstance(value, Evaluation)]
        total = sum(e.sample_count for e in evaluations)
        if total == 0:
            logger.warning("round %d: no federated evaluation arrived", round_index + 1)
            return None
        return float(sum(e.accuracy * e.sample_count for e in evaluations) / total)

    def _checkpoint(
        self,
        engine: RoundEngine,
        roster: tuple[str, ...],
        counts: Mapping[str, float],
        progress: _Progress,
        reason: str | None,
    ) -> None:
        if self.checkpoint_path is None:
            return
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "run_id": self.run_id,
            "policy": self.policy_name,
            "rounds_done": engine.round_index,
            "roster": list(roster),
            "sample_counts": dict(counts),
            "engine": engine.state_dict(),
            "records": [timed.record.to_json() for timed in progress.rounds],
            "timings": [[t.round_seconds, t.local_training_seconds] for t in progress.rounds],
            "traffic": [[t.sent, t.received] for t in progress.traffic],
            "elapsed_seconds": progress.elapsed(),
            "stop_reason": reason,
            "standardisation": (
                None if self.standardisation is None else self.standardisation.to_json()
            ),
            **self.extra_state,
        }
        write_checkpoint(self.checkpoint_path, state)
