"""Label-leakage attacks on the embedding gradients a feature party receives.

Li et al., "Label Leakage and Protection in Two-party Split Learning" (ICLR 2022). With
binary labels and a sigmoid/cross-entropy top, the gradient of example ``i``'s embedding is
``(σ(z_i) − y_i) · ∂z_i/∂h_i / B``: positives (rare, low predicted probability) get
gradients of larger norm, and positives and negatives point in opposite directions.

- **Norm attack**: score each example by its gradient's norm; a high score says positive.
- **Direction attack**: the attacker knows one positive example of the batch and scores
  every example by the cosine similarity of its gradient to that example's gradient.

Each returns one score per example; :func:`accord.vertical.metrics.binary_auc` of the scores
against the true labels measures the leakage (0.5: none, 1: every label recovered).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from accord.vertical.metrics import binary_auc

__all__ = ["AttackReport", "attack_report", "direction_attack_scores", "norm_attack_scores"]


def norm_attack_scores(gradients: np.ndarray) -> np.ndarray:
    """The L2 norm of each row of ``gradients`` (rows, d)."""
    result: np.ndarray = np.linalg.norm(np.asarray(gradients, dtype=np.float64), axis=1)
    return result


def direction_attack_scores(gradients: np.ndarray, known_positive: int) -> np.ndarray:
    """Cosine similarity of each row of ``gradients`` to row ``known_positive``."""
    rows = np.asarray(gradients, dtype=np.float64)
    if not 0 <= known_positive < rows.shape[0]:
        raise IndexError(
            f"known_positive: expected a row below {rows.shape[0]}, got {known_positive}"
        )
    norms = np.linalg.norm(rows, axis=1)
    reference = rows[known_positive]
    denominator = np.maximum(norms * norms[known_positive], 1e-30)
    result: np.ndarray = rows @ reference / denominator
    return result


@dataclass(frozen=True)
class AttackReport:
    """Mean per-batch AUC of each attack against the true labels (``None``: no batch held
    both classes), over ``batches`` batches."""

    norm_auc: float | None
    direction_auc: float | None
    batches: int


def attack_report(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> AttackReport:
    """Both attacks on each ``(gradients, true labels)`` batch, as Li et al. measure them.

    The direction attack's known positive is the batch's first positive example (the
    attacker is granted one label per batch).
    """
    norm_aucs: list[float] = []
    direction_aucs: list[float] = []
    count = 0
    for gradients, labels in batches:
        count += 1
        positives = np.flatnonzero(np.asarray(labels) > 0.5)
        if len(positives) == 0 or len(positives) == len(labels):
            continue
        norm = binary_auc(norm_attack_scores(gradients), labels)
        direction = binary_auc(direction_attack_scores(gradients, int(positives[0])), labels)
        if norm is not None and direction is not None:
            norm_aucs.append(norm)
            direction_aucs.append(direction)
    return AttackReport(
        norm_auc=float(np.mean(norm_aucs)) if norm_aucs else None,
        direction_auc=float(np.mean(direction_aucs)) if direction_aucs else None,
        batches=count,
    )
