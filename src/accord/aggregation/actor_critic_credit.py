"""The Actor-Critic's memory of each node: its running leave-one-out credit, the evidence
behind it, and the shrinkage that judges that credit against its noise.

The reference the policy is held to (DESIGN §3.1) is Hedge-LOO's weights on this running
credit. Pure numpy: every function here works on the arrays it is given, in place where
it says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accord.aggregation.actor_critic_settings import ActorCriticSettings
from accord.aggregation.combine import median

__all__ = [
    "RunningCredit",
    "fold_evidence",
    "lift_targets",
    "misalignment",
    "reference_credit",
    "without_noise_like",
]


@dataclass(frozen=True)
class RunningCredit:
    """Per roster node: the running credit and its evidence's running mean and variance;
    and the scale that rounds' credit is measured in (one element). Arrays updated in place
    by :func:`fold_evidence`."""

    credit: np.ndarray
    evidence_mean: np.ndarray
    evidence_variance: np.ndarray
    scale: np.ndarray


def misalignment(cosines: np.ndarray, fraction: float) -> np.ndarray:
    """Each node's shortfall in alignment with the last second gradient, in [0, 2]:
    ``clip(1 − cos_i / (fraction · median cos), 0, 2)``; zeros when the median cosine is
    not positive (no common direction to judge by).

    A node at least ``fraction`` as aligned as the median scores 0, an orthogonal one
    (noise, a free rider's zero update) 1, an opposed one up to 2. The leave-one-out credit
    of a noise node is about 0, like that of an honest node that the credit under-pays on
    non-IID data; its alignment tells them apart.
    """
    centre = median(cosines) if cosines.size else 0.0
    if centre <= 0:
        return np.zeros_like(cosines)
    return np.asarray(np.clip(1.0 - cosines / (fraction * centre), 0.0, 2.0))


def lift_targets(
    weights: np.ndarray, data_size: np.ndarray, charged_factors: np.ndarray, lift_below: float
) -> np.ndarray | None:
    """The weight each node's credit is measured at by lifting it (0: left out as usual),
    or ``None`` when ``lift_below`` is 0 (no lift).

    A node held below ``lift_below`` × its data share is credited by lifting it back to its
    share: leaving out a node near 0 weight measures nothing, so a node whose fault ended
    could never earn its way back, and a held-down attacker's record would fade. Not lifted:
    a node whose update was cut down to the norm bound (``charged_factors`` < 1; a scaled
    attack keeps an honest direction, which the lift would pay) or was empty (factor 0;
    its lift only shortens the step).
    """
    if lift_below <= 0:
        return None
    liftable = (weights < lift_below * data_size) & (charged_factors >= 1.0)
    return np.asarray(np.where(liftable, data_size, 0.0))


def without_noise_like(weights: np.ndarray, noise_like: np.ndarray | None) -> np.ndarray:
    """``weights`` with the nodes whose update this round looks like noise set to 0 and
    the rest renormalised; unchanged when no node, or every node with weight, is marked.

    The running credit holds a noise node down from the next round on; a node that is
    noise only in some rounds (an intermittent fault) earns credit in its honest ones, and
    its noise would be applied at that weight. The test has already judged this round's
    update, so its weight for this round can follow the judgement.
    """
    if noise_like is None or not np.any(noise_like):
        return weights
    kept = np.where(noise_like, 0.0, weights)
    total = float(kept.sum())
    if total <= 0:
        return weights
    return np.asarray(kept / total)


def fold_evidence(
    memory: RunningCredit,
    settings: ActorCriticSettings,
    credit: np.ndarray,
    *,
    data_size: np.ndarray,
    applied: np.ndarray,
    present: np.ndarray,
    bound_factors: np.ndarray,
    cosines: np.ndarray | None,
    noise_like: np.ndarray | None = None,
) -> None:
    """Fold one round's leave-one-out ``credit`` of the present nodes into ``memory``, in
    place (absent nodes' records carry over unchanged): decay, the scaled increment, its
    running mean and variance, the norm-bound penalty, the alignment penalty (``cosines``
    to the last second gradient; ``None`` in the first round), the noise charge (the present
    nodes whose update ``noise_like`` marks earn no positive credit and lose
    ``noise_penalty``) and the floor at −2b."""
    s = settings
    running = memory.credit
    evidence = credit
    if s.evidence_at_share:
        # Leave-one-out credit scales with the node's weight: a node held down shows
        # ever less harm, its record fades and it climbs back (a relapse). Measured at
        # its data share instead, its record stays what it did per unit of weight.
        share = data_size.astype(np.float64)
        gain = np.clip(share / np.maximum(applied, 1e-12), np.exp(-s.upper_bound), None)
        evidence = credit * np.minimum(gain, s.evidence_max_gain)
    credit_scale = float(np.mean(np.abs(evidence)))
    if s.scale_memory > 0:
        # Once training has converged every node's credit is noise, and scaling each round
        # to unit size would make that noise count as much as an attack did early on: the
        # scale may fall only by the factor scale_memory a round.
        credit_scale = max(credit_scale, s.scale_memory * float(memory.scale[0]))
        memory.scale[0] = credit_scale
    # Only the present nodes' records age: a node not in this round (not sampled, or
    # failed) carries its record over unchanged until it is heard from again.
    running[present] *= np.where(running[present] < 0, s.harm_decay, s.credit_decay)
    increment = evidence / credit_scale if credit_scale > 0 else np.zeros_like(evidence)
    if noise_like is not None and np.any(noise_like):
        # Such an update shares nothing with the others: whatever it seems to add is the
        # damping of an overshooting step, which the credit does not pay for.
        increment = np.where(noise_like, np.minimum(increment, 0.0) - s.noise_penalty, increment)
    running[present] += increment
    # Each node's per-round evidence, as an exponentially weighted mean and variance:
    # the noise against which the shrinkage judges the spread of the running credit.
    mean, variance = memory.evidence_mean, memory.evidence_variance
    mean[present] += (1.0 - s.credit_decay) * (increment - mean[present])
    variance[present] = s.credit_decay * (
        variance[present] + (1.0 - s.credit_decay) * (increment - mean[present]) ** 2
    )
    # An update that had to be cut down to the norm bound counts against its node.
    running[present] += s.bound_penalty * np.log(np.maximum(bound_factors, 1e-6))
    if s.alignment_penalty > 0 and cosines is not None:
        running[present] -= s.alignment_penalty * misalignment(cosines, s.alignment_fraction)
    # Below −2b the bounded logit is saturated (4·tanh(2) = 3.86 nats down): a deeper
    # record would only delay the recovery of a node whose fault switched off.
    np.maximum(running, -2.0 * s.bound, out=running)


def reference_credit(
    credit: np.ndarray, evidence_variance: np.ndarray, settings: ActorCriticSettings
) -> tuple[np.ndarray, float | None]:
    """The present nodes' running credit as the reference acts on it, and the share kept
    (``None``: shrinkage off or fewer than two nodes, the credit as it is).

    Shrunk toward its mean (empirical Bayes, James–Stein) by the share of its spread across
    nodes that noise explains. With ``V`` the variance of the running credit across the
    present nodes and ``σ²`` the variance one node's running credit would have from noise
    alone (the mean per-round variance of the nodes' evidence times ``1 / (1 − δ²)``),
    every node's credit keeps ``λ = max(0, 1 − σ²/V)`` of its distance from the mean.
    Credit that separates the nodes clearly (a fault) is kept whole; credit that does not
    (clean non-IID data) is shrunk, and the reference falls back toward the data-size
    weights instead of piling the weight onto the few nodes that the noise favoured.
    """
    if not settings.credit_shrinkage or credit.size < 2:
        return np.asarray(credit), None
    spread = float(np.var(credit))
    noise = float(np.mean(evidence_variance)) / (1.0 - settings.credit_decay**2)
    keep = max(0.0, 1.0 - noise / spread) if spread > 0 else 0.0
    centre = float(np.mean(credit))
    return np.asarray(centre + keep * (credit - centre)), keep
