"""The ServerApp: Accord's strategy (the Actor-Critic by default) on the server's validation
split of the scenario, the test split scored after every round."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from accord.flower import AccordStrategy, HeldOutData, ScenarioClientSettings, StrategySettings
from accord.scenario import build_scenario
from accord.training.models import build_model

app = ServerApp()
logger = logging.getLogger(__name__)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    settings = ScenarioClientSettings.from_run_config(config)
    data = build_scenario(settings.scenario)
    seed = settings.scenario.seed

    def model():  # the nodes build the same model from the same seed
        return build_model(settings.model, data.n_features, data.n_classes, seed)

    holdout = data.holdout
    strategy = AccordStrategy(
        model,
        StrategySettings(
            policy=str(config.get("policy", "actor-critic")),
            seed=seed,
            min_nodes=settings.scenario.nodes,
        ),
        validation=HeldOutData(holdout.validation.features, holdout.validation.labels),
        test=HeldOutData(holdout.test.features, holdout.test.labels),
    )
    strategy.start(
        grid=grid,
        initial_arrays=strategy.initial_arrays(),
        num_rounds=int(config["num-server-rounds"]),
    )
    last = strategy.records[-1]
    faulty = set(data.faulty_nodes)
    on_faulty = sum(p for node, p in last.probabilities.items() if node in faulty)
    print(
        f"accord-flower-app: policy {strategy.policy.name}, {len(strategy.records)} rounds, "
        f"test accuracy {last.test_accuracy:.4f}, weight on the faulty nodes "
        f"{sorted(faulty)}: {on_faulty:.4f}",
        flush=True,
    )
