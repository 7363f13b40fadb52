"""Zeno (Xie, Koyejo and Gupta, ICML 2019): keep the updates that descend the server's loss.

Each round, with ``f`` the validation loss on the server's data and ``η`` the server
learning rate, every present node gets the *stochastic descendant score*

    ``score_i = f(w) − f(w − η·g_i) − ρ·‖g_i‖²``

(one batched validation pass over the ``N + 1`` candidates ``w, w − η g_1, …``): how much
its update alone lowers the loss, less a penalty on its size. The ``b = N − ⌊s·N⌋`` best
scores are kept (``s`` the suspected faulty fraction, at least one node kept) and combined
with data-size weights renormalised over the kept nodes: those weights are the reported
probabilities, zero for the dropped nodes. A score that is not finite (the update sends the
loss to infinity or NaN) ranks last. Xie et al. average the kept updates uniformly and
score them on a mini-batch; here the whole validation set scores them and the data-size
weights keep FedAvg as the result when every node is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from accord._validation import require_number
from accord.aggregation.base import Aggregation, Aggregator, FloatArray, RoundInput, ValidationFn
from accord.aggregation.combine import data_size_probabilities, expand_to_roster, second_gradient

__all__ = ["Zeno", "ZenoSettings", "zeno_keep_count", "zeno_scores", "zeno_weights"]


@dataclass(frozen=True)
class ZenoSettings:
    """``suspect_fraction`` s: share of the present nodes assumed faulty and dropped each
    round (default 0.4, so up to 4 of 10 faulty nodes are covered; Zeno needs ``s`` at least
    the true faulty share); ``norm_penalty`` ρ on ``‖g_i‖²`` (default 0.0005; first
    gradients here are model deltas, so an update scaled ×10 pays 100 times its honest
    penalty); ``server_learning_rate`` must match the round's η_server."""

    suspect_fraction: float = 0.4
    norm_penalty: float = 0.0005
    server_learning_rate: float = 1.0

    def __post_init__(self) -> None:
        require_number("suspect_fraction", self.suspect_fraction, minimum=0.0, maximum=0.99)
        require_number("norm_penalty", self.norm_penalty, minimum=0.0)
        require_number(
            "server_learning_rate", self.server_learning_rate, minimum=0.0, exclusive_minimum=True
        )


def zeno_keep_count(present: int, suspect_fraction: float) -> int:
    """``b = N − ⌊s·N⌋``, at least 1."""
    return max(1, present - int(np.floor(suspect_fraction * present + 1e-9)))


def zeno_scores(
    validate: ValidationFn,
    weights: FloatArray,
    first_gradients: FloatArray,
    server_learning_rate: float,
    norm_penalty: float,
) -> npt.NDArray[np.float64]:
    """``f(w) − f(w − η g_i) − ρ‖g_i‖²`` per node, non-finite scores mapped to ``−inf``."""
    lr = np.float32(server_learning_rate)
    candidates = np.concatenate([weights[None, :], weights[None, :] - lr * first_gradients])
    losses = validate(candidates).losses
    squared_norms = np.einsum("ij,ij->i", first_gradients, first_gradients).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = float(losses[0]) - losses[1:] - norm_penalty * squared_norms
    return np.where(np.isfinite(scores), scores, -np.inf).astype(np.float64)


def zeno_weights(
    round_input: RoundInput, scores: npt.NDArray[np.float64], suspect_fraction: float
) -> tuple[npt.NDArray[np.float64], list[int], int]:
    """Data-size weights over the present nodes with the ``b`` best ``scores`` (zero for the
    others), the ranking (best first) and ``b``."""
    keep = zeno_keep_count(scores.shape[0], suspect_fraction)
    # Best first; ties broken by data size, then by node id, never by roster position.
    present_ids = [
        node for node, here in zip(round_input.roster, round_input.present, strict=True) if here
    ]
    counts = round_input.present_counts
    ranking = sorted(range(scores.shape[0]), key=lambda i: (-scores[i], -counts[i], present_ids[i]))
    kept = np.zeros(scores.shape[0], dtype=bool)
    kept[ranking[:keep]] = True
    probabilities = np.zeros(scores.shape[0], dtype=np.float64)
    probabilities[kept] = data_size_probabilities(counts[kept])
    return probabilities, ranking, keep


class Zeno(Aggregator):
    """Zeno: data-size weights over the ``b`` updates with the best descendant score."""

    name = "zeno"
    needs_validation = True

    def __init__(self, settings: ZenoSettings | None = None) -> None:
        self.settings = settings or ZenoSettings()
        self._diagnostics: dict[str, float] = {}

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        assert round_input.validate is not None  # guaranteed by needs_validation
        s = self.settings
        scores = zeno_scores(
            round_input.validate,
            round_input.global_weights,
            round_input.first_gradients,
            s.server_learning_rate,
            s.norm_penalty,
        )
        probabilities, ranking, keep = zeno_weights(round_input, scores, s.suspect_fraction)
        figures = {
            "kept_nodes": float(keep),
            "best_score": float(scores[ranking[0]]),
            "worst_kept_score": float(scores[ranking[keep - 1]]),
        }
        self._diagnostics = {k: v for k, v in figures.items() if np.isfinite(v)}
        return Aggregation(
            probabilities=expand_to_roster(probabilities, round_input.present),
            second_gradient=second_gradient(probabilities, round_input.first_gradients),
        )

    def diagnostics(self) -> dict[str, float]:
        return dict(self._diagnostics)
