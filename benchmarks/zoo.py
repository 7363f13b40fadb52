"""The scenario zoo: every weighting policy on many scenarios nobody tuned for (issue 8).

Datasets digits, breast cancer, wine, ``synthetic`` and ``synthetic-hard``; every fault kind;
faulty shares from about 10 % to 45 % of the data; 4 to 100 nodes (100 on generated data
only); IID, Dirichlet 0.1–1.0 and shards. Each scenario runs the oracle (FedAvg on the nodes
honest *in that round*) and the policies, on the same split per seed, and reports:

- mean ± std final test accuracy per policy, the oracle, the faulty share the split produced;
- the weight on the nodes faulty in the last round, at the end;
- the weight targets of issue 8 for the rich Actor-Critic, pass or fail per scenario;
- an aggregate: wins, ties and losses of ``actor-critic`` against each other policy, and
  each policy's worst gap to the oracle.

Reuses ``learning_quality.run_one`` (one policy, one scenario, one seed, in a worker
process). Prints one JSON object; ``--markdown FILE`` also writes the tables.

    python benchmarks/zoo.py --subset quick --workers 2 --markdown zoo-quick.md
    python benchmarks/zoo.py --workers 2 > zoo.json                 # the full zoo
    python benchmarks/zoo.py --scenarios issue-wine-4-free-rider --seeds 1 --rounds 30 \\
        --policies fedavg,fltrust

``--runs FILE`` keeps every finished run as one JSON line, appended as it finishes, and
reuses the runs already in it (same scenario spec, seed, policy and rounds): an interrupted
zoo goes on where it stopped, and policies run at different times share one report. Reused
runs are only valid for unchanged code; the file's lines carry the commit they ran at.

``--merge-into REPORT`` re-runs only the listed policies (the oracle too, if listed) and
rewrites REPORT with their runs in place of its own: every scenario they ran in is judged
again against the other policies' stored per-seed results, and the pass (commit, machine,
time) is added to the report's ``spliced`` list, which the tables' last lines name. After a
change to the Actor-Critic::

    python benchmarks/zoo.py --workers 2 --policies actor-critic,actor-critic-frozen \\
        --merge-into benchmarks/results_zoo.json --markdown benchmarks/results_zoo.md

``--against REPORT`` does the same without writing REPORT: the merged report goes to stdout
and a one-line verdict (the targets met, the mean change in accuracy) to stderr. With
``--actor-critic-set KEY=JSON`` (repeatable; any ``ActorCriticSettings`` field) the
Actor-Critic's modes run with that setting changed: an ablation, judged against the stored
runs of every other policy::

    python benchmarks/zoo.py --workers 2 --policies actor-critic \\
        --actor-critic-set harm_decay=0.9 --against benchmarks/results_zoo.json > ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_quality import ORACLE, SPEC_DEFAULTS, run_one, scenario_settings
from machine import machine_record

from accord.atomic_files import write_atomically

#: The policies each scenario runs by default (the oracle is added to every scenario).
POLICIES = (
    "fedavg",
    "median",
    "trimmed-mean",
    "krum",
    "hedge-loo",
    "fltrust",
    "zeno",
    "actor-critic",
    "actor-critic-patent",
)
#: The policy the weight targets and the aggregate judge.
JUDGED = "actor-critic"
#: A win: more than this many accuracy points ahead, and more than one std of the paired
#: per-seed differences.
WIN_POINTS = 1.0

#: name -> {"spec": scenario spec (keys of learning_quality.SPEC_DEFAULTS), "quick": in the
#: quick subset, "issue": the issue's wording for its six scenarios, "note": what a
#: time-varying scenario does}. Round numbers are 0-based round indices.
ZOO: dict[str, dict[str, Any]] = {
    # ---- the six scenarios of issue 8's table, as it states them
    "issue-bc-8-sign-flip": {
        "spec": {"dataset": "breast-cancer", "nodes": 8, "fault": "sign-flip", "faulty": 2},
        "quick": True,
        "issue": "breast cancer, 8 nodes, Dirichlet 0.5, 2 sign-flip nodes (35 % of the data)",
    },
    "issue-digits-10-scale10": {
        "spec": {"fault": "scale", "faulty": 3, "scale": 10.0},
        "quick": True,
        "issue": "digits, 10 nodes, 3 scale nodes x10",
    },
    "issue-wine-4-free-rider": {
        "spec": {
            "dataset": "wine",
            "nodes": 4,
            "partition": "iid",
            "fault": "free-rider",
            "faulty": 1,
        },
        "quick": True,
        "issue": "wine, 4 nodes, IID, 1 free rider (25 % of the data)",
    },
    "issue-digits-shards-4-noise": {
        "spec": {"partition": "shards", "fault": "noise", "faulty": 4},
        "quick": True,
        "issue": "digits, shards, 4 noise nodes",
    },
    "issue-synthetic-20-label-flip": {
        "spec": {"dataset": "synthetic", "nodes": 20, "alpha": 0.3, "faulty": 6},
        "issue": "make_classification, 20 nodes, Dirichlet 0.3, 6 label flippers",
    },
    "issue-digits-30-label-flip": {
        "spec": {"nodes": 30, "faulty": 9},
        "issue": "digits, 30 nodes, 9 label flippers",
    },
    # ---- the rest of the zoo
    "digits-10-clean": {"spec": {"faulty": 0}},
    "digits-10-dir0.1-label-flip": {"spec": {"alpha": 0.1, "faulty": 2}},
    "digits-10-iid-scale100": {
        "spec": {"partition": "iid", "fault": "scale", "faulty": 1, "scale": 100.0}
    },
    "bc-6-iid-scale3": {
        "spec": {
            "dataset": "breast-cancer",
            "nodes": 6,
            "partition": "iid",
            "fault": "scale",
            "faulty": 1,
            "scale": 3.0,
        }
    },
    "wine-5-dir1.0-label-flip": {
        "spec": {"dataset": "wine", "nodes": 5, "alpha": 1.0, "faulty": 1}
    },
    "hard-10-dir1.0-noise": {
        "spec": {
            "dataset": "synthetic-hard",
            "samples": 6000,
            "alpha": 1.0,
            "fault": "noise",
            "faulty": 2,
        }
    },
    "hard-10-shards-sign-flip1": {
        "spec": {
            "dataset": "synthetic-hard",
            "samples": 6000,
            "partition": "shards",
            "fault": "sign-flip",
            "faulty": 3,
            "scale": 1.0,
        }
    },
    "synthetic-20-iid-noise-45pct": {
        "spec": {
            "dataset": "synthetic",
            "nodes": 20,
            "partition": "iid",
            "fault": "noise",
            "faulty": 9,
        }
    },
    "synthetic-40-dir0.5-free-rider": {
        "spec": {
            "dataset": "synthetic",
            "nodes": 40,
            "samples": 6000,
            "fault": "free-rider",
            "faulty": 12,
        }
    },
    "synthetic-100-iid-label-flip": {
        "spec": {
            "dataset": "synthetic",
            "nodes": 100,
            "samples": 10000,
            "partition": "iid",
            "faulty": 10,
        }
    },
    "hard-100-dir0.5-sign-flip": {
        "spec": {
            "dataset": "synthetic-hard",
            "nodes": 100,
            "samples": 20000,
            "fault": "sign-flip",
            "faulty": 30,
        }
    },
    "synthetic-100-dir0.1-label-flip": {
        "spec": {
            "dataset": "synthetic",
            "nodes": 100,
            "samples": 20000,
            "alpha": 0.1,
            "faulty": 25,
        },
        "note": "no Dirichlet draw gives all 100 nodes 10 samples: the short ones are topped up",
    },
    # ---- mixed and time-varying faults (per-round truth: ScenarioData.faulty_in_round)
    "digits-10-mixed": {
        "spec": {
            "faults": [
                {"kind": "label-flip", "count": 1},
                {"kind": "noise", "count": 1},
                {"kind": "scale", "count": 1, "scale": 10.0},
            ]
        },
        "quick": True,
    },
    "digits-10-late-label-flip": {
        "spec": {"faulty": 3, "start": 40},
        "quick": True,
        "note": "honest for rounds 0-39, label flippers from round 40",
    },
    "digits-10-noise-switches-off": {
        "spec": {"fault": "noise", "faulty": 3, "end": 50},
        "quick": True,
        "note": "noise in rounds 0-49, honest from round 50",
    },
    "digits-10-late-noise": {
        "spec": {"fault": "noise", "faulty": 4, "start": 20},
        "note": "honest for rounds 0-19, noise from round 20: nodes trusted before they turn",
    },
    "digits-10-half-free-riders": {
        "spec": {"partition": "iid", "fault": "free-rider", "faulty": 5},
        "note": "5 of 10 nodes send zero updates (half the data)",
    },
    "synthetic-20-intermittent-sign-flip": {
        "spec": {
            "dataset": "synthetic",
            "nodes": 20,
            "partition": "iid",
            "fault": "sign-flip",
            "faulty": 6,
            "probability": 0.5,
        },
        "note": "each of 6 nodes sign-flips in a round with probability 0.5",
    },
    "digits-10-intermittent-noise": {
        "spec": {"fault": "noise", "faulty": 3, "probability": 0.5},
        "note": "each of 3 nodes sends noise in a round with probability 0.5 (found off the "
        "zoo's paths on 2026-12-04)",
    },
}
SUBSETS = {"quick": tuple(n for n, s in ZOO.items() if s.get("quick")), "full": tuple(ZOO)}


def fault_kinds_covered() -> set[str]:
    """What the zoo exercises: every fault kind, ``scale x<factor>`` per factor, ``mixed``
    (several groups in one run), ``late-start``, ``switches-off`` and ``intermittent``."""
    covered: set[str] = set()
    for entry in ZOO.values():
        spec = {**SPEC_DEFAULTS, **entry["spec"]}
        groups = spec["faults"] or [
            {
                "kind": spec["fault"],
                "count": spec["faulty"],
                "scale": spec["scale"],
                "start": spec["start"],
                "end": spec["end"],
                "probability": spec["probability"],
            }
        ]
        groups = [g for g in groups if g.get("count", 0)]
        if len(groups) > 1:
            covered.add("mixed")
        for group in groups:
            covered.add(group["kind"])
            if group["kind"] == "scale":
                covered.add(f"scale x{group.get('scale', 4.0):g}")
            if group.get("start", 0) > 0:
                covered.add("late-start")
            if group.get("end") is not None:
                covered.add("switches-off")
            if group.get("probability", 1.0) < 1.0:
                covered.add("intermittent")
    return covered


# ----------------------------------------------------------------------------- summary


def _mean_std(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def _final(run: dict[str, Any]) -> float:
    """Final accuracy for comparisons: a diverged run counts as 0."""
    value = run["final_accuracy"]
    return 0.0 if value is None else float(value)


def summarise_scenario(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per policy: accuracy, divergences, weights on the faulty nodes; the targets."""
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        by_policy.setdefault(run["policy"], []).append(run)
    policies: dict[str, Any] = {}
    for policy, group in by_policy.items():
        finite = [r["final_accuracy"] for r in group if r["final_accuracy"] is not None]
        ends = [r["weights"]["end"] for r in group if r["weights"]["end"] is not None]
        policies[policy] = {
            "final_accuracy": _mean_std(finite),
            "final_accuracy_per_seed": {r["seed"]: r["final_accuracy"] for r in group},
            "diverged": {r["seed"]: r["diverged"] for r in group if r["diverged"]},
            "faulty_weight_end": _mean_std(ends),
            "policy_ms_per_round": _mean_std(
                [
                    1000 * r["policy_seconds_per_round"]
                    for r in group
                    if r["policy_seconds_per_round"]
                ]
            ),
            "run_seconds": float(sum(r["run_seconds"] for r in group)),
        }
    # Every run of a seed has the same split; runs rebuilt from a report carry no share.
    known = [r for r in runs if r["faulty_share"] is not None]
    shares = [r["faulty_share"] for r in known if r["policy"] == ORACLE] or [
        r["faulty_share"] for r in known
    ]
    summary: dict[str, Any] = {
        "faulty_share": {"mean": float(np.mean(shares)), "min": min(shares), "max": max(shares)},
        "policies": policies,
        # Time in rounds, summed over every run of the scenario (one core each).
        "run_seconds_total": float(sum(r["run_seconds"] for r in runs)),
    }
    fedavg, oracle = by_policy.get("fedavg"), by_policy.get(ORACLE)
    mild = None
    if fedavg and oracle:
        cost = 100 * (np.mean([_final(r) for r in oracle]) - np.mean([_final(r) for r in fedavg]))
        summary["fedavg_cost_points"] = float(cost)
        mild = bool(cost < 1.0)
    summary["mild_fault"] = mild
    if JUDGED in by_policy:
        summary["targets"] = weight_targets(by_policy[JUDGED], mild, shares)
        summary["accuracy_targets"] = accuracy_targets(by_policy, max(shares) > 0.0)
    return summary


