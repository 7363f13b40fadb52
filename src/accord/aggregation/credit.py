"""Per-node evidence shared by Hedge-LOO and the ``rich`` Actor-Critic.

Both ask the server's validation set two questions each round, as two batched passes:

1. *Alone*: how does the validation loss change when node i's first gradient is applied
   alone (``w − η g_i``)? Expressed as a robust z-score across nodes (the feature that
   mattered most on the prototype).
2. *Leave-one-out credit*: how much worse is ``w − η G₋ᵢ`` than ``w − η G``, with
   ``G₋ᵢ`` the second gradient renormalised without node i? ``B − B₋ᵢ`` with ``B`` the
   negative validation loss. Positive credit means node i helped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from accord.aggregation.base import FloatArray, ValidationFn
from accord.aggregation.combine import leave_one_out_gradients, second_gradient

__all__ = [
    "LeaveOneOut",
    "NodeFeatures",
    "leave_one_out_credit",
    "node_features",
    "robust_z",
]

FEATURE_NAMES = (
    "alone_loss_z",
    "cosine_previous",
    "log_norm_ratio",
    "previous_share",
    "running_credit",
)


def robust_z(values: npt.NDArray[np.float64], clip: float = 5.0) -> npt.NDArray[np.float64]:
    """``(v − median) / (1.4826 · MAD)``, clipped; zeros when every value is the same.
    A non-finite value (a loss change that overflowed) scores ``+clip``, the worst; the
    others are scored among themselves."""
    finite = np.isfinite(values)
    if not finite.all():
        scores = np.full(values.shape, clip, dtype=np.float64)
        if finite.any():
            scores[finite] = robust_z(values[finite], clip)
        return scores
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    floor = 1e-3 * max(abs(median), float(np.abs(values).mean()), 1e-9)
    scaled = (values - median) / max(spread, floor)
    return np.asarray(np.clip(scaled, -clip, clip), dtype=np.float64)


@dataclass(frozen=True)
class NodeFeatures:
    """``values``: (n_present, 5) features in :data:`FEATURE_NAMES` order; ``loss_now``:
    validation loss of ``w_t``."""

    values: npt.NDArray[np.float64]
    loss_now: float


def node_features(
    validate: ValidationFn,
    weights: FloatArray,
    first_gradients: FloatArray,
    server_learning_rate: float,
    previous_second_gradient: FloatArray | None,
    previous_shares: npt.NDArray[np.float64],
    running_credit: npt.NDArray[np.float64],
) -> NodeFeatures:
    """The state ``x_i`` of each present node.

    ``previous_shares`` is ``N · p_{t−1,i}``; ``running_credit`` each node's decayed sum of
    past leave-one-out credit (scaled per round), the evidence Hedge-LOO acts on.
    """
    candidates = np.concatenate(
        [weights[None, :], weights[None, :] - np.float32(server_learning_rate) * first_gradients]
    )
    scores = validate(candidates)
    loss_now = float(scores.losses[0])
    alone = robust_z(scores.losses[1:] - loss_now)
    norms = np.linalg.norm(first_gradients.astype(np.float64), axis=1)
    median_norm = max(float(np.median(norms)), 1e-12)
    log_norm = np.clip(np.log(np.maximum(norms, 1e-12) / median_norm), -3.0, 3.0)
    if previous_second_gradient is None:
        cosine = np.zeros(first_gradients.shape[0])
    else:
        reference = previous_second_gradient.astype(np.float64)
        denominator = np.maximum(norms * float(np.linalg.norm(reference)), 1e-12)
        cosine = (first_gradients.astype(np.float64) @ reference) / denominator
    values = np.stack([alone, cosine, log_norm, previous_shares, running_credit], axis=1)
    return NodeFeatures(values=values.astype(np.float64), loss_now=loss_now)


@dataclass(frozen=True)
class LeaveOneOut:
    """``credit[i] = B − B₋ᵢ`` on negative validation loss; ``loss_after``: loss of ``w − ηG``."""

    credit: npt.NDArray[np.float64]
    loss_after: float


def leave_one_out_credit(
    validate: ValidationFn,
    weights: FloatArray,
    probabilities: npt.NDArray[np.float64],
    first_gradients: FloatArray,
    server_learning_rate: float,
) -> LeaveOneOut:
    """Each present node's leave-one-out credit for the second gradient it was part of."""
    lr = np.float32(server_learning_rate)
    combined = second_gradient(probabilities, first_gradients)
    without = leave_one_out_gradients(probabilities, first_gradients)
    candidates = np.concatenate([weights[None, :] - lr * combined, weights[None, :] - lr * without])
    losses = validate(candidates).losses
    loss_after = float(losses[0])
    with np.errstate(invalid="ignore"):  # inf − inf: a diverging model
        credit = losses[1:] - loss_after  # B − B₋ᵢ = (−loss) − (−loss₋ᵢ)
    credit = np.where(np.isfinite(credit), credit, 0.0)  # not finite: no information
    if first_gradients.shape[0] == 1:
        credit = np.zeros(1)
    return LeaveOneOut(credit=np.asarray(credit, dtype=np.float64), loss_after=loss_after)
