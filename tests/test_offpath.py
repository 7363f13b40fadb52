"""The off-path benchmark's cases and arithmetic (benchmarks/offpath.py), and one real run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from benchmark_support import load_benchmark

from accord.cli import build_parser

offpath = load_benchmark("offpath")


@pytest.mark.parametrize("case", list(offpath.CASES))
def test_every_case_is_a_valid_simulate_command(case: str) -> None:
    argv = ["simulate", *offpath.CASES[case]]
    build_parser(argv).parse_args(argv)


def _run(case: str, seed: int, accuracy: float | None, weight: float) -> dict[str, Any]:
    figures = {"final_accuracy": accuracy, "faulty_weight_end": weight, "stop_reason": "done"}
    return {"case": case, "seed": seed, "policies": {"actor-critic": figures}}


def test_summary_and_comparison_by_case_and_seed() -> None:
    case = "intermittent-noise"
    stored = {
        "cases": offpath.summarise(
            [_run(case, 0, 0.9, 0.3), _run(case, 1, 0.8, 0.1)], ["actor-critic"]
        )
    }
    now = offpath.summarise(
        [_run(case, 0, 0.95, 0.0), {"case": case, "seed": 1, "error": "exit 2: bad option"}],
        ["actor-critic"],
    )
    row = now[case]["policies"]["actor-critic"]
    assert row["final_accuracy"] == pytest.approx(0.95)
    assert now[case]["errors"] == {"1": "exit 2: bad option"}
    # Compared on the seeds both have: seed 0 only.
    assert offpath.compare(stored, now) == [
        f"{case}: actor-critic 90.0 → 95.0 %, faulty 30.0 → 0.0 %"
    ]


def test_overrides_reach_the_simulation_through_a_config_file(tmp_path: Path) -> None:
    config = offpath._config({"noise_exclude": False, "credit_method": "exact"}, tmp_path)
    assert config is not None
    assert config.read_text(encoding="utf-8") == (
        '[actor_critic]\nnoise_exclude = false\ncredit_method = "exact"\n'
    )
    assert offpath._config({}, tmp_path) is None
    out = tmp_path / "run"
    record = offpath.run_case("wine-sign-flip", 0, 2, ["actor-critic"], config, out)
    assert record["exit_code"] == 0, record
    figures = record["policies"]["actor-critic"]
    assert 0.0 <= figures["final_accuracy"] <= 1.0
    assert figures["stop_reason"] == "2 rounds done"
    written = (out / "config.toml").read_text(encoding="utf-8")
    assert "noise_exclude = false" in written


def test_a_failing_run_is_recorded_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(offpath.CASES, "broken", ["--nodes", "0"])
    record = offpath.run_case("broken", 0, 2, ["actor-critic"], None, tmp_path / "x")
    assert record["exit_code"] != 0
    assert "nodes" in record["error"]
    json.dumps(record)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_cases_are_valid_simulate_commands_and_the_seed_fixes_them(seed: int) -> None:
    cases = offpath.random_cases(12, seed)
    assert list(cases) == [f"random-{seed}-{i}" for i in range(12)]
    assert cases == offpath.random_cases(12, seed)
    assert cases != offpath.random_cases(12, seed + 100)
    for options in cases.values():
        argv = ["simulate", *options]
        build_parser(argv).parse_args(argv)
        value = dict(zip(options[::2], options[1::2], strict=False))
        nodes, fault = int(value["--nodes"]), value["--fault"]
        faulty = (
            int(value["--faulty"])
            if "--faulty" in value
            else sum(int(part.split(":")[1]) for part in fault.split(","))
        )
        # Never a faulty majority (a mixed fault needs one node of each kind), and wine
        # (178 samples) never split into more than six or into shards.
        assert faulty >= 1 and (2 * faulty < nodes or (faulty == 2 and nodes <= 4))
        if value["--dataset"] == "wine":
            assert nodes <= 6 and value["--partition"] != "shards"


def _case(accuracies: dict[str, float]) -> dict[str, Any]:
    return {"policies": {p: {"final_accuracy": a} for p, a in accuracies.items()}}


def test_the_floor_verdict_names_the_cases_below_the_best_rule_less_half_a_point() -> None:
    rules = {"fedavg": 0.90, "hedge-loo": 0.95, "fltrust": 0.96}
    cases = {
        "met": _case({"actor-critic": 0.956, **rules}),  # 0.4 below: within the half point
        "missed": _case({"actor-critic": 0.94, **rules}),
        "not-judged": _case({"actor-critic": 0.5, "hedge-loo": 0.9}),
    }
    assert offpath.floor_verdict(cases) == (
        "floor (the best of FedAvg, Hedge-LOO and FLTrust, less half a point) met in 1 of 2 "
        "cases; missed: missed (-2.0)"
    )
    assert offpath.floor_verdict({"x": cases["not-judged"]}) is None


def test_random_refuses_a_case_list_and_a_negative_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["--random", "2", "--cases", "wine-sign-flip"], ["--random", "-1"]):
        with pytest.raises(SystemExit) as stop:
            offpath.main([*argv, "--list"])
        assert stop.value.code == 2
    assert "--random draws its own cases" in capsys.readouterr().err
