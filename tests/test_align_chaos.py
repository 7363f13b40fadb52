"""Alignment under random kills, the short version (issue 13, item 6): a party's host or its
enclave SIGKILLed at a random moment, in memory and bucketed; every party either finishes
with complete outputs or fails in one line with nothing written, no process is left, and a
resume (bucketed) or a fresh run reaches the result. The long run is
``python benchmarks/align_chaos.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_support import load_benchmark

chaos = load_benchmark("align_chaos")


@pytest.mark.slow
def test_alignment_survives_killed_hosts_and_enclaves(tmp_path: Path) -> None:
    # A party whose peer died before connecting waits out its connect timeout: 10 s here.
    settings = chaos.ChaosSettings(trials=8, rows=40_000, seed=3, timeout=120.0, patience=10.0)
    report = chaos.run_chaos(settings, tmp_path)
    details = json.dumps(report, indent=1)
    assert report["ok"], details
    assert len(report["trials"]) == 8
    # Every mode, party and victim was tried once (the kill may come after the end).
    kinds = {(t["mode"], t["party"], t["victim"]) for t in report["trials"]}
    assert len(kinds) == 8, details


def test_trials_cover_every_mode_party_and_victim_in_turn() -> None:
    trials = chaos.plan_trials(chaos.ChaosSettings(trials=10, seed=1))
    assert [(t.mode, t.party, t.victim) for t in trials[:4]] == [
        ("memory", "a", "host"),
        ("memory", "a", "enclave"),
        ("memory", "b", "host"),
        ("memory", "b", "enclave"),
    ]
    assert trials[8].mode == "memory" and trials[8].index == 8
    assert all(0.0 <= t.fraction <= 1.0 and 0.0 <= t.stage_pick <= 1.0 for t in trials)
    assert trials == chaos.plan_trials(chaos.ChaosSettings(trials=10, seed=1))


def test_a_failed_party_that_wrote_a_file_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "a.map.csv").write_text("row\n")
    (tmp_path / "a.map.csv.tmp-1").write_text("")
    assert chaos._outputs(tmp_path, "a") == [tmp_path / "a.map.csv"]
    assert chaos._stray_files(tmp_path) == ["a.map.csv.tmp-1"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("trials", 0, "trials: expected at least 1, got 0"), ("buckets", 1, "buckets")],
)
def test_bad_settings_are_refused(field: str, value: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chaos.ChaosSettings(**{field: value})
