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
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model

#: Scenario specs (keys of :data:`SPEC_DEFAULTS`); ``benchmarks/zoo.py`` has many more.
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
    "fltrust",
    "zeno",
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


#: The fields a scenario spec may set, with their defaults (as ``accord simulate``'s).
#: ``fault``, ``faulty``, ``scale``, ``start``, ``end`` and ``probability`` describe one
#: fault group (:class:`accord.data.faults.FaultSpec`); ``faults``, a list of dicts with
#: those FaultSpec fields (``kind``, ``count``, ...), several groups (mixed faults) instead.
SPEC_DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "nodes": 10,
    "samples": None,
    "partition": "dirichlet",
    "alpha": 0.5,
    "shards_per_node": 2,
    "fault": "label-flip",
    "faulty": 0,
    "scale": 4.0,
    "start": 0,
    "end": None,
    "probability": 1.0,
    "faults": None,
}


def scenario_settings(spec: dict[str, Any], seed: int) -> Any:
    """The :class:`ScenarioSettings` of a scenario spec (a dict of :data:`SPEC_DEFAULTS`
    keys; unknown keys are an error) for one seed."""
    from accord.data.faults import FaultSpec
    from accord.data.partition import PartitionSpec
    from accord.scenario import ScenarioSettings

    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if unknown:
        raise ValueError(
            f"scenario spec: unknown keys {unknown}; accepted: {sorted(SPEC_DEFAULTS)}"
        )
    s = {**SPEC_DEFAULTS, **spec}
    groups = tuple(FaultSpec(**group) for group in s["faults"] or ())
    single = FaultSpec(s["fault"], s["faulty"], s["scale"], s["start"], s["end"], s["probability"])
    return ScenarioSettings(
        dataset=s["dataset"],
        nodes=s["nodes"],
        samples=s["samples"],
        partition=PartitionSpec(
            kind=s["partition"], alpha=s["alpha"], shards_per_node=s["shards_per_node"]
        ),
        fault=FaultSpec() if groups else single,
        faults=groups,
        seed=seed,
    )


def faulty_in_round(data: Any, round_index: int) -> frozenset[str]:
    """The nodes faulty in one round (the per-round truth of the scenario)."""
    return frozenset(data.faulty_in_round(round_index))


def run_one(job: tuple[Any, ...]) -> dict[str, Any]:
    """One policy on one scenario and seed: ``(scenario name, ScenarioSettings, policy,
    rounds)``, and optionally a fifth item, ``ActorCriticSettings`` field overrides for the
    Actor-Critic's modes (an ablation). A run whose validation loss stops being finite, or
    whose policy fails, is recorded as diverged at that round (never raised)."""
    import warnings

    scenario_name, scenario, policy, rounds = job[:4]
    overrides: dict[str, Any] = job[4] if len(job) > 4 and job[4] else {}
    import torch

    torch.set_num_threads(1)
    from accord.aggregation.actor_critic_settings import ActorCriticSettings
    from accord.errors import AccordError
    from accord.scenario import build_scenario
    from accord.simulation import Simulation, SimulationSettings, StopConditions

    settings = SimulationSettings(
        scenario=scenario,
        stop=StopConditions(max_rounds=rounds),
        actor_critic=ActorCriticSettings(**overrides),
    )
    data = build_scenario(scenario)
    simulation = Simulation(settings, _oracle(data) if policy == ORACLE else policy, data=data)
    counts = {node.node_id: float(node.sample_count) for node in data.nodes}
    total = sum(counts.values())
    share = {node: count / total for node, count in counts.items()}
    ever_faulty: set[str] = set()
    accuracy: list[float | None] = []
    mass: list[float] = []
    probabilities: list[dict[str, float]] = []
    truth: list[frozenset[str]] = []
    round_seconds: list[float] = []
    policy_seconds: list[float] = []
    diverged: str | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a diverging run is recorded below
        for round_index in range(rounds):
            try:
                timed = simulation.run_round()
            except (AccordError, FloatingPointError, ValueError) as error:
                diverged = f"{type(error).__name__} at round {round_index}: {error}"[:300]
                break
            record = timed.record
            faulty = faulty_in_round(data, round_index)
            ever_faulty |= faulty
            truth.append(faulty)
            probabilities.append(record.probabilities)
            mass.append(sum(record.probabilities[n] for n in faulty))
            test = record.test_accuracy
            accuracy.append(None if test is None or not math.isfinite(test) else float(test))
            round_seconds.append(timed.round_seconds)
            policy_seconds.append(record.aggregate_seconds + record.learn_seconds)
            loss = record.validation_loss_after
            if loss is None or not math.isfinite(loss):
                diverged = f"validation loss is not finite at round {round_index}"
                break
    quarters = np.array_split(np.array(mass), 4) if len(mass) >= 4 else []
    return {
        "scenario": scenario_name,
        "policy": policy,
        "seed": scenario.seed,
        "accuracy": accuracy,
        "final_accuracy": None if diverged or not accuracy else accuracy[-1],
        "diverged": diverged,
        "faulty_share": sum(share[n] for n in ever_faulty),
        "faulty_mass": mass,
        "faulty_mass_end": mass[-1] if mass else None,
        "faulty_mass_quarters": [float(q.mean()) for q in quarters],
        "faulty_mass_max_from_round_30": float(max(mass[30:])) if len(mass) > 30 else None,
        "weights": weight_figures(probabilities, truth, share, data),
        "rounds_run": len(round_seconds),
        "run_seconds": float(np.sum(round_seconds)),
        "mean_round_seconds": float(np.mean(round_seconds)) if round_seconds else None,
        "policy_seconds_per_round": float(np.mean(policy_seconds)) if policy_seconds else None,
        "policy_share_of_round_time": (
            float(np.sum(policy_seconds) / np.sum(round_seconds)) if round_seconds else None
        ),
    }


