"""The aggregators users know from Flower: FedAvg, coordinate median, trimmed mean, Krum.

Robust rules do not weigh whole gradients, so their ``probabilities`` are each node's
*effective share*: the fraction of coordinates (or selections) its gradient supplied. That
keeps "probability mass on faulty nodes" comparable across every policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from accord._validation import require_int, require_number
from accord.aggregation.base import Aggregation, Aggregator, FloatArray, RoundInput
from accord.aggregation.combine import data_size_probabilities, expand_to_roster, second_gradient

__all__ = [
    "CoordinateMedian",
    "FedAvg",
    "Krum",
    "KrumSettings",
    "TrimmedMean",
    "TrimmedMeanSettings",
    "coordinate_median",
    "krum_select",
    "trimmed_mean",
]


class FedAvg(Aggregator):
    """Data-size weights ``p_i = n_i / Σ n``: the baseline policy and the test oracle."""

    name = "fedavg"

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        probabilities = data_size_probabilities(round_input.present_counts)
        return Aggregation(
            probabilities=expand_to_roster(probabilities, round_input.present),
            second_gradient=second_gradient(probabilities, round_input.first_gradients),
        )


def _shares_from_ranks(
    order: npt.NDArray[np.intp], kept_ranks: slice, n_nodes: int
) -> npt.NDArray[np.float64]:
    """Fraction of all (coordinate, kept rank) slots that each node supplied."""
    kept = order[kept_ranks]
    counts = np.bincount(kept.ravel(), minlength=n_nodes).astype(np.float64)
    return np.asarray(counts / counts.sum(), dtype=np.float64)


def coordinate_median(first_gradients: FloatArray) -> tuple[FloatArray, npt.NDArray[np.float64]]:
    """Coordinate-wise median and each node's effective share of it."""
    n = first_gradients.shape[0]
    order = np.argsort(first_gradients, axis=0, kind="stable")
    middle = slice((n - 1) // 2, n // 2 + 1)  # one rank for odd n, two for even n
    kept = np.take_along_axis(first_gradients, order[middle], axis=0)
    return kept.mean(axis=0).astype(np.float32), _shares_from_ranks(order, middle, n)


def trimmed_mean(
    first_gradients: FloatArray, trim_fraction: float
) -> tuple[FloatArray, npt.NDArray[np.float64]]:
    """Per coordinate, drop the ``⌊βn⌋`` largest and smallest values and average the rest."""
    n = first_gradients.shape[0]
    trim = min(int(np.floor(trim_fraction * n)), (n - 1) // 2)
    order = np.argsort(first_gradients, axis=0, kind="stable")
    kept_ranks = slice(trim, n - trim)
    kept = np.take_along_axis(first_gradients, order[kept_ranks], axis=0)
    return kept.mean(axis=0).astype(np.float32), _shares_from_ranks(order, kept_ranks, n)


def krum_select(first_gradients: FloatArray, assumed_faulty: int, selected: int) -> list[int]:
    """Indices of the ``selected`` gradients with the lowest Krum score (Blanchard et al. 2017).

    A score is the sum of squared distances to the ``n − f − 2`` nearest other gradients
    (at least one neighbour when there are too few nodes for the textbook bound).
    """
    n = first_gradients.shape[0]
    if n == 1:
        return [0]
    squared_norms = np.einsum("ij,ij->i", first_gradients, first_gradients).astype(np.float64)
    gram = first_gradients.astype(np.float64) @ first_gradients.T.astype(np.float64)
    distances = np.maximum(squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(distances, np.inf)
    neighbours = int(np.clip(n - assumed_faulty - 2, 1, n - 1))
    scores = np.sort(distances, axis=1)[:, :neighbours].sum(axis=1)
    return [int(i) for i in np.argsort(scores, kind="stable")[: min(selected, n)]]


class CoordinateMedian(Aggregator):
    """Coordinate-wise median (Yin et al. 2018)."""

    name = "median"

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        combined, shares = coordinate_median(round_input.first_gradients)
        return Aggregation(expand_to_roster(shares, round_input.present), combined)


@dataclass(frozen=True)
class TrimmedMeanSettings:
    """``trim_fraction``: share of values cut from each end per coordinate (default 0.2)."""

    trim_fraction: float = 0.2

    def __post_init__(self) -> None:
        require_number("trim_fraction", self.trim_fraction, minimum=0.0, maximum=0.49)


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean."""

    name = "trimmed-mean"

    def __init__(self, settings: TrimmedMeanSettings | None = None) -> None:
        self.settings = settings or TrimmedMeanSettings()

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        combined, shares = trimmed_mean(round_input.first_gradients, self.settings.trim_fraction)
        return Aggregation(expand_to_roster(shares, round_input.present), combined)


@dataclass(frozen=True)
class KrumSettings:
    """``assumed_faulty``: f in the Krum score (default 3); ``selected``: m of multi-Krum
    (default 1, classic Krum)."""

    assumed_faulty: int = 3
    selected: int = 1

    def __post_init__(self) -> None:
        require_int("assumed_faulty", self.assumed_faulty, minimum=0)
        require_int("selected", self.selected, minimum=1)


class Krum(Aggregator):
    """(Multi-)Krum: average the ``m`` gradients closest to their neighbours."""

    name = "krum"

    def __init__(self, settings: KrumSettings | None = None) -> None:
        self.settings = settings or KrumSettings()

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        chosen = krum_select(
            round_input.first_gradients, self.settings.assumed_faulty, self.settings.selected
        )
        probabilities = np.zeros(round_input.first_gradients.shape[0], dtype=np.float64)
        probabilities[chosen] = 1.0 / len(chosen)
        return Aggregation(
            probabilities=expand_to_roster(probabilities, round_input.present),
            second_gradient=second_gradient(probabilities, round_input.first_gradients),
        )