#: The rules the judged policy must not fall behind (accuracy floor of issue 8).
FLOOR_RULES = ("fedavg", "hedge-loo", "fltrust")
#: The rules it must beat to earn its keep.
BEST_RULES = ("hedge-loo", "fltrust", "zeno", "median")


def accuracy_targets(by_policy: dict[str, list[dict[str, Any]]], faulty: bool) -> dict[str, str]:
    """Issue 8's accuracy targets for :data:`JUDGED` on one scenario (a diverged seed counts
    as accuracy 0): the floor (mean at least max(FedAvg, Hedge-LOO, FLTrust) − 0.5 point, no
    seed more than 3 points below the best of them on that seed), no divergence where
    Hedge-LOO does not diverge, within 1 point of the oracle (fault scenarios), and whether
    it beats the best of Hedge-LOO, FLTrust, Zeno and median by > 1 point and > 1 std."""
    judged = {r["seed"]: r for r in by_policy[JUDGED]}
    result: dict[str, str] = {}
    floor = [p for p in FLOOR_RULES if p in by_policy]
    if floor:
        means = {p: 100 * float(np.mean([_final(r) for r in by_policy[p]])) for p in floor}
        mine = 100 * float(np.mean([_final(r) for r in judged.values()]))
        best = max(means, key=lambda p: means[p])
        bad_seeds = []
        for seed, run in judged.items():
            others = [_final(r) for p in floor for r in by_policy[p] if r["seed"] == seed]
            if others and 100 * (max(others) - _final(run)) > 3.0:
                bad_seeds.append(f"seed {seed}: {100 * (max(others) - _final(run)):.1f} below")
        failures = []
        if mine < means[best] - 0.5:
            failures.append(f"mean {mine:.1f} < {best} {means[best]:.1f} - 0.5")
        failures += bad_seeds
        result["floor"] = "pass" if not failures else "fail (" + "; ".join(failures) + ")"
    if "hedge-loo" in by_policy:
        hedge_diverged = any(r["diverged"] for r in by_policy["hedge-loo"])
        mine_diverged = [s for s, r in judged.items() if r["diverged"]]
        result["no_divergence"] = (
            "pass"
            if not mine_diverged or hedge_diverged
            else f"fail (seeds {mine_diverged}; hedge-loo did not diverge)"
        )
    if ORACLE in by_policy:
        gap = 100 * (
            float(np.mean([_final(r) for r in by_policy[ORACLE]]))
            - float(np.mean([_final(r) for r in judged.values()]))
        )
        result["within_1_of_oracle"] = (
            "n/a" if not faulty else ("pass" if gap <= 1.0 else f"fail ({gap:.1f} points)")
        )
    rules = [p for p in BEST_RULES if p in by_policy]
    if rules:
        means = {p: float(np.mean([_final(r) for r in by_policy[p]])) for p in rules}
        best = max(means, key=lambda p: means[p])
        tally = compare({"s": by_policy[JUDGED] + by_policy[best]}, JUDGED, best)
        result["beats_best_rule"] = f"{'yes' if tally['wins']['count'] else 'no'} ({best})"
        if ORACLE in by_policy and faulty:
            # Room left above the best rule: where it is under a point, a win of a point
            # means beating the oracle (possible, e.g. using a scaled node's data, but rare).
            oracle = float(np.mean([_final(r) for r in by_policy[ORACLE]]))
            result["headroom"] = f"{100 * (oracle - means[best]):+.1f} ({best})"
    return result


