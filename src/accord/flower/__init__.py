"""Accord's policies inside Flower (the optional extra: ``pip install 'accord[flower]'``).

- :class:`AccordStrategy`: a Flower 1.42 ``Strategy`` (``flwr.serverapp``) that applies any
  Accord policy, the Actor-Critic and Hedge-LOO included, to the nodes' replies, through the
  same :class:`accord.rounds.RoundEngine` as ``accord simulate``, with a server-side
  validation set (:class:`HeldOutData`). Settings: :class:`StrategySettings`.
- :func:`node_client_app`: a ``ClientApp`` around any :class:`accord.fl.Node` (your model
  and data behind ``fit``/``evaluate``); :func:`scenario_client_app`: one whose nodes are an
  Accord scenario's nodes (:class:`ScenarioClientSettings`), e.g. digits with
  label-flipping nodes, exactly as ``accord simulate`` builds them.
- :func:`make_evaluate_fn`: server-side evaluation for any Flower strategy.

Only this package imports ``flwr``; the rest of Accord runs without it. See
``docs/flower.md``.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    from accord.errors import ConfigurationError

    raise ConfigurationError(
        "accord.flower needs Flower 1.42: pip install 'accord[flower]'"
    ) from error

from accord.flower.client import (
    NodeFactory,
    ScenarioClientSettings,
    node_client_app,
    scenario_client_app,
)
from accord.flower.records import (
    HeldOutData,
    ModelSource,
    arrays_to_weights,
    make_evaluate_fn,
    weights_to_arrays,
)
from accord.flower.strategy import AccordStrategy, StrategySettings

__all__ = [
    "AccordStrategy",
    "HeldOutData",
    "ModelSource",
    "NodeFactory",
    "ScenarioClientSettings",
    "StrategySettings",
    "arrays_to_weights",
    "make_evaluate_fn",
    "node_client_app",
    "scenario_client_app",
    "weights_to_arrays",
]