def weight_figures(
    probabilities: list[dict[str, float]],
    truth: list[frozenset[str]],
    share: dict[str, float],
    data: Any,
) -> dict[str, Any]:
    """The figures behind the weight targets of issue 8, from one run's rounds.

    - ``end``: weight on the nodes faulty in the last round, at the end;
    - ``max_while_faulty``: the largest total weight, over the rounds from
      ``max(30, R + 10)`` on, of the nodes faulty in that round whose current faulty stretch
      began at round R (``None``: no such round);
    - ``recoveries``: each node whose fault switched off at round s and stayed off for 20
      rounds: its data share and its largest weight in rounds s..s+19;
    - ``free_riders``: each free-riding node faulty in the last round: share and end weight.
    """
    if not probabilities:
        return {"end": None, "max_while_faulty": None, "recoveries": [], "free_riders": []}
    onset: dict[str, int] = {}
    worst: float | None = None
    for r, (p, faulty) in enumerate(zip(probabilities, truth, strict=True)):
        for node in faulty:
            if r == 0 or node not in truth[r - 1]:
                onset[node] = r
        counted = [n for n in faulty if r >= max(30, onset[n] + 10)]
        if counted:
            total = sum(p[n] for n in counted)
            worst = total if worst is None else max(worst, total)
    recoveries = []
    for node, node_share in share.items():
        for s in range(1, len(truth) - 19):
            if node in truth[s - 1] and all(node not in truth[t] for t in range(s, s + 20)):
                best = max(probabilities[t][node] for t in range(s, s + 20))
                recoveries.append(
                    {"node": node, "off_round": s, "share": node_share, "max_weight": best}
                )
    last = truth[-1]
    free = [
        {"node": n, "share": share[n], "end_weight": probabilities[-1][n]}
        for n in sorted(last)
        if fault_kind_of(data, n) == "free-rider"
    ]
    return {
        "end": sum(probabilities[-1][n] for n in last),
        "max_while_faulty": worst,
        "recoveries": recoveries,
        "free_riders": free,
    }


def fault_kind_of(data: Any, node: str) -> str | None:
    """What the node does when it is faulty (``None``: an honest node)."""
    fault = next((n.fault for n in data.nodes if n.node_id == node), None)
    return None if fault is None else str(fault.kind)


def _oracle(data: Any) -> Any:
    """FedAvg over the nodes honest *in each round* (it is told the per-round truth); FedAvg
    over every present node in a round where none is honest."""
    from accord.aggregation.base import Aggregation, Aggregator, RoundInput
    from accord.aggregation.combine import expand_to_roster, second_gradient

    class HonestFedAvg(Aggregator):
        name = ORACLE

        def aggregate(self, round_input: RoundInput) -> Aggregation:
            faulty = faulty_in_round(data, round_input.round_index)
            honest = np.array([node not in faulty for node in round_input.roster])
            counts = round_input.present_counts * honest[round_input.present]
            if counts.sum() <= 0:
                counts = round_input.present_counts
            probabilities = counts / counts.sum()
            return Aggregation(
                probabilities=expand_to_roster(probabilities, round_input.present),
                second_gradient=second_gradient(probabilities, round_input.first_gradients),
            )

    return HonestFedAvg()


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def _accuracy(run: dict[str, Any]) -> list[float]:
    """Test accuracy per round, a round that was not finite counted as 0."""
    return [0.0 if a is None else float(a) for a in run["accuracy"]] or [0.0]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best_clean: dict[tuple[str, int], float] = {}
    for run in runs:
        if run["policy"] == "fedavg" and run["scenario"] in REFERENCE.values():
            best_clean[(run["scenario"], run["seed"])] = max(_accuracy(run))
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
                        (i + 1 for i, a in enumerate(_accuracy(run)) if a >= 0.9 * reference),
                        None,
                    )
                reach.append(hit)
            reached = [r for r in reach if r is not None]
            from_30 = [r["faulty_mass_max_from_round_30"] for r in group]
            summary[scenario][policy] = {
                "final_accuracy": mean_std([_accuracy(r)[-1] for r in group]),
                "best_accuracy": mean_std([max(_accuracy(r)) for r in group]),
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
        (scenario, scenario_settings(SCENARIOS[scenario], seed), policy, args.rounds)
        for scenario in SCENARIOS
        if scenario in needed
        for policy in POLICIES
        if policy in policies or (policy == "fedavg" and scenario in REFERENCE.values())
        for seed in range(args.seeds)
    ]
    started = time.perf_counter()
    load_at_start = os.getloadavg()
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
            "cpu": cpu_model(),
            "load_average_start": load_at_start,
            "load_average_end": os.getloadavg(),
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
