"""benchmarks/policy_cost.py on a few rounds: both policies timed, the ratio reported."""

from __future__ import annotations

import json

import pytest
from benchmark_support import load_benchmark

policy_cost = load_benchmark("policy_cost")


def test_the_cost_benchmark_times_both_policies_and_reports_the_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    threads = policy_cost.torch.get_num_threads()
    assert policy_cost.main(["--repeat", "2", "--rounds", "5"]) == 0
    assert policy_cost.torch.get_num_threads() == threads  # the suite's threads restored
    output = json.loads(capsys.readouterr().out)
    assert len(output["repeats"]) == 2
    for repeat in output["repeats"]:
        assert repeat["hedge-loo_ms"] > 0 and repeat["actor-critic_ms"] > 0
        assert repeat["ratio"] == pytest.approx(repeat["actor-critic_ms"] / repeat["hedge-loo_ms"])
    assert output["ratio"]["min"] <= output["ratio"]["median"] <= output["ratio"]["max"]
    assert output["machine"]["cpu"]
