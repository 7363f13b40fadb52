"""The Actor-Critic's policy time against Hedge-LOO's (issue 8's cost target: at most 3 ×
at 10 nodes), measured in the same run.

Each repeat runs ``accord simulate``'s default scenario (digits, 10 nodes, Dirichlet 0.5,
3 label flippers) with Hedge-LOO and with the Actor-Critic in this process, their rounds
interleaved (one torch thread, as the zoo's workers), and takes each policy's mean
aggregate + learn time a round. Prints one JSON object.

    python benchmarks/policy_cost.py --repeat 3 --rounds 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from machine import machine_record

from accord.scenario import ScenarioSettings
from accord.simulation import Simulation, SimulationSettings, StopConditions

JUDGED, BASELINE = "actor-critic", "hedge-loo"


def policy_ms_per_round(rounds: int) -> dict[str, float]:
    """One run of the default scenario with each policy, their rounds interleaved (so that
    a drift in the machine's speed falls on both): mean policy time a round, in ms."""
    settings = SimulationSettings(
        scenario=ScenarioSettings(), stop=StopConditions(max_rounds=rounds)
    )
    simulations = {policy: Simulation(settings, policy) for policy in (BASELINE, JUDGED)}
    seconds: dict[str, list[float]] = {policy: [] for policy in simulations}
    for _ in range(rounds):
        for policy, simulation in simulations.items():
            record = simulation.run_round().record
            seconds[policy].append(record.aggregate_seconds + record.learn_seconds)
    return {policy: 1000 * statistics.fmean(values) for policy, values in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        output = measure(args.repeat, args.rounds)
    finally:
        torch.set_num_threads(threads)
    json.dump(output, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def measure(repeat: int, rounds: int) -> dict[str, Any]:
    """``repeat`` interleaved runs of both policies, with the machine they ran on."""
    load_start = os.getloadavg()
    started = time.perf_counter()
    repeats: list[dict[str, float]] = []
    for _ in range(repeat):
        times = policy_ms_per_round(rounds)
        baseline, judged = times[BASELINE], times[JUDGED]
        repeats.append(
            {f"{BASELINE}_ms": baseline, f"{JUDGED}_ms": judged, "ratio": judged / baseline}
        )
        print(f"repeat {len(repeats)}: ratio {judged / baseline:.2f}", file=sys.stderr, flush=True)
    ratios = [r["ratio"] for r in repeats]
    output: dict[str, Any] = {
        "benchmark": "policy_cost",
        "setup": {
            "scenario": "accord simulate's default",
            "rounds": rounds,
            "torch_threads": 1,
        },
        "repeats": repeats,
        "ratio": {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)},
        "target_ratio": 3.0,
        "wall_seconds": time.perf_counter() - started,
        "machine": {**machine_record(load_start), "torch": torch.__version__},
    }
    return output


if __name__ == "__main__":
    sys.exit(main())
