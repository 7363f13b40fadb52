"""The examples run as the README shows them (a few rounds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_cnn_example_runs_both_policies_in_process() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "examples.cnn_digits.simulate", "--rounds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [line["policy"] for line in lines] == ["fedavg", "actor-critic"]
    for line in lines:
        assert line["rounds"] == 2
        assert 0.0 <= line["final_test_accuracy"] <= 1.0
    assert lines[0]["flippers_weight_last_round"] == 0.3333  # FedAvg: their data share
