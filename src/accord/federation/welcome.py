"""The ``Welcome`` message both ways: what the server tells a registering node about the
run (:class:`~accord.federation.grid.RunSpec`), and how the node reads it back.

A built-in run carries the model spec, feature and class counts and the local training
settings; a user app's run (``Welcome.app``) carries instead the model's layout (names,
shapes, dtypes, trained or not), which the node's own model must match, and the app's
config as a JSON object.
"""

from __future__ import annotations

import json

from accord.errors import ConfigurationError, ProtocolError
from accord.federation.grid import RunSpec
from accord.federation.proto import federation_pb2 as pb
from accord.federation.tensors import PROTOCOL_VERSION
from accord.training.local import LocalTrainingSettings
from accord.training.models import ModelSpec
from accord.training.weights import WeightEntry, WeightLayout

__all__ = ["spec_from_welcome", "welcome_message"]


def welcome_message(spec: RunSpec, node_id: str, next_round: int) -> pb.Welcome:
    """The ``Welcome`` of run ``spec`` for ``node_id``, whose next round is ``next_round``."""
    if spec.model is None:  # a user app: the node builds its model itself
        assert spec.layout is not None
        return pb.Welcome(
            protocol_version=PROTOCOL_VERSION,
            run_id=spec.run_id,
            node_id=node_id,
            dim=spec.dim,
            server_learning_rate=spec.server_learning_rate,
            federated_evaluation=spec.federated_evaluation,
            next_round=next_round,
            app=True,
            config_json=json.dumps(dict(spec.config)),
            layout=[
                pb.ArrayInfo(name=e.name, dtype=e.dtype, shape=list(e.shape), trainable=e.trainable)
                for e in spec.layout.entries
            ],
        )
    return pb.Welcome(
        protocol_version=PROTOCOL_VERSION,
        run_id=spec.run_id,
        node_id=node_id,
        model=pb.ModelSpec(kind=spec.model.kind, hidden=list(spec.model.hidden)),
        n_features=spec.n_features,
        n_classes=spec.n_classes,
        dim=spec.dim,
        local=pb.LocalTraining(
            learning_rate=spec.local.learning_rate,
            epochs=spec.local.epochs,
            batch_size=spec.local.batch_size,
            momentum=spec.local.momentum,
        ),
        server_learning_rate=spec.server_learning_rate,
        federated_evaluation=spec.federated_evaluation,
        next_round=next_round,
    )


def spec_from_welcome(welcome: pb.Welcome) -> RunSpec:
    """The run a ``Welcome`` describes; :class:`ProtocolError` when it is not usable."""
    try:
        if welcome.app:
            config = json.loads(welcome.config_json or "{}")
            if not isinstance(config, dict):
                raise ConfigurationError("config_json: expected a JSON object")
            layout = WeightLayout(
                tuple(
                    WeightEntry(a.name, tuple(int(n) for n in a.shape), a.dtype, a.trainable)
                    for a in welcome.layout
                )
            )
            return RunSpec(
                run_id=welcome.run_id,
                model=None,
                n_features=0,
                n_classes=0,
                dim=int(welcome.dim),
                local=LocalTrainingSettings(),
                server_learning_rate=float(welcome.server_learning_rate),
                federated_evaluation=bool(welcome.federated_evaluation),
                layout=layout,
                config=config,
            )
        return RunSpec(
            run_id=welcome.run_id,
            model=ModelSpec(kind=welcome.model.kind, hidden=tuple(welcome.model.hidden)),
            n_features=int(welcome.n_features),
            n_classes=int(welcome.n_classes),
            dim=int(welcome.dim),
            local=LocalTrainingSettings(
                learning_rate=welcome.local.learning_rate,
                epochs=int(welcome.local.epochs),
                batch_size=int(welcome.local.batch_size),
                momentum=welcome.local.momentum,
            ),
            server_learning_rate=float(welcome.server_learning_rate),
            federated_evaluation=bool(welcome.federated_evaluation),
        )
    except (ConfigurationError, ValueError, TypeError) as error:
        raise ProtocolError(f"the server's Welcome is not usable: {error}") from error
