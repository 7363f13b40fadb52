"""Policies by name, as the CLI, the benchmarks and the server choose them."""

from __future__ import annotations

import dataclasses

from accord._validation import require_choice
from accord.aggregation.base import Aggregator
from accord.aggregation.baselines import (
    CoordinateMedian,
    FedAvg,
    Krum,
    KrumSettings,
    TrimmedMean,
    TrimmedMeanSettings,
)
from accord.aggregation.fltrust import FLTrust, FLTrustSettings
from accord.aggregation.hedge import HedgeLoo, HedgeLooSettings
from accord.aggregation.zeno import Zeno, ZenoSettings

__all__ = ["POLICIES", "make_policy"]

#: Every policy name; ``actor-critic`` is the ``rich`` mode, ``actor-critic-frozen`` its
#: no-learning control.
POLICIES = (
    "actor-critic",
    "actor-critic-frozen",
    "actor-critic-patent",
    "fedavg",
    "fltrust",
    "hedge-loo",
    "krum",
    "median",
    "trimmed-mean",
    "zeno",
)


def make_policy(
    name: str,
    *,
    seed: int = 0,
    server_learning_rate: float = 1.0,
    actor_critic: object | None = None,
    hedge: HedgeLooSettings | None = None,
    krum: KrumSettings | None = None,
    trimmed_mean: TrimmedMeanSettings | None = None,
    fltrust: FLTrustSettings | None = None,
    zeno: ZenoSettings | None = None,
) -> Aggregator:
    """A fresh policy. ``actor_critic`` is an :class:`ActorCriticSettings` whose ``mode``,
    ``learning``, ``seed`` and ``server_learning_rate`` the name and arguments override."""
    require_choice("policy", name, POLICIES)
    if name == "fedavg":
        return FedAvg()
    if name == "median":
        return CoordinateMedian()
    if name == "trimmed-mean":
        return TrimmedMean(trimmed_mean)
    if name == "krum":
        return Krum(krum)
    if name == "fltrust":
        return FLTrust(fltrust)
    if name == "zeno":
        base_zeno = zeno or ZenoSettings()
        return Zeno(dataclasses.replace(base_zeno, server_learning_rate=server_learning_rate))
    if name == "hedge-loo":
        base = hedge or HedgeLooSettings()
        return HedgeLoo(dataclasses.replace(base, server_learning_rate=server_learning_rate))
    # Imported here: torch loads only for the policies that need it.
    from accord.aggregation.actor_critic import ActorCriticSettings, make_actor_critic

    settings = (
        actor_critic if isinstance(actor_critic, ActorCriticSettings) else (ActorCriticSettings())
    )
    settings = dataclasses.replace(
        settings,
        mode="patent" if name == "actor-critic-patent" else "rich",
        learning=settings.learning and name != "actor-critic-frozen",
        seed=seed,
        server_learning_rate=server_learning_rate,
    )
    policy = make_actor_critic(settings)
    policy.name = name
    return policy
