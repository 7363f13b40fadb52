"""The arithmetic of a round, as plain functions (cf. Flower's ``strategy_utils``)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from accord.aggregation.base import FloatArray
from accord.errors import ProtocolError

__all__ = [
    "bounded_logits",
    "bounded_prior_softmax",
    "data_size_probabilities",
    "expand_to_roster",
    "leave_one_out_gradients",
    "second_gradient",
]


def data_size_probabilities(sample_counts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """FedAvg's weights ``n_i / Σ n``."""
    counts = np.asarray(sample_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or np.any(counts < 0) or counts.sum() <= 0:
        raise ProtocolError(f"sample counts must be non-negative with a positive sum: {counts}")
    return np.asarray(counts / counts.sum(), dtype=np.float64)


def second_gradient(
    probabilities: npt.NDArray[np.float64], first_gradients: FloatArray
) -> FloatArray:
    """``G = Σ_i p_i · g_i`` over the present nodes (rows of ``first_gradients``)."""
    if probabilities.shape != (first_gradients.shape[0],):
        raise ProtocolError(
            f"expected {first_gradients.shape[0]} probabilities, got shape {probabilities.shape}"
        )
    combined = probabilities.astype(np.float32) @ first_gradients
    return np.asarray(combined, dtype=np.float32)


def leave_one_out_gradients(
    probabilities: npt.NDArray[np.float64], first_gradients: FloatArray
) -> FloatArray:
    """Row i is ``G₋ᵢ``: the second gradient renormalised without node i.

    With a single node there is nothing to leave out; its row is the zero vector.
    """
    total = second_gradient(probabilities, first_gradients)
    rest = 1.0 - probabilities
    safe = np.where(rest > 1e-12, rest, 1.0)[:, None].astype(np.float32)
    without = (total[None, :] - probabilities[:, None].astype(np.float32) * first_gradients) / safe
    without[rest <= 1e-12] = 0.0
    return np.asarray(without, dtype=np.float32)


def expand_to_roster(
    present_probabilities: npt.NDArray[np.float64], present: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Place probabilities of the present nodes into a roster-length vector (zeros elsewhere)."""
    full = np.zeros(present.shape[0], dtype=np.float64)
    full[present] = present_probabilities
    return full


def bounded_logits(
    log_prior: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    bound: float,
    upper_bound: float,
) -> npt.NDArray[np.float64]:
    """``log prior + b·tanh(score / b)``, with ``b = upper_bound`` for positive scores.

    A node may fall ``bound`` nats below its data-size prior but rise only ``upper_bound``
    above it: suppressing a bad node is what the weights are for, while piling the weight
    onto a few good nodes loses the data of the others (non-IID).
    """
    up = upper_bound * np.tanh(scores / upper_bound)
    down = bound * np.tanh(scores / bound)
    return np.asarray(log_prior + np.where(scores > 0, up, down), dtype=np.float64)


def bounded_prior_softmax(
    log_prior: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    bound: float,
    upper_bound: float | None = None,
) -> npt.NDArray[np.float64]:
    """``softmax(bounded_logits(...))``: a data-size prior moved by a bounded score."""
    logits = bounded_logits(log_prior, scores, bound, bound if upper_bound is None else upper_bound)
    logits = logits - logits.max()
    weights = np.exp(logits)
    return np.asarray(weights / weights.sum(), dtype=np.float64)
