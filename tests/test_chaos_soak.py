"""The chaos soak's short version (issue 13, item 6): a networked Actor-Critic run behind a
proxy that delays, refuses and cuts connections, with a node and the server SIGKILLed and
restarted, completes with consistent records, a loadable checkpoint, no process left and
a flat server RSS. The long soak is ``python benchmarks/chaos_soak.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_support import load_benchmark

chaos = load_benchmark("chaos_soak")


@pytest.mark.slow
def test_a_run_survives_cut_connections_and_killed_nodes_and_server(tmp_path: Path) -> None:
    settings = chaos.SoakSettings(
        nodes=3,
        rounds=24,
        server_kills=1,
        node_kills=1,
        cut_after=3.0,
        refuse=0.1,
        replay_capacity=8,
        timeout=400.0,
    )
    report = chaos.run_soak(settings, tmp_path)
    details = json.dumps(report, indent=1, default=str)
    assert report["ok"], details
    assert report["server_processes"] == 2, details
    assert any("SIGKILLed" in event and "node-" in event for event in report["events"]), details
    assert report["proxy"]["cuts"] + report["proxy"]["refused"] >= 1, details


def test_record_checks_name_what_is_wrong() -> None:
    good = {
        "round": 0,
        "present": ["node-00"],
        "dropped": {"node-01": "not connected"},
        "probabilities": {"node-00": 1.0, "node-01": 0.0},
    }
    roster = ["node-00", "node-01"]
    assert chaos._record_problems([good], roster) == []
    unnamed = {**good, "dropped": {}}
    skewed = {**good, "probabilities": {"node-00": 0.6, "node-01": 0.4}}
    assert chaos._record_problems([unnamed], roster) == [
        "round 1: node-01 is neither present nor named with a reason"
    ]
    assert chaos._record_problems([skewed], roster) == [
        "round 1: weight on nodes not present: ['node-01']"
    ]
    assert chaos._record_problems([good, good], roster) == ["round 2: recorded as round index 0"]
