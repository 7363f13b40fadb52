"""The server's side of a run before any network: its data, the model and the engine.

Built exactly as :class:`accord.simulation.Simulation` builds them (same model seed, same
policy seed, same validation and test functions), so the same settings give the same run.
"""

from __future__ import annotations

import json
import logging
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
from accord.data.standardise import FeatureMoments, Standardisation, warn_if_far_from_unit_scale
from accord.errors import AccordError, ConfigurationError, InputDataError
from accord.federation.driver import EngineFactory, StandardisationFit
from accord.federation.fingerprint import Fingerprint, scenario_summary
from accord.federation.grid import NodeInfo, RunSpec
from accord.federation.settings import ServerSettings
from accord.fl.contracts import ServerApp
from accord.rounds import RoundEngine, RoundSettings
from accord.scenario import ScenarioData, build_scenario, node_seed
from accord.training.evaluation import make_validation_fn, make_validation_gradient_fn
from accord.training.local import LocalTrainingSettings, root_update
from accord.training.models import FlatModel, build_model
from accord.training.weights import Weights

__all__ = [
    "ServerData",
    "load_given_standardisation",
    "load_server_data",
    "prepare_app_run",
    "prepare_run",
    "standardisation_fit",
]

logger = logging.getLogger(__name__)

Split = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


@dataclass(frozen=True)
class ServerData:
    """The server's held-out data: validation (for the reward) and test (for reporting)."""

    n_features: int
    n_classes: int
    validation: Split
    test: Split | None
    faulty_nodes: tuple[str, ...] = ()
    #: The feature columns of the server's files (``None`` for a built-in scenario).
    feature_names: tuple[str, ...] | None = None


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
        feature_names=validation.feature_names,
    )


def load_given_standardisation(
    settings: ServerSettings, feature_names: tuple[str, ...] | None
) -> Standardisation | None:
    """The transform ``settings.standardise_from`` names: a saved transform (``.json``, as
    ``model.json``'s ``standardisation`` or ``accord``'s transform files) or a CSV/Parquet
    file whose feature columns it is fitted on (its label column, if any, is left out)."""
    if settings.standardise_from is None:
        return None
    path = Path(settings.standardise_from)
    if path.name.lower().endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise InputDataError(f"{path}: no such file") from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputDataError(f"{path}: not a JSON file ({error})") from error
        if isinstance(data, dict) and isinstance(data.get("standardisation"), dict):
            data = data["standardisation"]  # a run folder's model.json
        try:
            transform = Standardisation.from_json(data)
        except InputDataError as error:
            raise InputDataError(f"{path}: {error}") from error
    else:
        from accord.federation.node_data import load_features

        table = load_features(path, settings.label_column, feature_names=feature_names)
        transform = Standardisation.fit(table.features, table.feature_names)
    if feature_names is not None:
        transform.check_features(feature_names, str(path))
    return transform


def standardisation_fit(settings: ServerSettings, data: ServerData) -> StandardisationFit:
    """How the run's standardisation is decided once the roster is fixed: the transform
    given with ``standardise_from`` (loaded now, so a bad file fails before any node
    registers), else the combined feature moments of the roster's nodes that sent theirs
    (``accord node --data`` does by default), else none."""
    given = load_given_standardisation(settings, data.feature_names)

    def fit(registrations: Mapping[str, NodeInfo]) -> Standardisation | None:
        sent = {node: info.feature_moments for node, info in registrations.items()}
        with_moments = [moments for moments in sent.values() if moments is not None]
        if given is not None:
            logger.info("standardising with the transform from %s", settings.standardise_from)
            return given
        if not with_moments:
            if data.feature_names is not None:  # a scenario's data is already scaled
                warn_if_far_from_unit_scale(
                    data.validation[0],
                    data.feature_names,
                    "the server's validation data",
                    "no node sent feature moments: start the nodes with the default "
                    "--standardise global, or give the server --standardise-from",
                )
            return None
        silent = sorted(node for node, moments in sent.items() if moments is None)
        if silent:
            logger.warning(
                "nodes %s sent no feature moments (started with --standardise own or off): "
                "the run's standardisation comes from the other %d nodes, and these nodes "
                "train on differently scaled data",
                ", ".join(silent),
                len(with_moments),
            )
        pooled = FeatureMoments.combine(with_moments)
        transform = Standardisation.from_moments(pooled, data.feature_names)
        logger.info(
            "standardising with the global statistics of %d nodes (%d samples)",
            len(with_moments),
            pooled.count,
        )
        return transform

    return fit


def feature_summary(names: tuple[str, ...] | None, shown: int = 6) -> str:
    """The first few column names and their count, for a refusal."""
    if names is None:
        return ""
    head = ", ".join(names[:shown])
    return f"{head}{', ...' if len(names) > shown else ''} ({len(names)} columns)"


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
        fingerprint=Fingerprint.of(
            scenario=scenario, model=parameters, features=data.feature_names
        ),
        scenario_summary="" if scenario is None else scenario_summary(scenario),
        feature_summary=feature_summary(data.feature_names),
    )

    def factory(
        roster: tuple[str, ...],
        counts: Mapping[str, float],
        standardisation: Standardisation | None = None,
    ) -> RoundEngine:
        validation, test = data.validation, data.test
        if standardisation is not None:
            validation = (standardisation.apply(validation[0]), validation[1])
            if test is not None:
                test = (standardisation.apply(test[0]), test[1])
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
                *validation,
                run.local,
                node_seed(seed, -1),
                policy.root_samples,
            )
        return RoundEngine(
            roster=roster,
            sample_counts=counts,
            initial_weights=initial_weights,
            aggregator=policy,
            validate=make_validation_fn(flat, validation[0], validation[1]),
            test=None if test is None else make_validation_fn(flat, *test),
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
    _check_buffers_travel(buffers)
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

    def factory(
        roster: tuple[str, ...],
        counts: Mapping[str, float],
        standardisation: Standardisation | None = None,
    ) -> RoundEngine:
        del standardisation  # a user app scales its own data (no node sends moments)
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


#: The most bytes a model's buffers may have together: they travel whole, with the last
#: chunk of the weights, inside gRPC's 4 MiB message limit.
MAX_BUFFER_TOTAL = 2 << 20


def _check_buffers_travel(buffers: Weights) -> None:
    """Refuse, before any node registers, buffers the protocol cannot carry: a dtype it has
    no code for, or more than :data:`MAX_BUFFER_TOTAL` bytes in all."""
    from accord.federation.tensors import wire_dtype_problem

    total = 0
    for name, array in buffers.items():
        problem = wire_dtype_problem(np.asarray(array))
        if problem is not None:
            raise ConfigurationError(f"the app's model: buffer {name}: {problem}")
        total += int(np.asarray(array).nbytes)
    if total > MAX_BUFFER_TOTAL:
        raise ConfigurationError(
            f"the app's model has {total / 2**20:.1f} MiB of buffers; at most "
            f"{MAX_BUFFER_TOTAL / 2**20:.0f} MiB travel with the weights (make large constant "
            "tensors non-persistent: register_buffer(..., persistent=False))"
        )
