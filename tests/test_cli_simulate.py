"""``accord simulate`` end to end: the run folder, the tables, bad options, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accord.cli import build_parser, main
from accord.commands.run_options import MODEL_CHOICES, config_from_args
from accord.commands.simulate import _ScenarioHelper
from accord.config import SimulateConfig, load_simulate_config
from accord.scenario import ScenarioSettings, build_scenario
from accord.scenario_codec import scenario_from_npz, scenario_to_npz
from accord.simulation import Simulation, SimulationSettings, StopConditions
from accord.training.models import MODEL_KINDS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _without_timings(value: Any) -> Any:
    """Drop every ``*_seconds`` entry: wall times differ between identical runs."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not k.endswith("_seconds")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The default command (actor-critic and fedavg, 3 label flippers), cut to 3 rounds."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code, out = _main_output(["simulate", "--rounds", "3", "--out", str(run_dir)])
    assert code == 0
    return run_dir, out


def _main_output(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


def test_a_three_round_run_writes_every_file(default_run: tuple[Path, str]) -> None:
    run_dir, _ = default_run
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "accuracy.png",
        "best_model-actor-critic.pt",
        "best_model-fedavg.pt",
        "config.toml",
        "metrics.jsonl",
        "model-actor-critic.pt",
        "model-fedavg.pt",
        "model.json",
        "probabilities-actor-critic.png",
        "probabilities-fedavg.png",
        "summary.json",
    ]
    lines = _metrics(run_dir)
    assert len(lines) == 6  # 3 rounds x 2 policies, interleaved round by round
    assert [(line["policy"], line["round"]) for line in lines] == [
        ("actor-critic", 0),
        ("fedavg", 0),
        ("actor-critic", 1),
        ("fedavg", 1),
        ("actor-critic", 2),
        ("fedavg", 2),
    ]
    for line in lines:
        assert set(line) >= {"probabilities", "test_accuracy", "round_seconds"}
        assert line["local_training_seconds"] > 0
        assert sum(line["probabilities"].values()) == pytest.approx(1.0)
        assert len(line["probabilities"]) == 10

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["policies"] == ["actor-critic", "fedavg"]
    assert len(summary["faulty_nodes"]) == 3
    assert summary["settings"]["scenario"]["dataset"] == "digits"
    assert summary["settings"]["stop"]["max_rounds"] == 3
    assert summary["plots"] == [
        "accuracy.png",
        "probabilities-actor-critic.png",
        "probabilities-fedavg.png",
    ]
    assert summary["timing"]["run_to_first_round_seconds"] > 0
    fedavg = summary["results"]["fedavg"]
    for key in (
        "final_test_accuracy",
        "best_test_accuracy",
        "faulty_mass_final",
        "mean_round_seconds",
        "policy_share_of_round_time",
    ):
        assert isinstance(fedavg[key], float), key
    assert fedavg["rounds"] == 3
    assert fedavg["stop_reason"] == "3 rounds done"
    assert len(fedavg["faulty_mass_by_quarter"]) == 4
    last_fedavg = [line for line in lines if line["policy"] == "fedavg"][-1]
    assert fedavg["final_test_accuracy"] == last_fedavg["test_accuracy"]
    # FedAvg's weight on the faulty nodes is their share of the data
    assert fedavg["faulty_mass_final"] == pytest.approx(summary["faulty_data_share"])
    assert summary["results"]["actor-critic"]["policy_settings"]["mode"] == "rich"

    config = load_simulate_config(run_dir / "config.toml")
    assert config.policies == ("actor-critic", "fedavg")
    assert config.simulation == SimulationSettings(stop=StopConditions(max_rounds=3))

    for name in summary["plots"]:
        data = (run_dir / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        assert len(data) > 10_000


def test_the_table_prints_each_round_and_a_summary(default_run: tuple[Path, str]) -> None:
    run_dir, out = default_run
    lines = out.splitlines()
    assert lines[0].startswith("digits, 10 nodes, Dirichlet 0.5, 3 label-flip nodes")
    assert lines[1].split() == ["round", "|", "actor-critic", "|", "fedavg"]
    rows = [line for line in lines if line.split(" | ")[0].strip().isdigit()]
    assert [int(row.split("|")[0]) for row in rows] == [1, 2, 3]
    metrics = _metrics(run_dir)
    first_fedavg = next(m for m in metrics if m["policy"] == "fedavg")
    assert f"{first_fedavg['test_accuracy']:.4f}" in rows[0]
    assert any(line.startswith("fedavg ") and "3 rounds done" in line for line in lines)
    assert lines[-1] == f"run folder: {run_dir}"


def test_same_seed_same_metrics_and_equal_to_the_simulation(
    default_run: tuple[Path, str], tmp_path: Path
) -> None:
    first, _ = default_run
    code, _ = _main_output(["simulate", "--rounds", "3", "--out", str(tmp_path / "again")])
    assert code == 0
    assert _without_timings(_metrics(tmp_path / "again")) == _without_timings(_metrics(first))
    # Interleaving the policies changes nothing: each equals a Simulation run on its own.
    settings = SimulationSettings(stop=StopConditions(max_rounds=3))
    for policy in ("actor-critic", "fedavg"):
        alone = [t.record.to_json() for t in Simulation(settings, policy).run().rounds]
        ours = [
            {k: v for k, v in m.items() if k not in ("policy", "round_seconds", "faulty")}
            for m in _metrics(first)
            if m["policy"] == policy
        ]
        assert _without_timings(ours) == _without_timings(alone)
    # Each line records the round's faulty nodes (static here: the same in every round).
    summary = json.loads((first / "summary.json").read_text())
    assert {tuple(m["faulty"]) for m in _metrics(first)} == {tuple(summary["faulty_nodes"])}


def test_options_and_config_file_with_options_winning(tmp_path: Path) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text(
        'policies = ["hedge-loo"]\n[scenario]\nnodes = 6\n[stop]\nmax_rounds = 40\n'
    )
    argv = ["simulate", "--config", str(config_file), "--rounds", "2", "--fault", "none"]
    args = build_parser(argv).parse_args(argv)
    config = config_from_args(args)
    assert config.policies == ("hedge-loo",)
    assert config.simulation.scenario.nodes == 6
    assert config.simulation.scenario.fault.count == 0
    assert config.simulation.stop.max_rounds == 2

    argv = ["simulate", "--policy", "krum", "--partition", "iid", "--hidden", "8,4", "--seed", "3"]
    config = config_from_args(build_parser(argv).parse_args(argv))
    assert config == SimulateConfig(
        simulation=SimulationSettings(
            scenario=ScenarioSettings(
                seed=3,
                partition=SimulationSettings().scenario.partition.__class__(kind="iid"),
            ),
            model=SimulationSettings().model.__class__(hidden=(8, 4)),
        ),
        policies=("krum",),
    )


def test_a_clean_single_policy_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "clean"
    code, out = _main_output(
        ["simulate", "--fault", "none", "--policies", "fedavg", "--rounds", "2", "--model",
         "logistic", "--nodes", "4", "--out", str(run_dir), "--every", "2"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["faulty_nodes"] == []
    assert summary["results"]["fedavg"]["faulty_mass_final"] == 0.0
    assert "no faulty node" in out and "faulty mass" not in out
    rows = [line for line in out.splitlines() if line.split(" | ")[0].strip().isdigit()]
    assert [int(row.split("|")[0]) for row in rows] == [1, 2]
    assert len(_metrics(run_dir)) == 2


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--partition", "pizza"], "argument --partition: invalid choice: 'pizza' (choose from"),
        (["--policies", "fedavg,magic"], "unknown policy 'magic'; accepted: actor-critic"),
        (
            ["--fault", "meteor"],
            "argument --fault: expected one of free-rider, label-flip, noise, scale, sign-flip, "
            "none, or KIND:N,... groups; got 'meteor'",
        ),
        (
            ["--fault", "scale:1:x"],
            "argument --fault: expected KIND:N[:SCALE] with an integer N and a number SCALE; "
            "got 'scale:1:x'",
        ),
        (
            ["--fault", "label-flip:2,meteor:1"],
            "argument --fault: expected fault groups KIND:N[:SCALE],... with KIND from "
            "free-rider, label-flip, noise, scale, sign-flip; got 'meteor:1'",
        ),
        (["--model", "cnn"], "argument --model: invalid choice: 'cnn'"),
        (["--rounds", "many"], "argument --rounds: invalid int value: 'many'"),
        (["--hidden", "8,x"], "argument --hidden: expected comma-separated layer widths"),
        (["--colour", "red"], "unrecognized arguments: --colour red"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["simulate", *argv])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage" not in err and "Traceback" not in err
    assert err.startswith("accord simulate: error: ")
    assert expected in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rounds", "0"], "--rounds: expected an integer >= 1, got 0"),
        (["--alpha", "-1"], "--alpha: expected a number > 0.0, got -1.0"),
        (["--faulty", "11"], "--faulty: expected at most 10 faulty nodes (the node count), got 11"),
        (["--nodes", "2", "--faulty", "2"], "--faulty: 2 faulty nodes of 2 leaves no honest "
         "node in any round; expected fewer than 2"),
        (["--nodes", "3", "--faulty", "4"], "--faulty: expected at most 3 faulty nodes (the "
         "node count), got 4"),
        (["--fault", "none", "--faulty", "2"], "--faulty: 2 faulty nodes need a fault recipe, but "
         "--fault none means no faulty node; choose a --fault or drop --faulty"),
        (["--target-accuracy", "1.5"], "--target-accuracy: expected a number <= 1.0, got 1.5"),
        (["--nodes", "500"], "--nodes: 1259 samples cannot give 500 nodes 10 samples each"),
        (["--every", "0"], "--every: expected an integer >= 1, got 0"),
        (["--dataset", "synthetic-hard", "--samples", "200", "--validation-fraction", "0.02"],
         "--validation-fraction: 0.02 of 200 synthetic-hard samples in 10 classes holds out no "
         "sample (the split is stratified: each class's share is rounded); expected a larger "
         "fraction or more samples"),
        (["--validation-fraction", "0.5", "--test-fraction", "0.5"], "--test-fraction: expected "
         "the validation and test fractions to sum below 1 (the nodes train on the rest), got "
         "0.5 + 0.5"),
        (["--dataset", "synthetic", "--samples", "3000", "--validation-fraction", "0.5",
          "--test-fraction", "0.5"], "--test-fraction: expected the validation and test "
         "fractions to sum below 1 (the nodes train on the rest), got 0.5 + 0.5"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_naming_the_option(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["simulate", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"accord simulate: error: {expected}\n"
    assert not out.exists()  # nothing written for a run that never started


def test_a_bad_config_file_and_a_used_folder_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "bad.toml"
    config_file.write_text("[stop]\nmax_round = 3\n")
    assert main(["simulate", "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"accord simulate: error: {config_file}: unknown key 'stop.max_round'")
    assert err.count("\n") == 1
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text("")
    assert main(["simulate", "--rounds", "1", "--out", str(used)]) == 2
    assert "--out: " in capsys.readouterr().err


def test_the_real_command_parses_without_torch_and_errors_in_one_line() -> None:
    code = (
        "import sys\n"
        "from accord.cli import build_parser\n"
        "build_parser(['simulate']).parse_args(['simulate', '--rounds', '5'])\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib', 'tqdm') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"
    failed = subprocess.run(
        [sys.executable, "-m", "accord.cli", "simulate", "--partition", "x"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert failed.stderr.splitlines() == [
        "accord simulate: error: argument --partition: invalid choice: 'x' (choose from "
        "'dirichlet', 'iid', 'shards') (see accord simulate --help)"
    ]


def test_the_helper_process_builds_the_same_scenario() -> None:
    settings = ScenarioSettings(nodes=5, seed=4)
    here = build_scenario(settings)
    helper = _ScenarioHelper(settings)
    try:
        there = helper.collect(settings)
    finally:
        helper.close()
    assert there is not None
    for built in (there, scenario_from_npz(scenario_to_npz(here), settings)):
        assert built.faulty_nodes == here.faulty_nodes
        for a, b in zip(built.nodes, here.nodes, strict=True):
            assert (a.node_id, a.index, a.faulty) == (b.node_id, b.index, b.faulty)
            np.testing.assert_array_equal(a.features, b.features)
            np.testing.assert_array_equal(a.labels, b.labels)
            assert a.features.dtype == b.features.dtype and a.labels.dtype == b.labels.dtype
        for part in ("train", "validation", "test"):
            np.testing.assert_array_equal(
                getattr(built.holdout, part).features, getattr(here.holdout, part).features
            )
    # Other settings than the helper's: it is discarded, the caller builds its own.
    other = _ScenarioHelper(settings)
    assert other.collect(ScenarioSettings(nodes=6)) is None


def test_model_choices_match_the_models() -> None:
    assert tuple(sorted(MODEL_CHOICES)) == tuple(sorted(MODEL_KINDS))


def test_policies_that_stop_at_different_rounds(tmp_path: Path) -> None:
    run_dir = tmp_path / "target"
    code, out = _main_output(
        ["simulate", "--policies", "fedavg,median", "--target-accuracy", "0.45", "--rounds",
         "30", "--every", "1", "--out", str(run_dir)]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped = {name: entry["rounds"] for name, entry in summary["results"].items()}
    assert stopped["fedavg"] != stopped["median"]  # the table must show one stopped
    assert max(stopped.values()) < 30
    for entry in summary["results"].values():
        assert entry["stop_reason"] == "target accuracy 0.4500 reached"
    lines = _metrics(run_dir)
    assert len(lines) == sum(stopped.values())
    for name, rounds in stopped.items():
        mine = [line for line in lines if line["policy"] == name]
        assert [line["round"] for line in mine] == list(range(rounds))
        assert mine[-1]["validation_accuracy_after"] >= 0.45
        assert all(line["validation_accuracy_after"] < 0.45 for line in mine[:-1])
    rows = [line for line in out.splitlines() if line.split(" | ")[0].strip().isdigit()]
    assert len(rows) == max(stopped.values())
    assert "(stopped)" in rows[-1]


def test_a_policy_that_raises_ends_alone_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from accord.aggregation.baselines import CoordinateMedian

    honest = CoordinateMedian.aggregate

    def from_round_two(self: CoordinateMedian, round_input: Any) -> Any:
        if round_input.round_index >= 1:
            raise RuntimeError("a bug in the policy")
        return honest(self, round_input)

    monkeypatch.setattr(CoordinateMedian, "aggregate", from_round_two)
    run_dir = tmp_path / "run"
    code, out = _main_output(
        ["simulate", "--policies", "median,fedavg", "--dataset", "wine", "--nodes", "3",
         "--rounds", "3", "--quiet", "--out", str(run_dir)]
    )  # fmt: skip
    assert code == 1  # a policy failed
    summary = json.loads((run_dir / "summary.json").read_text())
    median, fedavg = summary["results"]["median"], summary["results"]["fedavg"]
    assert median["stop_reason"] == "failed: RuntimeError at round 2: a bug in the policy"
    assert median["rounds"] == 1
    assert fedavg["stop_reason"] == "3 rounds done" and fedavg["rounds"] == 3
    assert "probabilities-fedavg.png" in summary["plots"]
    err = capsys.readouterr().err  # the log names the policy and round, with the traceback
    assert "ERROR accord.commands.simulate: median failed at round 2" in err
    assert "RuntimeError: a bug in the policy" in err
    assert "run folder:" in out  # the final table was printed


@pytest.mark.parametrize(("signal_name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_run_keeps_its_rounds_and_writes_the_summary(
    signal_name: str, code: int, tmp_path: Path
) -> None:
    import signal
    import time

    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "accord.cli", "simulate", "--policies", "fedavg", "--rounds",
         "100000", "--out", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(getattr(signal, signal_name))
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, err
    summary = json.loads((run_dir / "summary.json").read_text())
    entry = summary["results"]["fedavg"]
    assert entry["stop_reason"] == "interrupted"
    assert entry["rounds"] == len(_metrics(run_dir)) >= 3
    assert (run_dir / "accuracy.png").read_bytes()[:8] == PNG_SIGNATURE
    assert out.splitlines()[-1] == f"run folder: {run_dir}"


def test_the_scenario_helper_passes_the_split_s_warnings_on_and_keeps_its_errors(
    tmp_path: Path,
) -> None:
    # Wine over 12 nodes at alpha 0.1: no Dirichlet draw gives every node 10 samples, so
    # the split tops the short nodes up, in the helper process, and says so once.
    done = subprocess.run(
        [sys.executable, "-m", "accord.cli", "simulate", "--dataset", "wine", "--nodes", "12",
         "--alpha", "0.1", "--rounds", "1", "--policies", "fedavg", "--quiet",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("topped up with random samples of the largest nodes") == 1
    # A bad setting: one line from the command, nothing from the helper.
    done = subprocess.run(
        [sys.executable, "-m", "accord.cli", "simulate", "--dataset", "wine",
         "--validation-fraction", "0.5", "--test-fraction", "0.5", "--rounds", "1",
         "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "accord simulate: error: --test-fraction: expected the validation and test fractions "
        "to sum below 1 (the nodes train on the rest), got 0.5 + 0.5"
    ]
