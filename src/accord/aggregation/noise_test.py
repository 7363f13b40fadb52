"""Which updates carry nothing that the other updates share: a χ² test of each update's
length in the span of the others.

Late in training a leave-one-out credit cannot tell a node that sends noise from one that
damps an overshooting step: leaving either out lengthens the honest part of the step, so
both look useful. Their direction tells them apart. For an update ``g`` drawn isotropically
and independently of the others, the share of its squared length that lies in the span of
the other updates (rank ``r``), times the dimension ``d``, is ``d · Beta(r/2, (d − r)/2)``:
about χ²_r. An honest update shares the task with the others, agreeing or (non-IID, late)
opposing, and puts far more of itself in their span. Pure numpy and :mod:`math`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from accord.aggregation.combine import gram_norms

__all__ = [
    "GRAM_BUDGET",
    "MAX_TEST_COORDINATES",
    "MIN_SPAN_SHARE",
    "chi_square_quantile",
    "coordinate_step",
    "has_power",
    "noise_like_rows",
    "noise_like_rows_of_gram",
    "span_statistics",
    "span_statistics_of_gram",
]

#: Above this many parameters the test reads every k-th coordinate only (an isotropic
#: update restricted to fixed coordinates is still isotropic there, so the null is exact):
#: the Gram matrix of 100 updates then costs 100² × 16,384 products, not 100² × d.
MAX_TEST_COORDINATES = 16_384

#: A row is tested only where an update keeping this share of its squared length in the
#: others' span would pass: below that the test has no power (a logistic model of a few
#: dozen parameters, say) and would flag honest nodes, so it stays out of the way.
MIN_SPAN_SHARE = 0.1

#: The most products the Gram matrix may cost (N² × coordinates read): with many nodes the
#: test reads fewer coordinates, and where that leaves it without power it stands aside
#: (about 250 nodes and more at p = 0.05), so its time stays under ~0.1 s a round.
GRAM_BUDGET = 1 << 28

#: A ridge of this fraction of the rows' count on the Gram matrix's diagonal, so that
#: collinear updates (duplicates, or nearly parallel ones early in training) still give
#: every row's share in the span of the others from one inverse.
RIDGE = 1e-9


def chi_square_survival(x: float, dof: int) -> float:
    """``P(χ²_dof > x)`` for a positive integer ``dof``, in closed form, each term summed in
    log space (the terms reach e^(x/2) before the factor e^(−x/2) brings them back)."""
    if dof < 1:
        raise ValueError(f"dof must be a positive integer, got {dof}")
    if x <= 0:
        return 1.0
    if not math.isfinite(x):
        return 0.0
    half = x / 2.0
    log_half = math.log(half)
    if dof % 2 == 0:
        # e^(−x/2) Σ_{m=0}^{dof/2−1} (x/2)^m / m!
        total = sum(math.exp(m * log_half - math.lgamma(m + 1) - half) for m in range(dof // 2))
        return min(1.0, total)
    # Odd: erfc(√(x/2)) + e^(−x/2) Σ_{j=1}^{(dof−1)/2} (x/2)^(j − 1/2) / Γ(j + 1/2).
    total = math.erfc(math.sqrt(half))
    total += sum(
        math.exp((j - 0.5) * log_half - math.lgamma(j + 0.5) - half)
        for j in range(1, (dof - 1) // 2 + 1)
    )
    return min(1.0, total)


@lru_cache(maxsize=256)
def chi_square_quantile(dof: int, p: float) -> float:
    """The ``x`` with ``P(χ²_dof > x) = p`` (bisection to a relative 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    low, high = 0.0, float(dof)
    # The quantile is below dof + 40·√(2·dof) + 100 for any p the policy meets (1e-300).
    for _ in range(64):
        if chi_square_survival(high, dof) <= p:
            break
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if chi_square_survival(middle, dof) > p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-10 * high:
            break
    return high


def coordinate_step(rows: int, dim: int) -> int:
    """Every how many coordinates the test reads, for ``rows`` updates of ``dim``: at most
    :data:`MAX_TEST_COORDINATES`, and at most :data:`GRAM_BUDGET` / rows² of them."""
    most = max(1, min(MAX_TEST_COORDINATES, GRAM_BUDGET // max(rows * rows, 1)))
    return max(1, -(-dim // most))


def has_power(rows: int, read: int, p: float) -> bool:
    """Whether an update keeping :data:`MIN_SPAN_SHARE` of its squared length in the span of
    the other ``rows − 1`` would pass the test at ``p`` on ``read`` coordinates."""
    return rows >= 2 and chi_square_quantile(rows - 1, p) <= MIN_SPAN_SHARE * read


def span_statistics(
    first_gradients: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], int]:
    """Per row: ``d′ · ‖P ĝᵢ‖²``, the squared length of the unit update in the span of the
    other non-zero finite rows times the coordinates read (``d′``), and the dimension of
    that span (the count of those other rows). Zero and non-finite rows get 0 and rank 0.
    Returns (statistics, ranks, d′)."""
    n, dim = first_gradients.shape
    step = coordinate_step(n, dim)
    # In float64, where no square of a float32 overflows, whatever the updates' scale.
    rows = np.asarray(first_gradients[:, ::step], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        gram = rows @ rows.T
    return span_statistics_of_gram(gram, rows.shape[1])


def span_statistics_of_gram(
    gram: npt.NDArray[np.float64], read: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], int]:
    """:func:`span_statistics` from the rows' Gram matrix over the ``read`` coordinates
    (a caller that has it already saves the pass over the rows).

    Regressing unit row i on the others leaves ``1/(K⁻¹)ᵢᵢ`` of it, so one inverse of the
    unit Gram matrix ``K`` gives every row's share in the span of the others. A small ridge
    keeps ``K`` invertible when updates are collinear; a row's share is then measured
    against a span whose dimension may be below the count of the others, which only makes
    the χ² bar higher for noise (more of it is flagged), not lower.
    """
    n = gram.shape[0]
    norms = gram_norms(gram)
    sized = np.isfinite(norms) & (norms > 0)
    statistics = np.zeros(n)
    ranks = np.zeros(n, dtype=np.int64)
    index = np.flatnonzero(sized)
    if index.size < 2:
        return statistics, ranks, read
    scale = norms[index]
    block = gram if index.size == n else gram[np.ix_(index, index)]
    unit_gram = block / np.outer(scale, scale)
    ridge = RIDGE * index.size
    inverse_diagonal = np.diag(np.linalg.inv(unit_gram + ridge * np.eye(index.size)))
    # 1/(K + δI)⁻¹ᵢᵢ = 1 + δ − kᵢᵀ(K₋ᵢ + δI)⁻¹kᵢ: the share in the span, ridge regressed.
    statistics[index] = read * np.clip(1.0 + ridge - 1.0 / inverse_diagonal, 0.0, 1.0)
    ranks[index] = index.size - 1
    return statistics, ranks, read


def noise_like_rows(first_gradients: npt.NDArray[np.float32], p: float) -> npt.NDArray[np.bool_]:
    """The rows whose span statistic is below the χ² quantile at ``p`` (they look like
    isotropic noise to the others), when most tested rows do not; otherwise none.

    ``p`` is the chance that an isotropic noise update passes as one that shares the
    others' task: a larger ``p`` lowers the bar a row must clear, so fewer honest rows
    are flagged and more noise passes. "Noise" is only meaningful against a structured
    majority: once training has converged every honest update is mostly minibatch noise,
    and then no row is singled out. A ``p`` of 0 turns the test off.
    """
    n, dim = first_gradients.shape
    if p <= 0 or not has_power(n, len(range(0, dim, coordinate_step(n, dim))), p):
        return np.zeros(n, dtype=bool)
    return _flag(*span_statistics(first_gradients), p)


def noise_like_rows_of_gram(
    gram: npt.NDArray[np.float64], read: int, p: float
) -> npt.NDArray[np.bool_]:
    """:func:`noise_like_rows` from the rows' Gram matrix over ``read`` coordinates."""
    if p <= 0 or not has_power(gram.shape[0], read, p):
        return np.zeros(gram.shape[0], dtype=bool)
    return _flag(*span_statistics_of_gram(gram, read), p)


def _flag(
    statistics: npt.NDArray[np.float64], ranks: npt.NDArray[np.int64], read: int, p: float
) -> npt.NDArray[np.bool_]:
    """The tested rows below the χ² quantile, unless they are half or more of the tested.
    Every tested row is measured against all the others, so they share one rank."""
    rank = int(ranks.max())
    if rank == 0 or not has_power(rank + 1, read, p):
        return np.zeros(ranks.shape, dtype=bool)
    tested = ranks > 0
    flagged = tested & (statistics < chi_square_quantile(rank, p))
    if 2 * int(np.sum(flagged)) >= int(np.sum(tested)):
        flagged[:] = False
    return np.asarray(flagged)
