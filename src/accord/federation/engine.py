"""The server's side of a run before any network: its data, the model and the engine.

Built exactly as :class:`accord.simulation.Simulation` builds them (same model seed, same
policy seed, same validation and test functions), so the same settings give the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from accord.aggregation.actor_critic import ActorCriticSettings
from accord.aggregation.base import Aggregator
from accord.aggregation.hedge import HedgeLooSettings
from accord.aggregation.registry import make_policy
from accord.errors import AccordError, ConfigurationError, InputDataError
from accord.federation.driver import EngineFactory
from accord.federation.fingerprint import Fingerprint, scenario_summary
from accord.federation.grid import RunSpec
from accord.federation.settings import ServerSettings
from accord.fl.contracts import ServerApp
from accord.rounds import RoundEngine, RoundSettings
from accord.scenario import ScenarioData, build_scenario, node_seed
from accord.training.evaluation import make_validation_fn, make_validation_gradient_fn
from accord.training.local import LocalTrainingSettings, root_update
from accord.training.models import FlatModel, build_model
from accord.training.weights import Weights

__all__ = ["ServerData", "load_server_data", "prepare_app_run", "prepare_run"]

Split = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


@dataclass(frozen=True)
class ServerData:
    """The server's held-out data: validation (for the reward) and test (for reporting)."""

    n_features: int
    n_classes: int
    validation: Split
    test: Split | None
    faulty_nodes: tuple[str, ...] = ()


def load_server_data(settings: ServerSettings, scenario: ScenarioData | None = None) -> ServerData:
    """The scenario's held-out sets, or the files named in ``settings``."""
    if settings.validation_data is None:
        data = scenario or build_scenario(settings.run.scenario)
        holdout = data.holdout
        return ServerData(
            n_features=data.n_features,
            n_classes=data.n_classes,
            validation=(holdout.validation.features, holdout.validation.labels),
            test=(holdout.test.features, holdout.test.labels),
            faulty_nodes=data.faulty_nodes,
        )
    from accord.federation.node_data import load_table

    validation = load_table(Path(settings.validation_data), settings.label_column)
    test = (
        None
        if settings.test_data is None
        else load_table(Path(settings.test_data), settings.label_column)
    )
    if test is not None and test.feature_names != validation.feature_names:
        raise InputDataError(
            f"{settings.test_data}: columns {list(test.feature_names)} differ from the "
            f"validation file's {list(validation.feature_names)}"
        )
    labels = [validation.labels] + ([] if test is None else [test.labels])
    # A seeded shuffle, as the built-in scenarios' validation split has: FLTrust's root
    # dataset is the first rows, and a file sorted by label would give it one class.
    order = np.random.default_rng([settings.run.scenario.seed, 7937]).permutation(
        validation.labels.shape[0]
    )
    return ServerData(
        n_features=validation.features.shape[1],
        n_classes=int(max(int(part.max()) for part in labels)) + 1,
        validation=(validation.features[order], validation.labels[order]),
        test=None if test is None else (test.features, test.labels),
    )


def prepare_run(
    settings: ServerSettings, data: ServerData, run_id: str, device: str = "cpu"
) -> tuple[RunSpec, EngineFactory]:
    """The ``Welcome`` every node receives, and the engine factory of the run (its
    validation and test scoring on ``device``)."""
    run = settings.run
    seed = run.scenario.seed
    model = build_model(run.model, data.n_features, data.n_classes, seed).to(device)
    flat = FlatModel(model)
    initial_weights = flat.get_flat()
    parameters = [
        (name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        for name, tensor in model.named_parameters()
    ]
    scenario = run.scenario if settings.validation_data is None else None
    spec = RunSpec(
        run_id=run_id,
        model=run.model,
        n_features=data.n_features,
        n_classes=data.n_classes,
        dim=flat.dim,
        local=run.local,
        server_learning_rate=run.rounds.server_learning_rate,
        federated_evaluation=settings.federation.evaluation == "federated",
        fingerprint=Fingerprint.of(scenario=scenario, model=parameters),
        scenario_summary="" if scenario is None else scenario_summary(scenario),
    )

    def factory(roster: tuple[str, ...], counts: Mapping[str, float]) -> RoundEngine:
        policy = make_policy(
            settings.policy,
            seed=seed,
            server_learning_rate=run.rounds.server_learning_rate,
            actor_critic=run.actor_critic,
            hedge=run.hedge,
        )
        server_update = None
        if policy.root_samples > 0:
            server_update = root_update(
                build_model(run.model, data.n_features, data.n_classes, seed),
                *data.validation,
                run.local,
                node_seed(seed, -1),
                policy.root_samples,
            )
        return RoundEngine(
            roster=roster,
            sample_counts=counts,
            initial_weights=initial_weights,
            aggregator=policy,
            validate=make_validation_fn(flat, data.validation[0], data.validation[1]),
            test=None if data.test is None else make_validation_fn(flat, *data.test),
            settings=run.rounds,
            server_update=server_update,
            validation_gradient=make_validation_gradient_fn(flat, *data.validation),
        )

    return spec, factory


def prepare_app_run(
    app: ServerApp,
    policy: str | Callable[[], Aggregator],
    run_id: str,
    *,
    seed: int = 0,
    rounds: RoundSettings | None = None,
    actor_critic: ActorCriticSettings | None = None,
    hedge: HedgeLooSettings | None = None,
    config: Mapping[str, Any] | None = None,
    federated_evaluation: bool = False,
) -> tuple[RunSpec, EngineFactory]:
    """The ``Welcome`` and engine factory of a run of a user's :class:`~accord.fl.ServerApp`.

    ``policy`` is a policy name (``accord.aggregation.registry``) or a factory of a policy
    object; ``config`` goes to every node's app factory and ``fit``/``evaluate`` calls."""
    round_settings = rounds or RoundSettings()
    layout = app.layout()
    initial = app.initial_weights()
    try:
        layout.check(initial, "the app's initial weights")
    except AccordError as error:
        raise ConfigurationError(str(error)) from error
    flat = layout.flatten(initial)
    buffers: Weights = layout.buffers_of(initial)
    spec = RunSpec(
        run_id=run_id,
        model=None,
        n_features=0,
        n_classes=0,
        dim=layout.dim,
        local=LocalTrainingSettings(),
        server_learning_rate=round_settings.server_learning_rate,
        federated_evaluation=federated_evaluation,
        fingerprint=Fingerprint.of(model=[(e.name, e.shape, e.dtype) for e in layout.entries]),
        layout=layout,
        config=dict(config or {}),
    )

    def factory(roster: tuple[str, ...], counts: Mapping[str, float]) -> RoundEngine:
        aggregator = (
            make_policy(
                policy,
                seed=seed,
                server_learning_rate=round_settings.server_learning_rate,
                actor_critic=actor_critic or ActorCriticSettings(),
                hedge=hedge or HedgeLooSettings(),
            )
            if isinstance(policy, str)
            else policy()
        )
        validate = app.validation()
        return RoundEngine(
            roster=roster,
            sample_counts=counts,
            initial_weights=flat,
            aggregator=aggregator,
            validate=validate,
            test=app.test(),
            validation_gradient=getattr(validate, "gradient", None),
            settings=round_settings,
            layout=layout,
            initial_buffers=buffers,
        )

    return spec, factory