def weight_targets(
    group: list[dict[str, Any]], mild: bool | None, shares: list[float]
) -> dict[str, str]:
    """Issue 8's weight targets for one policy's seeds: ``pass``, ``fail (...)`` or ``n/a``.

    They apply to faults that cost FedAvg at least 1 point (``mild`` false); the free-rider
    and recovery targets whenever there is a free rider or a fault that switched off (a
    switched-off fault is judged by FedAvg's *final* accuracy, after it ended, so its cost
    says nothing about it).
    """
    result: dict[str, str] = {}
    no_fault = max(shares) == 0.0
    applies = not no_fault and mild is not True
    diverged = [r["seed"] for r in group if r["diverged"]]

    def verdict(name: str, failures: list[str], present: bool, apply: bool = applies) -> None:
        if not present:
            result[name] = "n/a"
        elif not apply:
            result[name] = "n/a (mild fault)" if not no_fault else "n/a"
        elif diverged:
            result[name] = f"fail (diverged: seeds {diverged})"
        else:
            result[name] = "pass" if not failures else "fail (" + "; ".join(failures) + ")"

    ends = [(r["seed"], r["weights"]["end"]) for r in group]
    verdict(
        "end_weight_le_2pct",
        [f"seed {s}: {100 * e:.1f} %" for s, e in ends if e is not None and e > 0.02],
        not no_fault,
    )
    worst = [(r["seed"], r["weights"]["max_while_faulty"]) for r in group]
    verdict(
        "while_faulty_lt_10pct",
        [f"seed {s}: {100 * w:.1f} %" for s, w in worst if w is not None and w >= 0.10],
        any(w is not None for _, w in worst),
    )
    recoveries = [(r["seed"], rec) for r in group for rec in r["weights"]["recoveries"]]
    verdict(
        "regains_half_share_in_20",
        [
            f"seed {s}: {rec['node']} {100 * rec['max_weight']:.1f} % of share "
            f"{100 * rec['share']:.1f} %"
            for s, rec in recoveries
            if rec["max_weight"] < 0.5 * rec["share"]
        ],
        bool(recoveries),
        apply=True,
    )
    riders = [(r["seed"], fr) for r in group for fr in r["weights"]["free_riders"]]
    verdict(
        "free_rider_below_half_share",
        [
            f"seed {s}: {fr['node']} {100 * fr['end_weight']:.1f} % of share "
            f"{100 * fr['share']:.1f} %"
            for s, fr in riders
            if fr["end_weight"] >= 0.5 * fr["share"]
        ],
        bool(riders),
        apply=True,
    )
    return result


