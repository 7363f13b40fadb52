"""Weighting policies and the arithmetic of a round. Pure: no files, no network.

torch-backed policies (the Actor-Critic) are imported lazily through
:func:`accord.aggregation.registry.make_policy` or :mod:`accord.aggregation.actor_critic`.
"""

from __future__ import annotations

from accord.aggregation.base import (
    Aggregation,
    Aggregator,
    RoundFeedback,
    RoundInput,
    ServerUpdateFn,
    ValidationFn,
    ValidationScores,
)
from accord.aggregation.baselines import CoordinateMedian, FedAvg, Krum, TrimmedMean
from accord.aggregation.combine import data_size_probabilities, second_gradient
from accord.aggregation.fltrust import FLTrust, FLTrustSettings
from accord.aggregation.hedge import HedgeLoo, HedgeLooSettings
from accord.aggregation.registry import POLICIES, make_policy
from accord.aggregation.zeno import Zeno, ZenoSettings

__all__ = [
    "POLICIES",
    "Aggregation",
    "Aggregator",
    "CoordinateMedian",
    "FLTrust",
    "FLTrustSettings",
    "FedAvg",
    "HedgeLoo",
    "HedgeLooSettings",
    "Krum",
    "RoundFeedback",
    "RoundInput",
    "ServerUpdateFn",
    "TrimmedMean",
    "ValidationFn",
    "ValidationScores",
    "Zeno",
    "ZenoSettings",
    "data_size_probabilities",
    "make_policy",
    "second_gradient",
]
