"""Networked federation against the in-process simulation, in the same run.

Runs ``accord federate --nodes 10 --rounds 20`` (MLP 64-32-10 on digits, Actor-Critic, TLS
with client certificates and tokens, every node a separate process on 127.0.0.1) from a
fresh interpreter, then the in-process :class:`Simulation` of the same settings in this
process, and prints one JSON object:

- per-round wall time of both (median and mean over rounds 1..19; round 0 separately) and
  the difference, the network overhead (target <= 50 ms per round);
- protobuf payload bytes the server sent and received per round (TLS and HTTP/2 framing
  not counted);
- peak RSS of the server process and of each node process (target <= 300 MB per node);
- seconds from launching the command to the end of round 0 (target <= 5 s);
- whether both runs reached the same metrics.

Usage: ``python benchmarks/federation.py [--nodes 10] [--rounds 20] [--seed 0] [--insecure]``
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
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
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as scratch:
        run_dir = Path(scratch) / "run"
        command = [sys.executable, "-m", "accord.cli", "-q", "federate", "--out", str(run_dir)]
        command += common + (["--insecure"] if args.insecure else [])
        launched = time.time()
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        federate_seconds = time.perf_counter() - started
        if completed.returncode != 0:
            sys.stderr.write(completed.stderr)
            return 1
        stats = json.loads((run_dir / "federation_stats.json").read_text())
        federated_records = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]

    import torch

    torch.set_num_threads(1)  # as in every federation process
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
    simulated_records = [timed.record.to_json() for timed in result.rounds]

    def essentials(record: dict[str, Any]) -> tuple[Any, ...]:
        return (
            record["probabilities"],
            record["test_accuracy"],
            record["validation_loss_after"],
            record["dropped"],
        )

    same = [essentials(r) for r in federated_records] == [essentials(r) for r in simulated_records]
    federated = _summary(stats["round_seconds"])
    simulated = _summary([timed.round_seconds for timed in result.rounds])
    node_rss = list(stats["node_peak_rss_bytes"].values())
    sent = stats["bytes_sent"]
    received = stats["bytes_received"]
    first_round = stats["first_round_done_at"] - launched
    overhead = federated["median_ms"] - simulated["median_ms"]
    report = {
        "benchmark": "federation",
        "configuration": {
            "nodes": args.nodes,
            "rounds": args.rounds,
            "dataset": "digits",
            "model": "mlp 64-32-10",
            "policy": "actor-critic",
            "transport": "plaintext" if args.insecure else "TLS + client certificates + tokens",
            "seed": args.seed,
        },
        "federated": {
            **federated,
            "total_seconds": federate_seconds,
            "launch_to_first_round_seconds": first_round,
            "bytes_sent_per_round": statistics.median(sent),
            "bytes_received_per_round": statistics.median(received),
            "server_peak_rss_mb": stats["server_peak_rss_bytes"] / 2**20,
            "node_peak_rss_mb_max": max(node_rss) / 2**20,
            "node_peak_rss_mb_median": statistics.median(node_rss) / 2**20,
            "node_exit_codes": sorted(set(stats["node_exit_codes"].values())),
        },
        "simulation_baseline": {**simulated, "build_seconds": build_seconds},
        "overhead_ms_per_round_median": overhead,
        "same_metrics_as_simulation": same,
        "targets": {
            "overhead_ms_per_round<=50": overhead <= 50,
            "node_peak_rss_mb<=300": max(node_rss) / 2**20 <= 300,
            "first_round_within_5s": first_round <= 5,
        },
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
        },
        "versions": _versions(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