def compare(scenarios: dict[str, list[dict[str, Any]]], judged: str, other: str) -> dict[str, Any]:
    """Wins, ties and losses of ``judged`` against ``other`` over the scenarios both ran:
    a win is a mean paired per-seed gain of more than 1 point and more than one std of the
    paired differences (a diverged run counts as accuracy 0)."""
    tally: dict[str, list[str]] = {"wins": [], "ties": [], "losses": []}
    for name, runs in scenarios.items():
        a = {r["seed"]: _final(r) for r in runs if r["policy"] == judged}
        b = {r["seed"]: _final(r) for r in runs if r["policy"] == other}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        differences = 100 * np.array([a[s] - b[s] for s in seeds])
        mean, std = float(differences.mean()), float(differences.std())
        if mean > WIN_POINTS and mean > std:
            tally["wins"].append(name)
        elif -mean > WIN_POINTS and -mean > std:
            tally["losses"].append(name)
        else:
            tally["ties"].append(name)
    return {k: {"count": len(v), "scenarios": v} for k, v in tally.items()}


def aggregate(scenarios: dict[str, list[dict[str, Any]]], policies: list[str]) -> dict[str, Any]:
    judged_vs = {
        other: compare(scenarios, JUDGED, other)
        for other in policies
        if other != JUDGED and JUDGED in policies
    }
    gaps: dict[str, Any] = {}
    for policy in policies:
        worst: tuple[float, str] | None = None
        for name, runs in scenarios.items():
            mine = [_final(r) for r in runs if r["policy"] == policy]
            oracle = [_final(r) for r in runs if r["policy"] == ORACLE]
            if mine and oracle:
                gap = 100 * (float(np.mean(oracle)) - float(np.mean(mine)))
                if worst is None or gap > worst[0]:
                    worst = (gap, name)
        if worst is not None:
            gaps[policy] = {"points": worst[0], "scenario": worst[1]}
    return {f"{JUDGED}_against": judged_vs, "worst_gap_to_oracle": gaps}


# ----------------------------------------------------------------------------- markdown


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    acc = row["final_accuracy"]
    text = "diverged" if acc is None else f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f}"
    if row["diverged"]:
        text += f" †{len(row['diverged'])}"
    return text


def _target_table(title: str, rows: list[tuple[str, dict[str, str]]]) -> list[str]:
    """A pass/fail table: one row per scenario, one column per target of the first row."""
    keys = list(rows[0][1])
    lines = ["", f"### {title}", "", "| scenario | " + " | ".join(keys) + " |"]
    lines.append("|---|" + "---|" * len(keys))
    for name, targets in rows:
        lines.append(f"| {name} | " + " | ".join(targets.get(k, "—") for k in keys) + " |")
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def judged_counts(output: dict[str, Any]) -> dict[str, int]:
    """How many of issue 8's targets :data:`JUDGED` meets in a report: the floor, within a
    point of the oracle, beating the best rule (scenarios), and the weight checks."""
    rows = output["scenarios"].values()
    accuracy = [r["accuracy_targets"] for r in rows if "accuracy_targets" in r]
    ceiling = [t.get("within_1_of_oracle", "n/a") for t in accuracy]
    ceiling = [c for c in ceiling if c != "n/a"]
    checks = [v for r in rows for v in r.get("targets", {}).values()]
    return {
        "scenarios": len(accuracy),
        "floor": sum(t.get("floor") == "pass" for t in accuracy),
        "fault_scenarios": len(ceiling),
        "within_1": sum(c == "pass" for c in ceiling),
        "beats_best_rule": sum(t.get("beats_best_rule", "").startswith("yes") for t in accuracy),
        "weight_pass": sum(v == "pass" for v in checks),
        "weight_fail": sum(v.startswith("fail") for v in checks),
    }


