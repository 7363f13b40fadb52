"""accord simulate with time-varying and mixed faults, small node counts, and its timings."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from accord import cli
from accord.cli import main


def _run(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["simulate", *argv])
    return code, buffer.getvalue()


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_three_nodes_train_with_no_faulty_node_by_default(tmp_path: Path) -> None:
    code, out = _run(
        ["--nodes", "3", "--rounds", "2", "--policies", "fedavg", "--out", str(tmp_path / "r")]
    )
    assert code == 0
    assert out.splitlines()[0].startswith("digits, 3 nodes, Dirichlet 0.5, no faulty node;")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["faulty_nodes"] == []
    assert summary["results"]["fedavg"]["final_test_accuracy"] > 0.5


def test_a_fault_window_is_recorded_round_by_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    code, out = _run(
        [
            "--fault", "noise", "--faulty", "2", "--fault-start", "1", "--fault-end", "3",
            "--rounds", "4", "--policies", "fedavg", "--out", str(run_dir),
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    faulty = summary["faulty_nodes"]
    assert len(faulty) == 2 and summary["time_varying"] is True
    assert f"2 noise nodes from round 2 until round 3 ({', '.join(faulty)})" in out.splitlines()[0]
    assert [line["faulty"] for line in _metrics(run_dir)] == [[], faulty, faulty, []]
    # The faulty mass of the last round counts that round's faulty nodes: none.
    assert summary["results"]["fedavg"]["faulty_mass_final"] == 0.0
    assert "(faulty mass: probability on the nodes faulty in the last round;" in out


def test_mixed_fault_groups_in_one_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    code, out = _run(
        [
            "--fault",
            "label-flip:1,scale:2:10",
            "--rounds",
            "1",
            "--policies",
            "median",
            "--out",
            str(run_dir),
        ]
    )
    assert code == 0
    first = out.splitlines()[0]
    assert ", 1 label-flip node (node-" in first and ", 2 scale x10 nodes (node-" in first
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["fault_groups"] == ["label-flip", "scale x10"]
    assert len(summary["faulty_nodes"]) == 3
    assert "FedAvg" not in out  # the footer names FedAvg only when it ran
    config = (run_dir / "config.toml").read_text()
    assert "faults = [" in config and 'kind = "scale"' in config


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--fault", "scale:1", "--faulty", "2"], "--faulty: does not apply to fault groups; "
         "give N and SCALE in --fault KIND:N[:SCALE],..."),
        (["--fault", "scale:1", "--fault-scale", "2"], "--fault-scale: does not apply"),
        (["--fault-start", "5", "--fault-end", "5"], "--fault-end: expected end > start (a fault "
         "is active in rounds start + 1 to end, counted from 1), got start 5, end 5"),
        (["--fault-probability", "1.5"], "--fault-probability: expected a number <= 1.0, got 1.5"),
        (["--fault", "noise:3,scale:1", "--nodes", "3"], "--fault: expected at most 3 faulty "
         "nodes (the node count), got 4"),
        (["--nodes", "3", "--faulty", "3"], "--faulty: 3 faulty nodes of 3 leaves no honest node"),
    ],
)  # fmt: skip
def test_bad_fault_options_are_one_line(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("accord simulate: error: ")
    assert expected in err
    assert not (tmp_path / "r").exists()


def test_time_to_first_round_counts_from_the_accord_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the `accord` command had started 1000 s ago, in a process started at any time.
    monkeypatch.setattr(cli, "_entry", {"started": time.perf_counter() - 1000.0, "calls": 0})
    code, _ = _run(["--rounds", "1", "--policies", "fedavg", "--out", str(tmp_path / "r")])
    assert code == 0
    timing = json.loads((tmp_path / "r" / "summary.json").read_text())["timing"]
    assert 1000.0 <= timing["process_to_first_round_seconds"] < 1000.0 + 300.0
    assert timing["run_to_first_round_seconds"] < 300.0
    assert timing["process_to_first_round_done_seconds"] >= timing["process_to_first_round_seconds"]


def test_the_progress_bar_counts_the_runs_rounds_not_every_policys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code = main(
        ["simulate", "--rounds", "3", "--policies", "fedavg,median", "--out", str(tmp_path / "r")]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "3/3" in err and "/6" not in err


def test_a_scenario_with_fault_groups_survives_the_helpers_npz() -> None:
    import numpy as np

    from accord.data.faults import FaultSpec
    from accord.scenario import ScenarioSettings, build_scenario
    from accord.scenario_codec import scenario_from_npz, scenario_to_npz

    settings = ScenarioSettings(
        nodes=6, faults=(FaultSpec("label-flip", 2, start=4), FaultSpec("scale", 1, 10.0))
    )
    built = build_scenario(settings)
    again = scenario_from_npz(scenario_to_npz(built), settings)
    for a, b in zip(built.nodes, again.nodes, strict=True):
        assert (a.node_id, a.fault) == (b.node_id, b.fault)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert (a.flipped_labels is None) == (b.flipped_labels is None)
        if a.flipped_labels is not None:
            np.testing.assert_array_equal(a.flipped_labels, b.flipped_labels)
    assert [again.faulty_in_round(t) for t in range(6)] == [
        built.faulty_in_round(t) for t in range(6)
    ]


def test_fault_options_replace_the_config_files_fault_groups(tmp_path: Path) -> None:
    from accord.cli import build_parser
    from accord.commands.run_options import config_from_args
    from accord.data.faults import FaultSpec

    groups = tmp_path / "groups.toml"
    groups.write_text(
        "[scenario]\nnodes = 6\n[[scenario.faults]]\nkind = 'scale'\ncount = 1\n"
        "[[scenario.faults]]\nkind = 'noise'\ncount = 1\n"
    )
    single = tmp_path / "single.toml"
    single.write_text("[scenario.fault]\nkind = 'noise'\ncount = 2\n")

    def scenario(*argv: str) -> Any:
        args = build_parser(["simulate"]).parse_args(["simulate", *argv])
        return config_from_args(args).simulation.scenario

    kept = scenario("--config", str(groups), "--seed", "3")
    assert kept.faults == (FaultSpec("scale", 1), FaultSpec("noise", 1))
    one = scenario("--config", str(groups), "--fault", "label-flip", "--faulty", "1")
    assert (one.fault, one.faults) == (FaultSpec("label-flip", 1), ())
    two = scenario("--config", str(single), "--fault", "scale:1:10,free-rider:1")
    assert (two.fault, two.faults) == (
        FaultSpec(),
        (FaultSpec("scale", 1, 10.0), FaultSpec("free-rider", 1)),
    )
