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

import numpy as np

__all__ = ["direction_attack_scores", "norm_attack_scores"]


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