def verdict(before: dict[str, Any], after: dict[str, Any], scenarios: list[str]) -> str:
    """One line: :func:`judged_counts` of ``after`` against ``before``, and the mean change
    of :data:`JUDGED`'s accuracy over ``scenarios`` (those run; an ablation's result)."""
    old, new = judged_counts(before), judged_counts(after)
    changes = []
    for name in scenarios:
        mine = after["scenarios"][name]["policies"].get(JUDGED, {}).get("final_accuracy")
        stored = before["scenarios"].get(name, {}).get("policies", {})
        theirs = stored.get(JUDGED, {}).get("final_accuracy")
        if mine and theirs:
            changes.append(100 * (mine["mean"] - theirs["mean"]))
    mean = f"{sum(changes) / len(changes):+.2f}" if changes else "n/a"
    return (
        f"floor {new['floor']} of {new['scenarios']} (was {old['floor']}); within a point "
        f"{new['within_1']} of {new['fault_scenarios']} (was {old['within_1']}); beats the "
        f"best rule {new['beats_best_rule']} (was {old['beats_best_rule']}); weight checks "
        f"{new['weight_pass']} pass / {new['weight_fail']} fail (was {old['weight_pass']} / "
        f"{old['weight_fail']}); {JUDGED} accuracy {mean} points on average over the "
        f"{len(changes)} scenarios run"
    )


