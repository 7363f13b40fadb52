"""The run plots: early stops marked, one colour scale, per-round faulty nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from accord.reporting.plots import plot_run, shared_colour_limit, stop_note
from accord.rounds import RoundRecord


def _record(
    index: int, probabilities: dict[str, float], diverged: str | None = None
) -> RoundRecord:
    return RoundRecord(
        round_index=index,
        probabilities=probabilities,
        present=tuple(probabilities),
        dropped={},
        validation_accuracy_before=0.5,
        validation_accuracy_after=0.5,
        validation_loss_before=1.0,
        validation_loss_after=float("nan") if diverged else 1.0,
        test_accuracy=0.5 + 0.01 * index,
        test_loss=1.0,
        aggregate_seconds=0.0,
        learn_seconds=0.0,
        diverged=diverged,
    )


@dataclass(frozen=True)
class _Timed:
    record: RoundRecord
    round_seconds: float = 0.01
    local_training_seconds: float = 0.005
    faulty: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _Run:
    policy: str
    stop_reason: str
    rounds: tuple[_Timed, ...] = field(default_factory=tuple)
    seconds: float = 1.0


def test_stop_notes_say_why_a_policy_ended_early() -> None:
    timed = tuple(_Timed(_record(i, {"a": 1.0})) for i in range(3))
    assert stop_note(_Run("p", "3 rounds done", timed)) is None
    assert (
        stop_note(_Run("p", "diverged: validation loss is not finite at round 3", timed))
        == "diverged at round 3"
    )
    assert (
        stop_note(_Run("p", "no improvement for 2 rounds", timed))
        == "stopped at round 3: no improvement for 2 rounds"
    )


def test_every_plot_of_a_run_is_written_with_one_colour_scale(tmp_path: Path) -> None:
    healthy = _Run(
        "hedge-loo",
        "4 rounds done",
        tuple(
            _Timed(_record(i, {"a": 0.85, "b": 0.15}), faulty=("b",) if i >= 2 else ())
            for i in range(4)
        ),
    )
    diverged = _Run(
        "fedavg",
        "diverged: validation loss is not finite at round 3",
        (
            _Timed(_record(0, {"a": 0.5, "b": 0.5})),
            _Timed(_record(1, {"a": 0.5, "b": 0.5})),
            _Timed(_record(2, {"a": 0.5, "b": 0.5}, "validation loss is not finite at round 3")),
        ),
    )
    assert shared_colour_limit([healthy, diverged]) == 0.85
    paths = plot_run([healthy, diverged], ["a", "b"], ["b"], tmp_path, title="t")
    assert sorted(p.name for p in paths) == [
        "accuracy.png",
        "probabilities-fedavg.png",
        "probabilities-hedge-loo.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
