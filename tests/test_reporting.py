"""The run folder writer and the run summary, on hand-made round records."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from accord.errors import ConfigurationError
from accord.reporting import (
    METRICS_FILE,
    RunFolder,
    data_share,
    faulty_mass,
    faulty_mass_by_quarter,
    metrics_line,
    policy_summary,
)
from accord.reporting.plots import plot_run
from accord.rounds import RoundRecord

ROSTER = ("a", "b", "c", "d")


def _record(index: int, p: tuple[float, ...], test: float | None, agg: float = 0.01) -> RoundRecord:
    return RoundRecord(
        round_index=index,
        probabilities=dict(zip(ROSTER, p, strict=True)),
        present=ROSTER,
        dropped={},
        validation_accuracy_before=None,
        validation_accuracy_after=test,
        validation_loss_before=None,
        validation_loss_after=None,
        test_accuracy=test,
        test_loss=None,
        aggregate_seconds=agg,
        learn_seconds=0.0,
        diagnostics={"policy_learn_seconds": 0.5, "reward": 1.0},
    )


@dataclass(frozen=True)
class Timed:
    record: RoundRecord
    round_seconds: float
    local_training_seconds: float


@dataclass(frozen=True)
class Run:
    policy: str
    rounds: tuple[Timed, ...]
    stop_reason: str
    seconds: float


def _run(policy: str = "p") -> Run:
    probabilities = [
        (0.25, 0.25, 0.25, 0.25),
        (0.4, 0.4, 0.1, 0.1),
        (0.5, 0.3, 0.1, 0.1),
        (0.6, 0.3, 0.05, 0.05),
        (0.7, 0.2, 0.05, 0.05),
        (0.8, 0.2, 0.0, 0.0),
    ]
    tests = [0.5, 0.7, 0.9, 0.9, 0.8, None]
    return Run(
        policy=policy,
        rounds=tuple(
            Timed(
                _record(i, p, t, agg=0.1 * (i + 1)), round_seconds=1.0, local_training_seconds=0.5
            )
            for i, (p, t) in enumerate(zip(probabilities, tests, strict=True))
        ),
        stop_reason="6 rounds done",
        seconds=6.0,
    )


def test_faulty_mass_sums_the_faulty_nodes_probabilities() -> None:
    record = _record(0, (0.4, 0.3, 0.2, 0.1), 0.5)
    assert faulty_mass(record, {"c", "d"}) == pytest.approx(0.3)
    assert faulty_mass(record, ()) == 0.0


def test_faulty_mass_by_quarter_splits_rounds_in_order() -> None:
    records = [t.record for t in _run().rounds]
    # 6 rounds -> quarters of 2, 2, 1, 1 rounds; faulty c+d: 0.5, 0.2 | 0.2, 0.1 | 0.1 | 0.0
    assert faulty_mass_by_quarter(records, {"c", "d"}) == pytest.approx([0.35, 0.15, 0.1, 0.0])
    assert faulty_mass_by_quarter(records[:3], {"c", "d"}) == pytest.approx([0.5, 0.2, 0.2, None])
    assert faulty_mass_by_quarter([], {"c"}) == [None, None, None, None]


def test_policy_summary_by_hand() -> None:
    summary = policy_summary(_run(), {"c", "d"})
    assert summary["rounds"] == 6
    assert summary["final_test_accuracy"] is None  # the last round had no test score
    assert summary["best_test_accuracy"] == 0.9
    assert summary["best_round"] == 2  # the first of the two 0.9 rounds
    assert summary["faulty_mass_final"] == pytest.approx(0.0)
    assert summary["mean_round_seconds"] == pytest.approx(1.0)
    assert summary["mean_local_training_seconds"] == pytest.approx(0.5)
    # policy time 0.1 + 0.2 + ... + 0.6 = 2.1 over 6 s of rounds
    assert summary["mean_policy_seconds"] == pytest.approx(0.35)
    assert summary["policy_share_of_round_time"] == pytest.approx(2.1 / 6.0)
    assert summary["mean_diagnostic_seconds"] == {"policy_learn_seconds": pytest.approx(0.5)}
    assert summary["stop_reason"] == "6 rounds done"
    assert summary["policy_settings"] is None


def test_data_share() -> None:
    assert data_share({"a": 30.0, "b": 10.0}, ["b"]) == pytest.approx(0.25)
    assert data_share({"a": 0.0}, ["a"]) is None


def test_metrics_line_is_the_record_plus_policy_and_times() -> None:
    timed = _run().rounds[1]
    line = metrics_line("fedavg", timed)
    assert line == {
        "policy": "fedavg",
        **timed.record.to_json(),
        "round_seconds": 1.0,
        "local_training_seconds": 0.5,
    }


def test_run_folder_appends_lines_and_writes_atomically(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    run = _run()
    for timed in run.rounds:
        folder.append_round("p", timed)
    lines = [json.loads(line) for line in folder.metrics_path.read_text().splitlines()]
    assert [line["round"] for line in lines] == list(range(6))
    assert lines[3]["probabilities"] == {"a": 0.6, "b": 0.3, "c": 0.05, "d": 0.05}
    folder.write_summary({"x": 1})
    folder.write_config("a = 1\n")
    assert json.loads(folder.summary_path.read_text()) == {"x": 1}
    assert sorted(p.name for p in folder.path.iterdir()) == [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
    ]  # no temporary file left behind


def test_run_folder_refuses_a_folder_in_use(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / METRICS_FILE).write_text("{}\n")
    with pytest.raises(ConfigurationError, match=r"--out: .*old exists and is not empty"):
        RunFolder(tmp_path / "old")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigurationError, match="not a folder"):
        RunFolder(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    RunFolder(tmp_path / "empty")  # an empty or a new folder is fine
    RunFolder(tmp_path / "new" / "run")


def test_reopen_replaces_the_metrics_with_the_checkpointed_rounds(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    for timed in _run().rounds:
        folder.append_round("p", timed)
    kept = folder.metrics_path.read_text().splitlines()[:2]
    again = RunFolder.reopen(tmp_path / "run", kept)
    again.append_round("p", _run().rounds[2])
    rounds = [json.loads(line)["round"] for line in again.metrics_path.read_text().splitlines()]
    assert rounds == [0, 1, 2]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plots_are_png_files_with_content(tmp_path: Path) -> None:
    paths = plot_run([_run("fedavg"), _run("actor critic/x")], ROSTER, {"c"}, tmp_path, "t")
    assert [p.name for p in paths] == [
        "accuracy.png",
        "probabilities-fedavg.png",
        "probabilities-actor_critic_x.png",
    ]
    for path in paths:
        width, height = _png_size(path)
        assert width > 300 and height > 150
        assert path.stat().st_size > 5000
