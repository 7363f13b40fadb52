"""Learning quality of every weighting policy across scenarios and seeds.

Scenarios {IID clean, non-IID clean, non-IID + 3/10 label flippers, non-IID + 3/10 noise
nodes} × policies × seeds, on digits with a 64-32-10 MLP, 10 nodes, Dirichlet 0.5.
Prints one JSON object; ``--markdown FILE`` also writes the README table.

    python benchmarks/learning_quality.py                     # the full table (~7 min)
    python benchmarks/learning_quality.py --seeds 1 --rounds 30 --policies fedavg,actor-critic
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

SCENARIOS: dict[str, dict[str, Any]] = {
    "iid-clean": {"partition": "iid", "fault": "label-flip", "faulty": 0},
    "non-iid-clean": {"partition": "dirichlet", "fault": "label-flip", "faulty": 0},
    "non-iid-3-flippers": {"partition": "dirichlet", "fault": "label-flip", "faulty": 3},
    "non-iid-3-noise": {"partition": "dirichlet", "fault": "noise", "faulty": 3},
}
POLICIES = (
    "fedavg",
    "median",
    "trimmed-mean",
    "krum",
    "hedge-loo",
    "actor-critic-patent",
    "actor-critic",
    "actor-critic-frozen",
    "oracle",
)
#: ``oracle`` is no policy a server could run: it knows which nodes are faulty and gives
#: FedAvg's weights to the others only. It is the ceiling of any weighting on a scenario.
ORACLE = "oracle"
#: Which clean scenario gives the reference accuracy for "rounds to 90 %".
REFERENCE = {
    "iid-clean": "iid-clean",
    "non-iid-clean": "non-iid-clean",
    "non-iid-3-flippers": "non-iid-clean",
    "non-iid-3-noise": "non-iid-clean",
}


def run_one(job: tuple[str, str, int, int]) -> dict[str, Any]:
    scenario_name, policy, seed, rounds = job
    import torch

    torch.set_num_threads(1)
    from accord.data.faults import FaultSpec
    from accord.data.partition import PartitionSpec
    from accord.scenario import ScenarioSettings
    from accord.simulation import Simulation, SimulationSettings, StopConditions

    spec = SCENARIOS[scenario_name]
    settings = SimulationSettings(
        scenario=ScenarioSettings(
            partition=PartitionSpec(kind=spec["partition"], alpha=0.5),
            fault=FaultSpec(spec["fault"], spec["faulty"]),
            seed=seed,
        ),
        stop=StopConditions(max_rounds=rounds),
    )
    result = Simulation(settings, _oracle(settings) if policy == ORACLE else policy).run()
    faulty = result.faulty_nodes
    accuracy = [float(r.record.test_accuracy or 0.0) for r in result.rounds]
    mass = [sum(r.record.probabilities[n] for n in faulty) for r in result.rounds]
    round_seconds = [r.round_seconds for r in result.rounds]
    policy_seconds = [r.record.aggregate_seconds + r.record.learn_seconds for r in result.rounds]
    quarters = np.array_split(np.array(mass), 4)
    return {
        "scenario": scenario_name,
        "policy": policy,
        "seed": seed,
        "accuracy": accuracy,
        "faulty_mass_end": mass[-1],
        "faulty_mass_quarters": [float(q.mean()) for q in quarters],
        "faulty_mass_max_from_round_30": float(max(mass[30:])) if len(mass) > 30 else None,
        "mean_round_seconds": float(np.mean(round_seconds)),
        "policy_share_of_round_time": float(np.sum(policy_seconds) / np.sum(round_seconds)),
    }


def _oracle(settings: Any) -> Any:
    """FedAvg over the honest nodes only (it is told which nodes are faulty)."""
    from accord.aggregation.base import Aggregation, Aggregator, RoundInput
    from accord.aggregation.combine import expand_to_roster, second_gradient
    from accord.scenario import build_scenario

    honest = np.array([not node.faulty for node in build_scenario(settings.scenario).nodes])

    class HonestFedAvg(Aggregator):
        name = ORACLE

        def aggregate(self, round_input: RoundInput) -> Aggregation:
            counts = round_input.present_counts * honest[round_input.present]
            probabilities = counts / counts.sum()
            return Aggregation(
                probabilities=expand_to_roster(probabilities, round_input.present),
                second_gradient=second_gradient(probabilities, round_input.first_gradients),
            )

    return HonestFedAvg()


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best_clean: dict[tuple[str, int], float] = {}
    for run in runs:
        if run["policy"] == "fedavg" and run["scenario"] in REFERENCE.values():
            best_clean[(run["scenario"], run["seed"])] = max(run["accuracy"])
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        table.setdefault(run["scenario"], {}).setdefault(run["policy"], []).append(run)
    summary: dict[str, Any] = {}
    for scenario, by_policy in table.items():
        summary[scenario] = {}
        for policy, group in by_policy.items():
            reach: list[int | None] = []
            for run in group:
                reference = best_clean.get((REFERENCE[scenario], run["seed"]))
                hit = None
                if reference is not None:
                    hit = next(
                        (i + 1 for i, a in enumerate(run["accuracy"]) if a >= 0.9 * reference),
                        None,
                    )
                reach.append(hit)
            reached = [r for r in reach if r is not None]
            from_30 = [r["faulty_mass_max_from_round_30"] for r in group]
            summary[scenario][policy] = {
                "final_accuracy": mean_std([r["accuracy"][-1] for r in group]),
                "best_accuracy": mean_std([max(r["accuracy"]) for r in group]),
                "rounds_to_90pct_of_clean_fedavg_best": (
                    float(np.mean(reached)) if len(reached) == len(reach) else None
                ),
                "faulty_mass_end": mean_std([r["faulty_mass_end"] for r in group]),
                "faulty_mass_quarters": np.mean(
                    [r["faulty_mass_quarters"] for r in group], axis=0
                ).tolist(),
                "faulty_mass_max_from_round_30_worst_seed": (
                    None if None in from_30 else float(max(from_30))
                ),
                "mean_round_seconds": float(np.mean([r["mean_round_seconds"] for r in group])),
                "policy_share_of_round_time": float(
                    np.mean([r["policy_share_of_round_time"] for r in group])
                ),
                "seeds": len(group),
            }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| scenario | policy | final acc. % | best acc. % | rounds to 90 % | faulty mass end "
        "| faulty mass by quarter | round ms | policy share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, by_policy in summary.items():
        for policy, row in by_policy.items():
            final, best = row["final_accuracy"], row["best_accuracy"]
            reach = row["rounds_to_90pct_of_clean_fedavg_best"]
            quarters = " / ".join(f"{100 * q:.1f}" for q in row["faulty_mass_quarters"])
            lines.append(
                f"| {scenario} | {policy} | {100 * final['mean']:.1f} ± {100 * final['std']:.1f} "
                f"| {100 * best['mean']:.1f} ± {100 * best['std']:.1f} "
                f"| {'—' if reach is None else f'{reach:.0f}'} "
                f"| {100 * row['faulty_mass_end']['mean']:.1f} % | {quarters} "
                f"| {1000 * row['mean_round_seconds']:.0f} "
                f"| {100 * row['policy_share_of_round_time']:.0f} % |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--markdown", help="also write the README table to this file")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    policies = args.policies.split(",")
    needed = set(scenarios) | {REFERENCE[s] for s in scenarios}
    jobs = [
        (scenario, policy, seed, args.rounds)
        for scenario in SCENARIOS
        if scenario in needed
        for policy in POLICIES
        if policy in policies or (policy == "fedavg" and scenario in REFERENCE.values())
        for seed in range(args.seeds)
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = list(pool.map(run_one, jobs))
    summary = summarise(runs)
    import torch

    output = {
        "benchmark": "learning_quality",
        "setup": {
            "dataset": "digits",
            "model": "mlp 64-32-10",
            "nodes": 10,
            "dirichlet_alpha": 0.5,
            "rounds": args.rounds,
            "seeds": list(range(args.seeds)),
        },
        "summary": {s: summary[s] for s in scenarios if s in summary},
        "wall_seconds": time.perf_counter() - started,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(markdown(output["summary"]))
    json.dump(output, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
