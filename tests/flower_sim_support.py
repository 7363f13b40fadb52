"""Run in a child process by test_flower_runtime.py: one Flower simulation (Ray) whose
ServerApp runs Accord's strategy with ``fedavg``, Flower's own ``FedAvg`` and Accord's
``actor-critic`` one after the other on the same scenario nodes, and writes what the test
compares to ``OUT.npz``. A child process keeps Ray's processes and global state out of the
test process.

Usage: python tests/flower_sim_support.py OUT.npz NODES ROUNDS SEED
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

os.environ.update(
    FLWR_TELEMETRY_ENABLED="0",
    FLWR_DISABLE_UPDATE_CHECK="1",
    RAY_USAGE_STATS_ENABLED="0",
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
)

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from accord.flower import (
    AccordStrategy,
    HeldOutData,
    ScenarioClientSettings,
    StrategySettings,
    arrays_to_weights,
    make_evaluate_fn,
    scenario_client_app,
)
from accord.scenario import ScenarioSettings, build_scenario
from accord.training.models import build_model
from accord.training.weights import WeightLayout as Layout


def main(out: str, nodes: int, rounds: int, seed: int) -> None:
    settings = ScenarioClientSettings(scenario=ScenarioSettings(nodes=nodes, seed=seed))
    data = build_scenario(settings.scenario)

    def model() -> Any:
        return build_model(settings.model, data.n_features, data.n_classes, seed)

    layout = Layout.of_module(model())
    validation = HeldOutData(data.holdout.validation.features, data.holdout.validation.labels)
    test = HeldOutData(data.holdout.test.features, data.holdout.test.labels)
    results: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def run(grid: Grid, context: Context) -> None:
        fedavg = AccordStrategy(
            model, StrategySettings(policy="fedavg", min_nodes=nodes), validation=validation
        )
        initial = fedavg.initial_arrays()
        result = fedavg.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
        results["accord_weights"] = layout.flatten(arrays_to_weights(result.arrays))
        results["accord_validation_loss"] = [r.validation_loss_after for r in fedavg.records]
        results["accord_probabilities"] = [
            [r.probabilities[n] for n in sorted(r.probabilities)] for r in fedavg.records
        ]
        flower = FedAvg(min_train_nodes=nodes, min_available_nodes=nodes, fraction_evaluate=0.0)
        result = flower.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=rounds,
            evaluate_fn=make_evaluate_fn(model, test),
        )
        results["flower_weights"] = layout.flatten(arrays_to_weights(result.arrays))
        results["flower_test_accuracy"] = result.evaluate_metrics_serverapp[rounds]["accuracy"]
        actor_critic = AccordStrategy(
            model,
            StrategySettings(policy="actor-critic", min_nodes=nodes),
            validation=validation,
            test=test,
        )
        actor_critic.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
        records = actor_critic.records
        results["actor_critic_validation_loss"] = [r.validation_loss_after for r in records]
        results["actor_critic_probability_sums"] = [sum(r.probabilities.values()) for r in records]

    run_simulation(
        server_app=server,
        client_app=scenario_client_app(settings),
        num_supernodes=nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    np.savez(out, **{key: np.asarray(value) for key, value in results.items()})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
