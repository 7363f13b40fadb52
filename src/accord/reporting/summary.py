"""What a run's rounds add up to: accuracies, the weight left on faulty nodes, time split.

Pure functions over round records, shared by ``accord simulate``, the benchmarks and any
driver whose results carry :class:`accord.rounds.RoundRecord` s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from accord.rounds import RoundRecord

__all__ = [
    "PolicyRun",
    "TimedRound",
    "data_share",
    "faulty_mass",
    "faulty_mass_by_quarter",
    "metrics_line",
    "policy_summary",
    "round_faulty",
]


class TimedRound(Protocol):
    """A finished round and where its wall time went (a :class:`~accord.simulation.TimedRecord`)."""

    @property
    def record(self) -> RoundRecord: ...

    @property
    def round_seconds(self) -> float: ...

    @property
    def local_training_seconds(self) -> float: ...


class PolicyRun(Protocol):
    """One policy's run (e.g. :class:`~accord.simulation.RunResult`)."""

    @property
    def policy(self) -> str: ...

    @property
    def rounds(self) -> Sequence[TimedRound]: ...

    @property
    def stop_reason(self) -> str: ...

    @property
    def seconds(self) -> float: ...


def round_faulty(timed: object, faulty_nodes: Collection[str]) -> Collection[str]:
    """The nodes faulty in this round: the round's own truth (``timed.faulty``, set by a
    scenario run with time-varying faults) when it has one, else ``faulty_nodes``."""
    faulty = getattr(timed, "faulty", None)
    return faulty_nodes if faulty is None else faulty


def metrics_line(policy: str, timed: TimedRound) -> dict[str, Any]:
    """One line of ``metrics.jsonl``: the record's JSON, the policy, the round's times and,
    when known, ``faulty``: the nodes faulty in that round."""
    line = {
        "policy": policy,
        **timed.record.to_json(),
        "round_seconds": timed.round_seconds,
        "local_training_seconds": timed.local_training_seconds,
    }
    faulty = getattr(timed, "faulty", None)
    if faulty is not None:
        line["faulty"] = sorted(faulty)
    return line


def faulty_mass(record: RoundRecord, faulty_nodes: Collection[str]) -> float:
    """The probability the round put on the faulty nodes together."""
    return float(sum(record.probabilities.get(node, 0.0) for node in faulty_nodes))


def faulty_mass_by_quarter(
    records: Sequence[RoundRecord],
    faulty_nodes: Collection[str],
    faulty_by_round: Sequence[Collection[str]] | None = None,
) -> list[float | None]:
    """The mean faulty mass over each quarter of the rounds (the first quarters get the
    extra rounds when the count does not divide by four; a quarter without rounds is
    ``None``). ``faulty_by_round``: the nodes faulty in each round, when they change."""
    if faulty_by_round is None:
        faulty_by_round = [faulty_nodes] * len(records)
    masses = [
        faulty_mass(record, faulty) for record, faulty in zip(records, faulty_by_round, strict=True)
    ]
    count = len(masses)
    quarters: list[float | None] = []
    start = 0
    for quarter in range(4):
        size = count // 4 + (1 if quarter < count % 4 else 0)
        part = masses[start : start + size]
        start += size
        quarters.append(math.fsum(part) / len(part) if part else None)
    return quarters


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def policy_summary(
    run: PolicyRun,
    faulty_nodes: Collection[str],
    *,
    policy_settings: object | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` entry of one policy.

    ``diverged`` is true when the policy's run ended because its model diverged (its
    ``stop_reason`` then starts with ``diverged:``); its final accuracies are then ``None``
    (the model at the end is unusable) and the best accuracy counts the healthy rounds
    only. The faulty mass uses each round's own faulty nodes when the rounds carry them.

    ``policy_share_of_round_time`` is the time the policy took (choosing probabilities,
    including the validation passes it asks for, and learning) over the whole round time
    (local training, policy, scoring). ``None`` marks what the run cannot tell (no round,
    no test set).
    """
    records = [timed.record for timed in run.rounds]
    faulty_by_round = [round_faulty(timed, faulty_nodes) for timed in run.rounds]
    diverged = run.stop_reason.startswith("diverged")
    tests = [
        (r.round_index, r.test_accuracy)
        for r in records
        if r.test_accuracy is not None and r.diverged is None
    ]
    best_round, best_accuracy = (
        max(tests, key=lambda item: (item[1], -item[0])) if tests else (None, None)
    )
    final = records[-1] if records else None
    round_seconds = [timed.round_seconds for timed in run.rounds]
    policy_seconds = [r.aggregate_seconds + r.learn_seconds for r in records]
    total_round = math.fsum(round_seconds)
    diagnostic_seconds: dict[str, float] = {}
    for key in sorted({k for r in records for k in r.diagnostics if k.endswith("_seconds")}):
        values = [r.diagnostics[key] for r in records if key in r.diagnostics]
        diagnostic_seconds[key] = math.fsum(values) / len(values)
    settings: Any = None
    if dataclasses.is_dataclass(policy_settings) and not isinstance(policy_settings, type):
        settings = dataclasses.asdict(policy_settings)
    usable = final is not None and not diverged
    return {
        "policy": run.policy,
        "rounds": len(records),
        "stop_reason": run.stop_reason,
        "diverged": diverged,
        "final_test_accuracy": final.test_accuracy if usable and final else None,
        "best_test_accuracy": best_accuracy,
        "best_round": best_round,
        "final_validation_accuracy": (
            final.validation_accuracy_after if usable and final else None
        ),
        "faulty_mass_final": (None if final is None else faulty_mass(final, faulty_by_round[-1])),
        "faulty_mass_by_quarter": faulty_mass_by_quarter(records, faulty_nodes, faulty_by_round),
        "final_probabilities": None if final is None else dict(final.probabilities),
        "mean_round_seconds": _mean(round_seconds),
        "mean_local_training_seconds": _mean([t.local_training_seconds for t in run.rounds]),
        "mean_policy_seconds": _mean(policy_seconds),
        "policy_share_of_round_time": (
            math.fsum(policy_seconds) / total_round if total_round > 0 else None
        ),
        "mean_diagnostic_seconds": diagnostic_seconds,
        "seconds": run.seconds,
        "policy_settings": settings,
    }


def data_share(sample_counts: Mapping[str, float], nodes: Collection[str]) -> float | None:
    """The share of the samples held by ``nodes`` (FedAvg's weight on them)."""
    total = math.fsum(sample_counts.values())
    if total <= 0:
        return None
    return math.fsum(sample_counts[n] for n in nodes if n in sample_counts) / total
