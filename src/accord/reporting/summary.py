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


def metrics_line(policy: str, timed: TimedRound) -> dict[str, Any]:
    """One line of ``metrics.jsonl``: the record's JSON, the policy, and the round's times."""
    return {
        "policy": policy,
        **timed.record.to_json(),
        "round_seconds": timed.round_seconds,
        "local_training_seconds": timed.local_training_seconds,
    }


def faulty_mass(record: RoundRecord, faulty_nodes: Collection[str]) -> float:
    """The probability the round put on the faulty nodes together."""
    return float(sum(record.probabilities.get(node, 0.0) for node in faulty_nodes))


def faulty_mass_by_quarter(
    records: Sequence[RoundRecord], faulty_nodes: Collection[str]
) -> list[float | None]:
    """The mean faulty mass over each quarter of the rounds (the first quarters get the
    extra rounds when the count does not divide by four; a quarter without rounds is
    ``None``)."""
    masses = [faulty_mass(record, faulty_nodes) for record in records]
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

    ``policy_share_of_round_time`` is the time the policy took (choosing probabilities,
    including the validation passes it asks for, and learning) over the whole round time
    (local training, policy, scoring). ``None`` marks what the run cannot tell (no round,
    no test set).
    """
    records = [timed.record for timed in run.rounds]
    tests = [(r.round_index, r.test_accuracy) for r in records if r.test_accuracy is not None]
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
    return {
        "policy": run.policy,
        "rounds": len(records),
        "stop_reason": run.stop_reason,
        "final_test_accuracy": None if final is None else final.test_accuracy,
        "best_test_accuracy": best_accuracy,
        "best_round": best_round,
        "final_validation_accuracy": None if final is None else final.validation_accuracy_after,
        "faulty_mass_final": None if final is None else faulty_mass(final, faulty_nodes),
        "faulty_mass_by_quarter": faulty_mass_by_quarter(records, faulty_nodes),
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
