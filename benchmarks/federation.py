"""Networked federation against the in-process simulation, in the same run.

Runs ``accord federate --nodes 10 --rounds 20`` (MLP 64-32-10 on digits, Actor-Critic, TLS
with client certificates and tokens, every node a separate process on 127.0.0.1) from a
fresh interpreter, then the in-process :class:`Simulation` of the same settings in this
process, ``--repeats`` times in turn (the machine's load moves between runs; each pair is
taken close together), and prints one JSON object:

- per-round wall time of both (median and mean over rounds 1..19; round 0 separately) and
  the difference, the network overhead: per pair, and the median over the pairs (target
  <= 25 ms per round at 10 nodes on a quiet machine);
- where a round's time goes on each side, per stage (median ms over rounds 1..19 and the
  pairs): first gradients (the nodes' training and the transport), aggregate (credit and
  policy), second gradient (handing it to the transport), evaluations, conclude; and the
  server process's CPU time per round;
- protobuf payload bytes the server sent and received per round (TLS and HTTP/2 framing
  not counted);
- peak RSS of the server process and of each node process (target <= 300 MB per node);
- seconds from launching the command to the end of round 0 (target <= 5 s);
- whether both runs reached the same metrics.

Usage: ``python benchmarks/federation.py [--nodes 10] [--rounds 20] [--repeats 3] [--seed 0]
[--insecure]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model

from accord.federation.driver import ROUND_STAGES


def _versions() -> dict[str, str]:
    import grpc
    import numpy
    import torch
    from google import protobuf

    import accord

    return {
        "python": platform.python_version(),
        "accord": accord.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "grpcio": grpc.__version__,
        "protobuf": protobuf.__version__,
    }


def _summary(seconds: list[float]) -> dict[str, float]:
    later = seconds[1:] or seconds
    return {
        "round_0_ms": seconds[0] * 1000,
        "median_ms": statistics.median(later) * 1000,
        "mean_ms": statistics.fmean(later) * 1000,
    }


def stage_medians(runs: list[list[dict[str, float]]]) -> dict[str, float]:
    """Median milliseconds of each stage (and of the process's CPU) over rounds 1.. of
    every run."""
    later = [stages for run in runs for stages in run[1:]]
    return {
        f"{name}_ms": statistics.median(stages.get(name, 0.0) for stages in later) * 1000
        for name in (*ROUND_STAGES, "process_cpu")
    }


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The machine, and its load averages before the runs and now."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }


def _federate(args: argparse.Namespace, common: list[str]) -> dict[str, Any] | None:
    """One ``accord federate`` run in a fresh interpreter: its stats and records."""
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as scratch:
        run_dir = Path(scratch) / "run"
        command = [sys.executable, "-m", "accord.cli", "-q", "federate", "--out", str(run_dir)]
        command += common + (["--insecure"] if args.insecure else [])
        launched = time.time()
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            sys.stderr.write(completed.stderr)
            return None
        stats = json.loads((run_dir / "federation_stats.json").read_text())
        records = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
    return {"stats": stats, "records": records, "seconds": seconds, "launched": launched}


def _simulate(args: argparse.Namespace) -> dict[str, Any]:
    """The in-process simulation of the same settings: its records, round times, stages."""
    from accord.run import StopConditions
    from accord.scenario import ScenarioSettings
    from accord.simulation.driver import Simulation, SimulationSettings

    settings = SimulationSettings(
        scenario=ScenarioSettings(nodes=args.nodes, seed=args.seed),
        stop=StopConditions(max_rounds=args.rounds),
    )
    started = time.perf_counter()
    simulation = Simulation(settings, "actor-critic")
    build_seconds = time.perf_counter() - started
    result = simulation.run()
    return {
        "records": [timed.record.to_json() for timed in result.rounds],
        "round_seconds": [timed.round_seconds for timed in result.rounds],
        "stages": list(simulation._driver.stage_seconds),  # the driver it plays rounds with
        "build_seconds": build_seconds,
    }


def _essentials(record: dict[str, Any]) -> tuple[Any, ...]:
    return (
        record["probabilities"],
        record["test_accuracy"],
        record["validation_loss_after"],
        record["dropped"],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="federate/simulate pairs [3]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--insecure", action="store_true", help="plaintext federation")
    args = parser.parse_args()
    common = [
        "--nodes",
        str(args.nodes),
        "--rounds",
        str(args.rounds),
        "--seed",
        str(args.seed),
        "--dataset",
        "digits",
        "--model",
        "mlp",
        "--policy",
        "actor-critic",
    ]
    import torch

    torch.set_num_threads(1)  # as in every federation process
    load_before = os.getloadavg()
    pairs: list[tuple[dict[str, Any], dict[str, Any], float]] = []
    for _ in range(args.repeats):
        federated_run = _federate(args, common)
        if federated_run is None:
            return 1
        simulated_run = _simulate(args)
        pairs.append((federated_run, simulated_run, os.getloadavg()[0]))

    same = all(
        [_essentials(r) for r in fed["records"]] == [_essentials(r) for r in sim["records"]]
        for fed, sim, _ in pairs
    )
    per_pair = []
    for fed, sim, load in pairs:
        federated = _summary(fed["stats"]["round_seconds"])
        simulated = _summary(sim["round_seconds"])
        per_pair.append(
            {
                "federated_median_ms": federated["median_ms"],
                "simulated_median_ms": simulated["median_ms"],
                "overhead_ms": federated["median_ms"] - simulated["median_ms"],
                "load_average_1min": load,
            }
        )
    overhead = statistics.median(pair["overhead_ms"] for pair in per_pair)
    stats = [fed["stats"] for fed, _, _ in pairs]
    # each round's median over the repeats (every run plays the same rounds)
    federated = _summary(
        [statistics.median(r) for r in zip(*(s["round_seconds"] for s in stats), strict=True)]
    )
    simulated = _summary(
        [
            statistics.median(r)
            for r in zip(*(sim["round_seconds"] for _, sim, _ in pairs), strict=True)
        ]
    )
    node_rss = [value for s in stats for value in s["node_peak_rss_bytes"].values()]
    sent = [value for s in stats for value in s["bytes_sent"]]
    received = [value for s in stats for value in s["bytes_received"]]
    first_round = [fed["stats"]["first_round_done_at"] - fed["launched"] for fed, _, _ in pairs]
    report = {
        "benchmark": "federation",
        "command": "python benchmarks/federation.py " + " ".join(sys.argv[1:]),
        "configuration": {
            "nodes": args.nodes,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "dataset": "digits",
            "model": "mlp 64-32-10",
            "policy": "actor-critic",
            "transport": "plaintext" if args.insecure else "TLS + client certificates + tokens",
            "seed": args.seed,
        },
        "federated": {
            **federated,
            "stages": stage_medians([s["stage_seconds"] for s in stats]),
            "total_seconds_median": statistics.median(fed["seconds"] for fed, _, _ in pairs),
            "launch_to_first_round_seconds_median": statistics.median(first_round),
            "bytes_sent_per_round": statistics.median(sent),
            "bytes_received_per_round": statistics.median(received),
            "server_peak_rss_mb": max(s["server_peak_rss_bytes"] for s in stats) / 2**20,
            "node_peak_rss_mb_max": max(node_rss) / 2**20,
            "node_peak_rss_mb_median": statistics.median(node_rss) / 2**20,
            "node_exit_codes": sorted({c for s in stats for c in s["node_exit_codes"].values()}),
        },
        "simulation_baseline": {
            **simulated,
            "stages": stage_medians([sim["stages"] for _, sim, _ in pairs]),
            "build_seconds_median": statistics.median(sim["build_seconds"] for _, sim, _ in pairs),
        },
        "pairs": per_pair,
        "overhead_ms_per_round_median": overhead,
        "same_metrics_as_simulation": same,
        "targets": {
            "overhead_ms_per_round<=25": overhead <= 25,
            "node_peak_rss_mb<=300": max(node_rss) / 2**20 <= 300,
            "first_round_within_5s": statistics.median(first_round) <= 5,
        },
        "machine": machine(load_before),
        "versions": _versions(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