def markdown(output: dict[str, Any]) -> str:
    policies = [ORACLE, *output["setup"]["policies"]]
    summary = output["scenarios"]
    lines = [
        "### Final test accuracy, % (mean ± std over seeds; † n: n seeds diverged, left out "
        "of the mean)",
        "",
        "| scenario | faulty share | " + " | ".join(policies) + " |",
        "|---|---|" + "---|" * len(policies),
    ]
    for name, row in summary.items():
        share = row["faulty_share"]
        cells = [_cell(row["policies"].get(p)) for p in policies]
        lines.append(f"| {name} | {100 * share['mean']:.0f} % | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Weight on the nodes faulty in the last round, at the end, % (mean over seeds)",
        "",
        "| scenario | FedAvg cost, points | " + " | ".join(policies[1:]) + " |",
        "|---|---|" + "---|" * (len(policies) - 1),
    ]
    for name, row in summary.items():
        cells = []
        for p in policies[1:]:
            end = row["policies"].get(p, {}).get("faulty_weight_end")
            cells.append("—" if end is None else f"{100 * end['mean']:.1f}")
        cost = row.get("fedavg_cost_points")
        lines.append(
            f"| {name} | {'—' if cost is None else f'{cost:.1f}'} | " + " | ".join(cells) + " |"
        )
    counts = judged_counts(output)
    target_rows = [(n, r["targets"]) for n, r in summary.items() if "targets" in r]
    if target_rows:
        lines += _target_table(
            f"Weight targets of issue 8 for `{JUDGED}` (every seed must pass)", target_rows
        )
        lines.append(
            f"\n{counts['weight_pass']} checks pass, {counts['weight_fail']} fail, the rest "
            "do not apply."
        )
    accuracy_rows = [
        (n, r["accuracy_targets"]) for n, r in summary.items() if "accuracy_targets" in r
    ]
    if accuracy_rows:
        lines += _target_table(f"Accuracy targets of issue 8 for `{JUDGED}`", accuracy_rows)
        room = [float(t["headroom"].split()[0]) for _, t in accuracy_rows if "headroom" in t]
        lines.append(
            f"\nFloor met in {counts['floor']} of {counts['scenarios']} scenarios; within 1 "
            f"point of the oracle in {counts['within_1']} of {counts['fault_scenarios']} fault "
            f"scenarios (target: 80 %); beats the best rule in {counts['beats_best_rule']} "
            f"(target: 3). Headroom (oracle minus best rule) is at least 1 point in "
            f"{sum(r >= 1.0 for r in room)} of {len(room)} fault scenarios."
        )
    agg = output["aggregate"]
    if agg[f"{JUDGED}_against"]:
        lines += [
            "",
            f"### `{JUDGED}` against each policy (win: > {WIN_POINTS:g} point and > 1 std of "
            "the paired per-seed differences; a diverged seed counts as 0)",
            "",
            "| against | wins | ties | losses | lost on |",
            "|---|---|---|---|---|",
        ]
        for other, tally in agg[f"{JUDGED}_against"].items():
            lines.append(
                f"| {other} | {tally['wins']['count']} | {tally['ties']['count']} "
                f"| {tally['losses']['count']} | {', '.join(tally['losses']['scenarios']) or '—'} |"
            )
    lines += [
        "",
        "### Worst gap to the oracle, points",
        "",
        "| policy | gap | scenario |",
        "|---|---|---|",
    ]
    for policy, gap in agg["worst_gap_to_oracle"].items():
        lines.append(f"| {policy} | {gap['points']:.1f} | {gap['scenario']} |")
    machine = output["machine"]
    reused = machine.get("reused_runs") or 0
    lines.append(
        f"\n{output['setup']['seeds_count']} seeds, {output['setup']['rounds']} rounds, "
        f"{output['wall_seconds'] / 60:.1f} min with {output['setup']['workers']} workers on "
        f"{machine['cpu']} ({machine['cpus']} CPUs), load average "
        f"{machine['load_average_start'][0]:.2f} at the start, "
        f"{machine['load_average_end'][0]:.2f} at the end"
        + (f"; {reused} runs reused from a --runs file (not timed here)." if reused else ".")
    )
    for merged in machine.get("spliced", []):
        # Passes spliced in before --merge-into existed may lack the policies or the time.
        commit = (merged.get("git_commit") or "unknown")[:7]
        wall = merged.get("wall_seconds")
        lines.append(
            f"{', '.join(merged.get('policies') or ['some policies'])} merged in later in "
            f"{_count(len(merged.get('scenarios', [])), 'scenario')}: commit {commit}"
            + ("" if wall is None else f", {wall / 60:.1f} min")
            + f" on {merged.get('cpu', 'an unrecorded machine')}."
        )
    total = sum(row.get("run_seconds_total", 0.0) for row in summary.values())
    if total:
        lines.append(f"Time in rounds over every run: {total / 3600:.2f} core-hours.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- merging


class MergeError(ValueError):
    """A report that ``--merge-into`` cannot combine with this pass."""


def _stored_runs(name: str, entry: dict[str, Any], policy: str) -> list[dict[str, Any]]:
    """One policy's runs in a stored scenario, rebuilt from its per-seed results: what the
    accuracy targets, the comparisons and the gaps need (the per-round weights are not
    stored, so a kept judged policy keeps its stored weight targets)."""
    stored = entry["policies"][policy]
    end = (stored.get("faulty_weight_end") or {}).get("mean")
    diverged = {str(seed): value for seed, value in stored.get("diverged", {}).items()}
    return [
        {
            "scenario": name,
            "policy": policy,
            "seed": int(seed),
            "final_accuracy": accuracy,
            "diverged": diverged.get(str(seed)),
            "weights": {"end": end},
            "policy_seconds_per_round": None,
            "faulty_share": None,
            "run_seconds": 0.0,
        }
        for seed, accuracy in stored["final_accuracy_per_seed"].items()
    ]


def check_mergeable(
    report: Any, scenarios: list[str], setup: dict[str, Any], policies: list[str] | None = None
) -> None:
    """Raise :class:`MergeError` unless ``report`` is a zoo report with ``setup``'s rounds
    and seeds and each of ``scenarios`` under the zoo's current spec. A scenario the report
    does not have yet may be added only by a pass that runs (``policies``) the oracle and
    every policy of the report."""
    if not isinstance(report, dict) or not isinstance(report.get("scenarios"), dict):
        raise MergeError("it is not a zoo report (no 'scenarios' object)")
    old = report.get("setup") or {}
    for key in ("rounds", "seeds"):
        if old.get(key) != setup[key]:
            raise MergeError(f"its {key} are {old.get(key)}, this pass's are {setup[key]}")
    needed = [ORACLE, *old.get("policies", [])]
    for name in scenarios:
        if name not in report["scenarios"]:
            missing = [p for p in needed if p not in (policies or [])]
            if missing:
                raise MergeError(
                    f"it has no scenario {name!r}: a new scenario needs the oracle and every "
                    f"policy of the report (missing: {', '.join(missing)})"
                )
            continue
        spec = report["scenarios"][name].get("spec")
        if spec != ZOO[name]["spec"]:
            raise MergeError(f"{name}'s spec there is {spec}, the zoo's is {ZOO[name]['spec']}")


def merge_into(
    report: dict[str, Any],
    new_runs: dict[str, list[dict[str, Any]]],
    rerun: list[str],
    setup: dict[str, Any],
    pass_record: dict[str, Any],
) -> dict[str, Any]:
    """``report`` with the policies in ``rerun`` replaced by ``new_runs`` (by scenario) and
    every scenario summarised and judged again against the kept policies' stored per-seed
    results. The report's scenarios, rounds and seeds must be this pass's; ``pass_record``
    (commit, machine, load, time) is appended to the report's list of merged passes."""
    check_mergeable(report, list(new_runs), setup, rerun)
    old = report["setup"]
    policies = list(old.get("policies", []))
    policies += [p for p in rerun if p not in policies and p != ORACLE]
    scenarios: dict[str, Any] = {}
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    added = {
        name: {
            "spec": ZOO[name]["spec"],
            "issue": ZOO[name].get("issue"),
            "note": ZOO[name].get("note"),
            "policies": {},
        }
        for name in new_runs
        if name not in report["scenarios"]
    }
    for name, entry in [*report["scenarios"].items(), *added.items()]:
        if name not in new_runs:
            scenarios[name] = entry
            by_scenario[name] = [
                run for policy in entry["policies"] for run in _stored_runs(name, entry, policy)
            ]
            continue
        kept = [p for p in entry["policies"] if p not in rerun]
        runs = list(new_runs[name])
        for policy in kept:
            runs += _stored_runs(name, entry, policy)
        summary = summarise_scenario(runs)
        for policy in kept:
            # Figures the per-seed results cannot rebuild stay as they were measured.
            stored = entry["policies"][policy]
            for key in ("faulty_weight_end", "policy_ms_per_round", "run_seconds"):
                summary["policies"][policy][key] = stored.get(key)
        if JUDGED in kept and "targets" in entry:
            summary["targets"] = entry["targets"]
        order = [p for p in [ORACLE, *policies] if p in summary["policies"]]
        summary["policies"] = {p: summary["policies"][p] for p in order}
        seconds = [summary["policies"][p].get("run_seconds") for p in order]
        if all(value is not None for value in seconds):
            summary["run_seconds_total"] = float(sum(seconds))
        else:
            # A report from before per-policy times: its total stays, plus this pass's runs.
            summary["run_seconds_total"] = entry.get("run_seconds_total", 0.0) + sum(
                r["run_seconds"] for r in new_runs[name]
            )
        scenarios[name] = {
            "spec": entry.get("spec"),
            "issue": entry.get("issue"),
            "note": entry.get("note"),
            **summary,
        }
        by_scenario[name] = runs
    merged = dict(report)
    merged["setup"] = {**old, "policies": policies}
    merged["scenarios"] = scenarios
    merged["aggregate"] = aggregate(by_scenario, policies)
    merged["machine"] = dict(report.get("machine", {}))
    merged["machine"]["spliced"] = [*merged["machine"].get("spliced", []), pass_record]
    return merged


# ----------------------------------------------------------------------------- main


def _cost(name: str) -> float:
    """A rough cost per run, to start the slowest runs first."""
    spec = {**SPEC_DEFAULTS, **ZOO[name]["spec"]}
    samples = spec["samples"] or {"digits": 1797, "breast-cancer": 569, "wine": 178}.get(
        spec["dataset"], 3000
    )
    return float(samples) * (1.0 + spec["nodes"] / 20.0)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def run_key(
    scenario: str, seed: int, policy: str, rounds: int, overrides: dict[str, Any] | None = None
) -> str:
    """The identity of one run in a ``--runs`` file: the scenario's spec (not only its name,
    so an edited scenario is run again), the seed, the policy, the rounds and any
    ``--actor-critic-set`` overrides it ran with."""
    spec = json.dumps(ZOO[scenario]["spec"], sort_keys=True)
    key = f"{scenario}|{spec}|{seed}|{policy}|{rounds}"
    return key + f"|{json.dumps(overrides, sort_keys=True)}" if overrides else key


def _is_actor_critic(policy: str) -> bool:
    return policy.startswith("actor-critic")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--actor-critic-set KEY=JSON`` items as ``ActorCriticSettings`` overrides, each key
    and value checked (and converted) as an ``[actor_critic]`` config table is; a clear
    ``SystemExit`` otherwise."""
    from accord.aggregation.actor_critic_settings import ActorCriticSettings
    from accord.errors import ConfigurationError
    from accord.settings_mapping import settings_from_mapping

    raw: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"zoo: --actor-critic-set {item!r}: expected KEY=JSON")
        try:
            raw[key] = json.loads(text)
        except json.JSONDecodeError:
            raise SystemExit(
                f"zoo: --actor-critic-set {key}: {text!r} is not JSON (a string needs quotes: "
                f"{key}='\"value\"')"
            ) from None
    try:
        settings = settings_from_mapping(
            ActorCriticSettings, raw, source="--actor-critic-set", prefix="actor_critic."
        )
    except ConfigurationError as error:
        raise SystemExit(f"zoo: {error}") from None
    return {key: getattr(settings, key) for key in raw}


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    """The runs kept in a ``--runs`` file, by :func:`run_key`; a torn last line (the zoo was
    killed mid-write) is skipped, any other bad line stops with its line number."""
    kept: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return kept
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            kept[entry["key"]] = entry["run"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            if number == len(lines):
                break
            message = f"zoo: --runs {path}: line {number}: not a kept run ({error})"
            raise SystemExit(message) from None
    return kept


def read_report(path: Path, option: str = "--merge-into", prog: str = "zoo") -> Any:
    """A stored benchmark report (JSON); ``SystemExit`` naming the option, the file and,
    for bad JSON, the line otherwise."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SystemExit(f"{prog}: {option} {path}: cannot read it ({error.strerror})") from None
    except json.JSONDecodeError as error:
        message = f"{prog}: {option} {path}: line {error.lineno}: not JSON ({error.msg})"
        raise SystemExit(message) from None


def names_from(text: str, accepted: tuple[str, ...], what: str, prog: str = "zoo") -> list[str]:
    """A comma-separated option's names, each one of ``accepted`` (``SystemExit`` naming
    the unknown ones otherwise)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in accepted]
    if unknown or not names:
        raise SystemExit(f"{prog}: --{what}: unknown {unknown}; accepted: {', '.join(accepted)}")
    return names


def _run_jobs(
    jobs: list[Any],
    rounds: int,
    workers: int,
    runs_path: Path | None,
    commit: str | None,
    done_before: int,
    total: int,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run ``jobs`` in ``workers`` processes, each finished run kept in ``runs_path`` at once
    (so a killed zoo loses at most the runs in flight); progress on stderr."""
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: set[Future[dict[str, Any]]] = {pool.submit(run_one, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                run = future.result()
                run.pop("accuracy", None)  # per-round series stay out of the JSON
                run.pop("faulty_mass", None)
                runs.append(run)
                if runs_path:
                    ablated = overrides if _is_actor_critic(run["policy"]) else None
                    key = run_key(run["scenario"], run["seed"], run["policy"], rounds, ablated)
                    with runs_path.open("a", encoding="utf-8") as kept_file:
                        kept_file.write(
                            json.dumps({"key": key, "commit": commit, "run": run}) + "\n"
                        )
                status = "diverged" if run["diverged"] else f"{100 * _final(run):.1f} %"
                print(
                    f"[{done_before + len(runs)}/{total} {time.perf_counter() - started:.0f} s] "
                    f"{run['scenario']} {run['policy']} seed {run['seed']}: {status}",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", choices=sorted(SUBSETS), default="full")
    parser.add_argument("--scenarios", help="comma-separated names (overrides --subset)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5; quick: 3)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--runs",
        type=Path,
        help="keep each finished run in this JSON-lines file and reuse the runs already in it",
    )
    parser.add_argument(
        "--merge-into",
        type=Path,
        metavar="REPORT",
        help="run only --policies (the oracle only if listed) and rewrite REPORT, a zoo "
        "report with the same rounds and seeds, with their runs in place of its own; the "
        "other policies' stored per-seed results are judged again against them",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="REPORT",
        help="as --merge-into, but REPORT is only read: the merged report goes to stdout "
        "(and --markdown), with a one-line verdict on stderr (an ablation)",
    )
    parser.add_argument(
        "--actor-critic-set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="an ActorCriticSettings field for the Actor-Critic's modes, e.g. "
        "harm_decay=0.9 (repeatable; with --against, not --merge-into)",
    )
    return parser


def _merge_record(output: dict[str, Any], scenarios: list[str], policies: list[str]) -> Any:
    """What a merged report keeps of the pass that was merged into it."""
    machine = output["machine"]
    return {
        "scenarios": scenarios,
        "policies": policies,
        "git_commit": machine["git_commit"],
        "cpu": machine["cpu"],
        "load_average_start": machine["load_average_start"],
        "load_average_end": machine["load_average_end"],
        "wall_seconds": output["wall_seconds"],
        "reused_runs": machine["reused_runs"],
    }


def _report_to_judge_against(
    args: argparse.Namespace,
    scenarios: list[str],
    seeds: list[int],
    overrides: dict[str, Any],
    listed: list[str],
) -> Any:
    """The report of ``--merge-into`` or ``--against``, checked against this pass, which runs
    the ``listed`` policies (``None`` without either)."""
    if args.merge_into and args.against:
        raise SystemExit("zoo: --merge-into and --against: choose one")
    if overrides and args.merge_into:
        raise SystemExit(
            "zoo: --actor-critic-set changes the policy: judge it with --against, and keep "
            "--merge-into for the defaults"
        )
    path = args.merge_into or args.against
    if not path:
        return None
    option = "--merge-into" if args.merge_into else "--against"
    report = read_report(path, option)
    try:
        check_mergeable(report, scenarios, {"rounds": args.rounds, "seeds": seeds}, listed)
    except MergeError as error:
        raise SystemExit(f"zoo: {option} {path}: {error}") from None
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name, entry in ZOO.items():
            quick = " (quick)" if entry.get("quick") else ""
            print(f"{name}{quick}: {json.dumps(entry['spec'])}")
        return 0
    from accord.aggregation.registry import POLICIES as KNOWN

    scenarios = (
        names_from(args.scenarios, tuple(ZOO), "scenarios")
        if args.scenarios
        else list(SUBSETS[args.subset])
    )
    listed = names_from(args.policies, (*KNOWN, ORACLE), "policies")
    policies = [p for p in listed if p != ORACLE]
    seeds = list(
        range(args.seeds if args.seeds is not None else (3 if args.subset == "quick" else 5))
    )
    overrides = parse_overrides(args.actor_critic_set)
    report = _report_to_judge_against(args, scenarios, seeds, overrides, listed)
    # A merge re-runs the oracle only when asked; a report of its own always has it.
    run_policies = listed if report is not None else [ORACLE, *policies]
    jobs = [
        (
            name,
            scenario_settings(ZOO[name]["spec"], seed),
            policy,
            args.rounds,
            overrides if _is_actor_critic(policy) else None,
        )
        for name in sorted(scenarios, key=_cost, reverse=True)
        for seed in seeds
        for policy in run_policies
    ]
    kept = load_runs(args.runs) if args.runs else {}
    runs: list[dict[str, Any]] = []
    to_run = []
    for job in jobs:
        key = run_key(job[0], job[1].seed, job[2], job[3], job[4])
        if key in kept:
            runs.append(kept[key])
        else:
            to_run.append(job)
    if runs:
        print(f"zoo: reusing {len(runs)} kept runs from {args.runs}", file=sys.stderr)
    commit = _git_commit()
    load_start = os.getloadavg()
    started = time.perf_counter()
    runs += _run_jobs(
        to_run, args.rounds, args.workers, args.runs, commit, len(runs), len(jobs), overrides
    )
    by_scenario: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
    for run in runs:
        by_scenario[run["scenario"]].append(run)
    import sklearn
    import torch

    output: dict[str, Any] = {
        "benchmark": "zoo",
        "setup": {
            "subset": None if args.scenarios else args.subset,
            "rounds": args.rounds,
            "seeds": seeds,
            "seeds_count": len(seeds),
            "policies": policies,
            "workers": args.workers,
            "model": "mlp, hidden 32 (accord simulate's default)",
            **({"actor_critic_overrides": overrides} if overrides else {}),
        },
        "scenarios": {
            name: {
                "spec": ZOO[name]["spec"],
                "issue": ZOO[name].get("issue"),
                "note": ZOO[name].get("note"),
                **summarise_scenario(by_scenario[name]),
            }
            for name in scenarios
        },
        "aggregate": aggregate(by_scenario, policies),
        "wall_seconds": time.perf_counter() - started,
        "machine": {
            **machine_record(load_start),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "scikit-learn": sklearn.__version__,
            "git_commit": commit,
            "reused_runs": len(jobs) - len(to_run),
        },
    }
    if report is not None:
        record = _merge_record(output, scenarios, run_policies)
        if overrides:
            record["actor_critic_overrides"] = overrides
        output = merge_into(report, by_scenario, run_policies, output["setup"], record)
        if args.merge_into:
            write_atomically(args.merge_into, (json.dumps(output, indent=1) + "\n").encode())
            print(
                f"zoo: merged {len(runs)} runs of {', '.join(run_policies)} into {args.merge_into}",
                file=sys.stderr,
            )
        else:
            line = verdict(report, output, scenarios)
            print(f"zoo: against {args.against}: {line}", file=sys.stderr)
    if args.markdown:
        write_atomically(args.markdown, markdown(output).encode())
    json.dump(output, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
