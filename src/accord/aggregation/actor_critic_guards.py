"""The rich Actor-Critic's per-round guards (see :mod:`.actor_critic`), both off by default.

A running credit learns of a node's harm a round late, and an intermittent attacker's honest
rounds are lost to it. These act on this round's evidence instead, which the policy has
already scored: the veto (``veto_k``) and the descent choice (``descent_k``). Measured on the
full zoo and kept as settings; docs/learning-quality.md has the figures.
"""

from __future__ import annotations

import numpy as np

from accord.aggregation.actor_critic_settings import ActorCriticSettings
from accord.aggregation.base import FloatArray, RoundInput
from accord.aggregation.combine import applied_step, clearly_worse
from accord.aggregation.credit import LeaveOneOut, NodeFeatures
from accord.aggregation.zeno import ZenoSettings, zeno_weights

__all__ = ["descent_choice", "round_guards", "veto"]


def round_guards(
    round_input: RoundInput,
    gradients: FloatArray,
    applied: np.ndarray,
    loo: LeaveOneOut,
    features: NodeFeatures,
    settings: ActorCriticSettings,
) -> tuple[np.ndarray, int | None, bool]:
    """This round's guards after the warm-up, each off at k = 0: the veto (``veto_k``),
    then, if it left nobody out, the descent choice (``descent_k``). Returns (weights
    applied, the node left out or None, whether Zeno's weights were chosen)."""
    vetoed = veto(applied, loo, settings.veto_k) if settings.veto_k > 0 else None
    if vetoed is not None:
        applied = applied.copy()
        applied[vetoed] = 0.0
        return applied / applied.sum(), vetoed, False
    if settings.descent_k > 0:
        applied, descended = descent_choice(
            round_input,
            gradients,
            applied,
            loo,
            features,
            settings.descent_k,
            settings.server_learning_rate,
        )
        return applied, None, descended
    return applied, None, False


def descent_choice(
    round_input: RoundInput,
    gradients: FloatArray,
    applied: np.ndarray,
    loo: LeaveOneOut,
    features: NodeFeatures,
    k: float,
    server_learning_rate: float,
) -> tuple[np.ndarray, bool]:
    """Zeno's weights for this round (:func:`~accord.aggregation.zeno.zeno_weights`, its
    default settings), from the features' alone losses: applied instead when their step
    validates clearly better (``k`` standard errors). Returns (weights, whether chosen)."""
    assert round_input.validate is not None
    if features.alone_changes is None or loo.sample_losses_after is None:
        return applied, False
    zeno = ZenoSettings()
    norms = np.einsum("ij,ij->i", gradients, gradients, dtype=np.float64)
    scores = -features.alone_changes - zeno.norm_penalty * norms
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    candidate, _, _ = zeno_weights(round_input, scores, zeno.suspect_fraction)
    step = applied_step(round_input.global_weights, candidate, gradients, server_learning_rate)
    scored = round_input.validate(step[None, :])
    if scored.sample_losses is None:
        return applied, False
    if clearly_worse(loo.sample_losses_after, np.asarray(scored.sample_losses[0]), k):
        return candidate, True
    return applied, False


def veto(applied: np.ndarray, loo: LeaveOneOut, k: float) -> int | None:
    """The node to leave out of this round's step, if any: the one whose leave-one-out
    candidate (already scored for the credit) validates best, when the step with it
    validates clearly worse than without it (``k`` standard errors of the paired
    per-sample losses). A node that strikes in some rounds only is left out in the
    rounds it strikes, which a running credit learns a round late."""
    without, after = loo.sample_losses_without, loo.sample_losses_after
    if without is None or after is None or applied.size < 2:
        return None
    eligible = (applied > 0) & np.isfinite(loo.credit)
    if loo.lifted is not None:
        eligible &= ~loo.lifted
    if not eligible.any():
        return None
    node = int(np.argmin(np.where(eligible, loo.credit, np.inf)))
    if loo.credit[node] >= 0 or applied[node] >= 1.0:
        return None
    if not clearly_worse(after, without[node], k):
        return None
    return node
