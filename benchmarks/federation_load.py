"""Load: one server against 10, 50 and 100 nodes, the nodes hosted as sessions of one process.

A node process holds about 200 MB, so a hundred of them may not fit; ``accord node
--sessions N`` runs N sessions in one process instead, with the same client code (each its
own gRPC channel and connection, client certificate and token, registration and worker). For
each node count this script starts ``accord server`` (TLS, client certificates and tokens;
digits split IID, MLP 64-32-10) and one such host, both fresh interpreters, lets them play
the rounds, then plays the same rounds in the in-process simulation (every node trained in
a loop, as the host's nodes are: one process, one interpreter lock), and prints one JSON
object with, per node count:

- the median round's wall time, networked and simulated, and the difference (the round
  overhead of the network; rounds 1.. , round 0 holds registration's last steps);
- the server process's CPU seconds per round (median; all its threads), and the median of
  each stage of a round on both sides (first gradients, aggregate, second gradient, ...);
- the server's peak RSS, and the node host's peak RSS (per node, too) and CPU seconds in all
  (start-up and registration included);
- protobuf payload bytes the server sent and received per round (median; TLS and HTTP/2
  framing not counted);
- whether every node answered in every round, and whether the networked records equal the
  simulated ones.

Usage: ``python benchmarks/federation_load.py [--nodes 10 50 100] [--rounds 10]
[--policy fedavg] [--seed 0] [--insecure]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from federation import machine, stage_medians


def _cpu_seconds(pid: int) -> float | None:
    """The process's CPU seconds so far (user and system, all threads), or ``None``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM), or ``None`` once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _networked(args: argparse.Namespace, nodes: int, scratch: Path) -> dict[str, Any]:
    """One server and one host of ``nodes`` sessions: the server's stats and records, the
    host's peak RSS."""
    from accord.credentials.issue import make_credentials

    node_ids = [f"node-{i:02d}" for i in range(nodes)]
    credentials = scratch / f"credentials-{nodes}"
    if not args.insecure:
        make_credentials(credentials, node_ids, now=dt.datetime.now(dt.UTC), days=1)
    security = ["--insecure"] if args.insecure else ["--credentials", str(credentials)]
    scenario = ["--nodes", str(nodes), "--seed", str(args.seed), "--dataset", "digits"]
    scenario += ["--partition", "iid"]  # Dirichlet 0.5 cannot give 100 nodes 10 samples each
    run_dir = scratch / f"run-{nodes}"
    cli = [sys.executable, "-m", "accord.cli", "-q"]
    server = subprocess.Popen(
        [
            *cli,
            "server",
            "--out",
            str(run_dir),
            "--port",
            "0",
            *security,
            *scenario,
            "--model",
            "mlp",
            "--rounds",
            str(args.rounds),
            "--policy",
            args.policy,
            # every session registers from 127.0.0.1: let them all in at once
            "--max-pending-registrations",
            str(8 * nodes),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    address = run_dir / "server.json"
    deadline = time.monotonic() + 120
    while not address.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the server did not listen: {server.communicate()[1][-2000:]}")
        time.sleep(0.05)
    time.sleep(0.1)  # written atomically; read once complete
    port = json.loads(address.read_text())["port"]
    started = time.perf_counter()
    host = subprocess.Popen(
        [
            *cli,
            "node",
            "--server",
            f"127.0.0.1:{port}",
            "--scenario-node",
            "0",
            "--sessions",
            str(nodes),
            *security,
            *scenario,
            "--give-up-after",
            "120",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    host_rss = host_cpu = 0.0
    while host.poll() is None or server.poll() is None:
        host_rss = max(host_rss, _peak_rss_mb(host.pid) or 0.0)
        host_cpu = max(host_cpu, _cpu_seconds(host.pid) or 0.0)
        if time.perf_counter() - started > 600:
            host.kill()
            server.kill()
            raise SystemExit(f"{nodes} nodes: no end within 600 s")
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    if server.returncode != 0 or host.returncode != 0:
        raise SystemExit(
            f"{nodes} nodes: server exit {server.returncode}, host exit {host.returncode}\n"
            f"{server.stderr.read()[-2000:] if server.stderr else ''}\n"
            f"{host.stderr.read()[-2000:] if host.stderr else ''}"
        )
    stats = json.loads((run_dir / "federation_stats.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "stats": stats,
        "records": records,
        "host_peak_rss_mb": host_rss,
        "host_cpu_seconds": host_cpu,
        "seconds": seconds,
        "node_ids": node_ids,
    }


def _simulated(args: argparse.Namespace, nodes: int) -> dict[str, Any]:
    from accord.data.partition import PartitionSpec
    from accord.run import StopConditions
    from accord.scenario import ScenarioSettings
    from accord.simulation.driver import Simulation, SimulationSettings

    settings = SimulationSettings(
        scenario=ScenarioSettings(nodes=nodes, seed=args.seed, partition=PartitionSpec("iid")),
        stop=StopConditions(max_rounds=args.rounds),
        node_training="loop",  # as the host's sessions train: one after another
    )
    simulation = Simulation(settings, args.policy)
    result = simulation.run()
    return {
        "records": [timed.record.to_json() for timed in result.rounds],
        "round_seconds": [timed.round_seconds for timed in result.rounds],
        "stages": list(simulation._driver.stage_seconds),  # the driver it plays rounds with
    }


def _essentials(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["probabilities"], record["test_accuracy"], record["dropped"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--policy", default="fedavg")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--insecure", action="store_true", help="plaintext federation")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # as in every federation process
    load_before = os.getloadavg()
    cells = []
    with tempfile.TemporaryDirectory(prefix="accord-load-") as scratch:
        for nodes in args.nodes:
            networked = _networked(args, nodes, Path(scratch))
            load = os.getloadavg()[0]
            simulated = _simulated(args, nodes)
            stats = networked["stats"]
            federated_round = statistics.median(stats["round_seconds"][1:]) * 1000
            simulated_round = statistics.median(simulated["round_seconds"][1:]) * 1000
            cpu = [s["process_cpu"] for s in stats["stage_seconds"][1:]]
            every = all(
                r["present"] == networked["node_ids"] and not r["dropped"]
                for r in networked["records"]
            )
            cells.append(
                {
                    "nodes": nodes,
                    "round_ms_federated": federated_round,
                    "round_ms_simulated": simulated_round,
                    "round_overhead_ms": federated_round - simulated_round,
                    "server_cpu_ms_per_round": statistics.median(cpu) * 1000,
                    "server_peak_rss_mb": stats["server_peak_rss_bytes"] / 2**20,
                    "host_peak_rss_mb": networked["host_peak_rss_mb"],
                    "host_peak_rss_mb_per_node": networked["host_peak_rss_mb"] / nodes,
                    # sampled every 0.2 s until it exits: start-up and registration included
                    "host_cpu_seconds_in_all": networked["host_cpu_seconds"],
                    "bytes_sent_per_round": statistics.median(stats["bytes_sent"][1:]),
                    "bytes_received_per_round": statistics.median(stats["bytes_received"][1:]),
                    "stages_federated": stage_medians([stats["stage_seconds"]]),
                    "stages_simulated": stage_medians([simulated["stages"]]),
                    "every_node_in_every_round": every,
                    "same_records_as_simulation": [_essentials(r) for r in networked["records"]]
                    == [_essentials(r) for r in simulated["records"]],
                    "wall_seconds_networked": networked["seconds"],
                    "load_average_1min": load,
                }
            )
    report = {
        "benchmark": "federation_load",
        "command": "python benchmarks/federation_load.py " + " ".join(sys.argv[1:]),
        "configuration": {
            "rounds": args.rounds,
            "policy": args.policy,
            "dataset": "digits, IID",
            "model": "mlp 64-32-10",
            "nodes_hosted_as": "sessions of one process (accord node --sessions N)",
            "transport": "plaintext" if args.insecure else "TLS + client certificates + tokens",
            "seed": args.seed,
        },
        "cells": cells,
        "machine": machine(load_before),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
