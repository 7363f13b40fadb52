"""Flower with Accord's strategy against ``accord simulate`` and Flower's own strategies.

The digits flipper scenario, as ``accord simulate``'s default (10 nodes, Dirichlet 0.5, 3
label-flipping nodes, MLP 64-32-10, SGD 0.2, batch 16, one local epoch), for each seed:

- ``accord simulate`` with the policy (:class:`accord.simulation.driver.Simulation`, in this
  process, exactly what the command runs);
- one Flower simulation (``run_simulation`` on Ray, 10 SuperNodes) whose ServerApp runs, on
  the same nodes, Accord's strategy with the same policy, Flower's ``FedAvg`` and Flower's
  ``FedMedian`` one after the other. Every node is an ``accord.flower`` scenario node, so
  both sides use the same data split, faulty nodes and local training for each seed.

Figures: mean (and per seed) final test accuracy after ``--rounds`` rounds; start-up times,
launch to the end of the first round (Flower: ``run_simulation`` called, Ray, the SuperNode
actors and the first round; Accord: ``Simulation`` built and its first round), and seconds
per round. Start-up is measured in this process, which has already imported torch and flwr.
Prints one JSON object.

    python benchmarks/flower_vs_accord.py                  # 5 seeds × 100 rounds
    python benchmarks/flower_vs_accord.py --seeds 1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model

NODES = 10


def _settings(seed: int) -> Any:
    from accord.flower import ScenarioClientSettings
    from accord.scenario import ScenarioSettings

    return ScenarioClientSettings(scenario=ScenarioSettings(nodes=NODES, seed=seed))


def run_accord(policy: str, seed: int, rounds: int) -> dict[str, Any]:
    """``accord simulate --policies POLICY --seed SEED --rounds ROUNDS``, in this process."""
    from accord.simulation import Simulation, SimulationSettings, StopConditions

    settings = _settings(seed)
    started = time.perf_counter()
    simulation = Simulation(
        SimulationSettings(
            scenario=settings.scenario,
            model=settings.model,
            local=settings.local,
            stop=StopConditions(max_rounds=rounds),
        ),
        policy,
    )
    startup = time.perf_counter() - started
    result = simulation.run()
    first_round = startup + result.rounds[0].round_seconds
    last = result.rounds[-1].record
    faulty = set(result.faulty_nodes)
    return {
        "test_accuracy": last.test_accuracy,
        "weight_on_faulty": sum(p for n, p in last.probabilities.items() if n in faulty),
        "startup_seconds": startup,
        "first_round_seconds": first_round,
        "seconds_per_round": result.seconds / len(result.rounds),
    }


def run_flower(policy: str, seeds: list[int], rounds: int) -> dict[str, Any]:
    """One Flower simulation: for every seed, Accord's strategy, FedAvg and FedMedian."""
    from flwr.app import ConfigRecord, Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg, FedMedian
    from flwr.simulation import run_simulation

    from accord.flower import (
        AccordStrategy,
        HeldOutData,
        StrategySettings,
        make_evaluate_fn,
        scenario_client_app,
    )
    from accord.scenario import build_scenario
    from accord.training.models import build_model

    class TimedStrategy(AccordStrategy):
        """Notes when its first round is aggregated (Flower's start-up, end to end)."""

        first_round_at: float | None = None

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            result = super().aggregate_train(server_round, replies)
            if self.first_round_at is None:
                self.first_round_at = time.perf_counter()
            return result

    apps = {seed: scenario_client_app(_settings(seed)) for seed in seeds}
    client = ClientApp()

    def dispatch(message: Message, context: Context) -> Message:
        seed = message.content.config_records["config"]["scenario-seed"]
        reply: Message = apps[int(seed)](message, context)  # type: ignore[arg-type]
        return reply

    client.train()(dispatch)
    client.evaluate()(dispatch)
    out: dict[str, Any] = {"per_seed": {}}
    started = time.perf_counter()
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        out["serverapp_entered_seconds"] = time.perf_counter() - started
        for seed in seeds:
            settings = _settings(seed)
            data = build_scenario(settings.scenario)

            def model(data: Any = data, settings: Any = settings, seed: int = seed) -> Any:
                return build_model(settings.model, data.n_features, data.n_classes, seed)

            holdout = data.holdout
            test = HeldOutData(holdout.test.features, holdout.test.labels)
            config = ConfigRecord({"scenario-seed": seed})
            row: dict[str, Any] = {}
            strategy = TimedStrategy(
                model,
                StrategySettings(policy=policy, seed=seed, min_nodes=NODES),
                validation=HeldOutData(holdout.validation.features, holdout.validation.labels),
                test=test,
            )
            initial = strategy.initial_arrays()
            tick = time.perf_counter()
            strategy.start(
                grid=grid, initial_arrays=initial, num_rounds=rounds, train_config=config
            )
            if "first_round_seconds" not in out and strategy.first_round_at is not None:
                out["first_round_seconds"] = strategy.first_round_at - started
            last = strategy.records[-1]
            faulty = set(data.faulty_nodes)
            row["accord_strategy"] = {
                "test_accuracy": last.test_accuracy,
                "weight_on_faulty": sum(p for n, p in last.probabilities.items() if n in faulty),
                "seconds_per_round": (time.perf_counter() - tick) / rounds,
            }
            for name, flower_strategy in (
                ("flower_fedavg", FedAvg),
                ("flower_fedmedian", FedMedian),
            ):
                baseline = flower_strategy(
                    min_train_nodes=NODES, min_available_nodes=NODES, fraction_evaluate=0.0
                )
                evaluate = make_evaluate_fn(model, test)
                tick = time.perf_counter()
                result = baseline.start(
                    grid=grid,
                    initial_arrays=initial,
                    num_rounds=rounds,
                    train_config=ConfigRecord({"scenario-seed": seed}),
                    evaluate_fn=lambda r, a, f=evaluate: f(r, a) if r == rounds else None,
                )
                row[name] = {
                    "test_accuracy": float(result.evaluate_metrics_serverapp[rounds]["accuracy"]),
                    "seconds_per_round": (time.perf_counter() - tick) / rounds,
                }
            out["per_seed"][seed] = row
            print(f"flower seed {seed}: {json.dumps(row)}", file=sys.stderr, flush=True)

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=NODES,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False},
        },
        verbose_logging=False,
    )
    out["wall_seconds"] = time.perf_counter() - started
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 [5]")
    parser.add_argument("--rounds", type=int, default=100, help="rounds per run [100]")
    parser.add_argument("--policy", default="actor-critic", help="Accord's policy [actor-critic]")
    args = parser.parse_args()
    seeds = list(range(args.seeds))

    import flwr
    import torch

    # One torch thread in this process, as `accord simulate` and every accord process run
    # (Ray's actors run with one thread too).
    torch.set_num_threads(1)
    accord_runs = {seed: run_accord(args.policy, seed, args.rounds) for seed in seeds}
    for seed, row in accord_runs.items():
        print(f"accord seed {seed}: {json.dumps(row)}", file=sys.stderr, flush=True)
    flower = run_flower(args.policy, seeds, args.rounds)

    def accuracies(key: str) -> list[float]:
        return [float(flower["per_seed"][s][key]["test_accuracy"]) for s in seeds]

    accord_simulate = [float(accord_runs[s]["test_accuracy"]) for s in seeds]
    strategy = accuracies("accord_strategy")
    fedavg = accuracies("flower_fedavg")
    fedmedian = accuracies("flower_fedmedian")
    report = {
        "benchmark": "flower_vs_accord",
        "scenario": "digits, 10 nodes, Dirichlet 0.5, 3 label flippers, MLP 64-32-10",
        "policy": args.policy,
        "rounds": args.rounds,
        "seeds": seeds,
        "mean_test_accuracy": {
            "accord_simulate": _mean(accord_simulate),
            "flower_with_accord_strategy": _mean(strategy),
            "flower_fedavg": _mean(fedavg),
            "flower_fedmedian": _mean(fedmedian),
        },
        "difference_points_flower_accord_vs_accord_simulate": 100
        * (_mean(strategy) - _mean(accord_simulate)),
        "within_one_point": abs(_mean(strategy) - _mean(accord_simulate)) <= 0.01,
        "beats_flower_fedavg_and_fedmedian": _mean(strategy) > max(_mean(fedavg), _mean(fedmedian)),
        "per_seed_test_accuracy": {
            "accord_simulate": accord_simulate,
            "flower_with_accord_strategy": strategy,
            "flower_fedavg": fedavg,
            "flower_fedmedian": fedmedian,
        },
        "mean_weight_on_faulty": {
            "accord_simulate": _mean([accord_runs[s]["weight_on_faulty"] for s in seeds]),
            "flower_with_accord_strategy": _mean(
                [flower["per_seed"][s]["accord_strategy"]["weight_on_faulty"] for s in seeds]
            ),
        },
        "startup_seconds": {
            "flower_launch_to_first_round_done": flower["first_round_seconds"],
            "accord_launch_to_first_round_done": _mean(
                [accord_runs[s]["first_round_seconds"] for s in seeds]
            ),
            "flower_run_simulation_to_serverapp_entered": flower["serverapp_entered_seconds"],
            "accord_simulation_built": _mean([accord_runs[s]["startup_seconds"] for s in seeds]),
        },
        "seconds_per_round": {
            "accord_simulate": _mean([accord_runs[s]["seconds_per_round"] for s in seeds]),
            "flower_with_accord_strategy": _mean(
                [flower["per_seed"][s]["accord_strategy"]["seconds_per_round"] for s in seeds]
            ),
            "flower_fedavg": _mean(
                [flower["per_seed"][s]["flower_fedavg"]["seconds_per_round"] for s in seeds]
            ),
        },
        "flower_wall_seconds": flower["wall_seconds"],
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
        },
        "versions": {"flwr": flwr.__version__, "torch": torch.__version__},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
