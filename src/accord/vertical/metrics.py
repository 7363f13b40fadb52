"""Binary-classification metrics in plain numpy (no scikit-learn import on the hot path)."""

from __future__ import annotations

import numpy as np

__all__ = ["binary_auc", "log_loss", "probability_log_loss", "sigmoid"]


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half).

    The Mann-Whitney statistic over average ranks; ``None`` when only one class is present.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(labels).ravel() > 0.5
    positives = int(positive.sum())
    negatives = positive.size - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average rank (1-based) over each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against 0/1 ``labels``."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    # log(1 + e^z) - y z, computed without overflow.
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^-z)`` in float64, without overflow."""
    z = np.asarray(logits, dtype=np.float64)
    result: np.ndarray = np.exp(-np.logaddexp(0.0, -z))
    return result


def probability_log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of ``probabilities`` (clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), 1e-7, 1.0 - 1e-7)
    y = np.asarray(labels, dtype=np.float64).ravel()
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))
