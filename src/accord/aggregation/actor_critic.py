"""The Actor-Critic weighting policy (DESIGN §1 and §3.1), in two modes; its settings are
:mod:`accord.aggregation.actor_critic_settings` (re-exported here), its networks
:mod:`accord.aggregation.actor_critic_networks`, the patent mode
:mod:`accord.aggregation.actor_critic_patent`.

``rich`` (default)
    Each present node i has a feature vector ``x_i`` (:mod:`accord.aggregation.credit`).
    One small actor MLP, shared by all nodes, scores each node from ``[x_i, mean_j x_j]``;
    ``logit_i = log anchor_i + b·tanh(score_i / b)`` and ``p = softmax(logits)``. The anchor
    is the robust *reference* (Hedge-LOO's weights computed from this policy's own running
    credit; ``anchor="reference"``, the default) or the data-size weights
    (``anchor="data-size"``, the original design). The actor's last layer starts near
    zero, so the first policy is its anchor. Exploration adds decaying Gaussian noise to
    the scores. The reward is per node, in the patent's ``g^Δ`` form on leave-one-out
    credit: ``r_i = c·(g^(B − B₋ᵢ) − 1)``. Critics are linear in the action,
    ``Q_i = N·a_i·V(c_i) + U(c_i)`` with ``c_i = [h_i, mean_j h_j]`` and ``h = φ(x)``; two
    critics with target copies, a TD3 target with smoothed action noise, discount γ. The
    actor maximises ``Σ_i Q_i(x, π(x)) − λ·KL(π(x) ‖ anchor)``, where each node's term
    moves only that node's own score (the others' weights held fixed).

    Safety (each switchable, for ablations):

    - *norm bounding*: every first gradient is scaled down to at most ``norm_bound`` × the
      median norm before anything else; the log of the factor is a feature.
    - *robust start*: for the first ``warmup_rounds`` rounds the policy applies the
      reference.
    - *safe policy improvement*: the proposal and the reference are both scored on the
      validation set (the reference in the features' batched pass, the proposal in the
      credit's); a proposal whose mean per-sample loss exceeds the reference's by more than
      ``safety_k`` standard errors is rejected and the reference applied instead. The replay
      records the applied action, and on rejected rounds an imitation term
      ``β·KL(reference ‖ π)`` pulls the actor toward the reference.
    - *step-normalised credit*: ``G₋ᵢ`` keeps the length of ``G``, so a free rider is not
      paid for damping the step.
    - *relapse guard*: a node's offset from its prior rises at most ``max_rise`` nats per
      round.
    - probabilities are always finite: a non-finite proposal falls back to the reference,
      a non-finite reference to the data-size weights.

    Three ablations of the reference are off by default (see :class:`ActorCriticSettings`):
    choosing the data-size weights when they validate no worse (``data_size_reference``),
    a smaller lift above the prior (``reference_upper_bound``), and shrinking the running
    credit by the share of its spread that noise explains (``credit_shrinkage``). None kept
    the fault robustness while fixing clean non-IID data: the leave-one-out credit of a
    noise node and of an under-paid honest non-IID node are alike (about 0), so the lift
    that suppresses noise is the same lift that piles the weight on clean data.

``patent``
    Exactly as the patent words it: the state is the previous round's probability vector
    over the roster, the actor maps it to this round's probabilities, and the reward is
    ``g^(B − A)`` on validation accuracy before (A) and after (B) the update; generic
    critics ``Q(s, a)``. On a prototype it did not learn; it is kept, tested and benchmarked.

Both are seeded: network initialisation from ``seed``, all noise and replay sampling from
one ``numpy`` generator whose state is part of :meth:`state_dict`.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from accord.aggregation.actor_critic_networks import (
    ActionLinearCritics,
    Replay,
    ScoreActor,
    bounded_logits_torch,
    critic_loss,
    critic_target,
    kl_to_anchor,
    load_torch_state,
    masked_softmax,
    own_share,
    soft_update,
    torch_state,
)
from accord.aggregation.actor_critic_patent import PatentActorCritic, reward
from accord.aggregation.actor_critic_settings import ActorCriticSettings
from accord.aggregation.base import Aggregation, Aggregator, FloatArray, RoundFeedback, RoundInput
from accord.aggregation.combine import (
    bound_norms,
    bounded_prior_softmax,
    cap_rise,
    clearly_worse,
    data_size_probabilities,
    expand_to_roster,
    second_gradient,
)
from accord.aggregation.credit import (
    FEATURE_NAMES,
    credit_method_for,
    leave_one_out_credit,
    node_features,
)
from accord.optim import Adam

__all__ = [
    "ActorCriticSettings",
    "PatentActorCritic",
    "RichActorCritic",
    "make_actor_critic",
    "reward",
]

logger = logging.getLogger(__name__)

#: Largest |B − B₋ᵢ| (in nats of validation loss) that enters the reward.
MAX_CREDIT = 10.0


def misalignment(cosines: np.ndarray, fraction: float) -> np.ndarray:
    """Each node's shortfall in alignment with the last second gradient, in [0, 2]:
    ``clip(1 − cos_i / (fraction · median cos), 0, 2)``; zeros when the median cosine is
    not positive (no common direction to judge by).

    A node at least ``fraction`` as aligned as the median scores 0, an orthogonal one
    (noise, a free rider's zero update) 1, an opposed one up to 2. The leave-one-out credit
    of a noise node is about 0, like that of an honest node that the credit under-pays on
    non-IID data; its alignment tells them apart.
    """
    median = float(np.median(cosines)) if cosines.size else 0.0
    if median <= 0:
        return np.zeros_like(cosines)
    return np.asarray(np.clip(1.0 - cosines / (fraction * median), 0.0, 2.0))


def make_actor_critic(settings: ActorCriticSettings | None = None) -> Aggregator:
    settings = settings or ActorCriticSettings()
    if settings.mode == "patent":
        return PatentActorCritic(settings)
    return RichActorCritic(settings)


def _finite_probabilities(candidate: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, bool]:
    """``candidate`` if it is a finite probability vector, else ``fallback`` (and True)."""
    total = float(np.sum(candidate)) if np.all(np.isfinite(candidate)) else float("nan")
    if np.isfinite(total) and total > 0 and np.all(candidate >= 0):
        return candidate / total, False
    return fallback, True


# ----------------------------------------------------------------------------- rich mode


class RichActorCritic(Aggregator):
    """The ``rich`` Actor-Critic of DESIGN §1, made safe as in §3.1 (the default policy)."""

    name = "actor-critic"
    needs_validation = True

    def __init__(self, settings: ActorCriticSettings) -> None:
        self.settings = settings
        self.rng = np.random.default_rng([settings.seed, 1])
        n_features = len(FEATURE_NAMES)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            self.actor = ScoreActor(n_features, settings.hidden)
            self.critics = ActionLinearCritics(settings.critics, n_features, settings.hidden)
        self.target_actor = copy.deepcopy(self.actor)
        self.target_critics = copy.deepcopy(self.critics)
        self.actor_optimizer = Adam(self.actor.parameters(), lr=settings.actor_learning_rate)
        self.critic_optimizer = Adam(self.critics.parameters(), lr=settings.critic_learning_rate)
        self.replay: Replay | None = None
        self.log_prior: np.ndarray | None = None
        self.previous_second_gradient: FloatArray | None = None
        self.previous_probabilities: np.ndarray | None = None
        self.pending: dict[str, np.ndarray] | None = None
        self.running_credit: np.ndarray | None = None
        self.evidence_mean: np.ndarray | None = None
        self.evidence_variance: np.ndarray | None = None
        self.rounds_seen = 0
        self.updates = 0
        self.proposals = 0
        self.rejections = 0
        self._diagnostics: dict[str, float] = {}
        self._diagnostics_shrinkage = 1.0

    def _new_replay(self, roster_size: int) -> Replay:
        r, f = roster_size, len(FEATURE_NAMES)
        shapes: dict[str, tuple[int, ...]] = {
            "x": (r, f),
            "mask": (r,),
            "anchor": (r,),
            "action": (r,),
            "reference": (r,),
            "rejected": (),
            "reward": (r,),
            "next_x": (r, f),
            "next_mask": (r,),
            "next_anchor": (r,),
        }
        return Replay(self.settings.replay_capacity, shapes)

    # -- acting

    def _exploration_sigma(self) -> float:
        s = self.settings
        return s.exploration_noise * s.exploration_decay**self.rounds_seen if s.learning else 0.0

    def aggregate(self, round_input: RoundInput) -> Aggregation:  # noqa: C901, PLR0912, PLR0915 - split next
        assert round_input.validate is not None  # guaranteed by needs_validation
        s = self.settings
        roster_size = len(round_input.roster)
        present = round_input.present
        if self.replay is None:
            self.replay = self._new_replay(roster_size)
            self.log_prior = np.log(np.maximum(round_input.sample_counts, 1e-12))
        assert self.log_prior is not None
        if self.previous_probabilities is None or self.running_credit is None:
            self.previous_probabilities = data_size_probabilities(round_input.sample_counts)
            self.running_credit = np.zeros(roster_size)
        if self.evidence_mean is None or self.evidence_variance is None:
            self.evidence_mean = np.zeros(roster_size)
            self.evidence_variance = np.zeros(roster_size)
        started = time.perf_counter()
        gradients, bound_factors = bound_norms(round_input.first_gradients, s.norm_bound)
        log_prior = self.log_prior[present]
        data_size = data_size_probabilities(round_input.present_counts)
        hedge, _ = _finite_probabilities(
            bounded_prior_softmax(
                log_prior,
                s.reference_learning_rate * self._reference_credit(present),
                s.bound,
                s.reference_upper_bound,
            ),
            data_size,
        )
        warm = s.robust_start and self.rounds_seen < s.warmup_rounds
        check = s.safety and not warm
        # The candidate references, scored in the features' batched pass: Hedge-LOO's
        # weights on this policy's credit, and (when the choice is on) the data-size weights.
        choose = s.data_size_reference
        candidates = [hedge, data_size] if choose else [hedge]
        scored = check or choose
        method = credit_method_for(
            s.credit_method,
            gradients.shape[0],
            gradients.shape[1],
            round_input.validation_gradient,
        )
        first_order = round_input.validation_gradient if method == "first-order" else None
        features = node_features(
            round_input.validate,
            round_input.global_weights,
            gradients,
            s.server_learning_rate,
            self.previous_second_gradient,
            roster_size * self.previous_probabilities[present],
            self.running_credit[present] * (1.0 - s.credit_decay),
            bound_factors=bound_factors,
            candidate_gradients=(
                np.stack([second_gradient(c, gradients) for c in candidates]) if scored else None
            ),
            validation_gradient=first_order,
        )
        chosen = 0
        if choose:
            # The data-size weights are the reference unless they validate clearly worse
            # than Hedge-LOO's (k = data_size_k standard errors; 0: a worse mean suffices).
            losses, samples = features.candidate_losses, features.candidate_sample_losses
            if samples is not None:
                hedge_better = clearly_worse(samples[1], samples[0], s.data_size_k)
            else:
                hedge_better = clearly_worse(losses[1:2], losses[0:1], s.data_size_k)
            chosen = 0 if hedge_better else 1
        reference = candidates[chosen]
        reference_loss = float(features.candidate_losses[chosen]) if scored else None
        reference_samples = (
            features.candidate_sample_losses[chosen]
            if scored and features.candidate_sample_losses is not None
            else None
        )
        x = np.zeros((roster_size, len(FEATURE_NAMES)), dtype=np.float32)
        x[present] = features.values
        anchor = np.zeros(roster_size, dtype=np.float32)
        anchor[present] = (
            np.log(np.maximum(reference, 1e-30)) if s.anchor == "reference" else (log_prior)
        )
        if self.pending is not None:
            self.replay.add(**self.pending, next_x=x, next_mask=present, next_anchor=anchor)
        fell_back = False
        if warm:
            proposal = reference
        else:
            with torch.no_grad():
                scores = self.actor(torch.from_numpy(x)[None], torch.from_numpy(present)[None])[0]
            scores_np = scores.double().numpy()[present]
            sigma = self._exploration_sigma()
            if sigma > 0:
                scores_np = scores_np + sigma * self.rng.standard_normal(scores_np.shape)
            proposal = bounded_prior_softmax(
                anchor[present].astype(np.float64), scores_np, s.bound, s.upper_bound
            )
            proposal = cap_rise(
                proposal, self.previous_probabilities[present], log_prior, s.max_rise
            )
            proposal, fell_back = _finite_probabilities(proposal, reference)
            if fell_back:
                logger.warning(
                    "round %d: the actor proposed non-finite weights; applying the reference",
                    round_input.round_index + 1,
                )
        step_normalised = s.credit == "step-normalised"
        loo = leave_one_out_credit(
            round_input.validate,
            round_input.global_weights,
            proposal,
            gradients,
            s.server_learning_rate,
            step_normalised=step_normalised,
            validation_gradient=first_order,
        )
        rejected = fell_back
        if check and not fell_back:
            self.proposals += 1
            if loo.sample_losses_after is not None and reference_samples is not None:
                rejected = clearly_worse(loo.sample_losses_after, reference_samples, s.safety_k)
            else:  # no per-sample losses: compare the means
                assert reference_loss is not None
                rejected = clearly_worse(
                    np.array([loo.loss_after]), np.array([reference_loss]), s.safety_k
                )
            if rejected:
                self.rejections += 1
                loo = leave_one_out_credit(
                    round_input.validate,
                    round_input.global_weights,
                    reference,
                    gradients,
                    s.server_learning_rate,
                    step_normalised=step_normalised,
                    validation_gradient=first_order,
                )
        applied = reference if rejected else proposal
        credit = np.nan_to_num(loo.credit, nan=0.0, posinf=MAX_CREDIT, neginf=-MAX_CREDIT)
        # A wildly harmful node (a scaled sign flip) can move the loss by tens of nats;
        # clipping Δ keeps g^Δ finite in float32 without changing any ordering that matters.
        delta = np.clip(credit, -MAX_CREDIT, MAX_CREDIT)
        rewards = s.reward_scale * (np.power(s.reward_base, delta) - 1.0)
        evidence = credit
        if s.evidence_at_share:
            # Leave-one-out credit scales with the node's weight: a node held down shows
            # ever less harm, its record fades and it climbs back (a relapse). Measured at
            # its data share instead, its record stays what it did per unit of weight.
            share = data_size.astype(np.float64)
            gain = np.clip(share / np.maximum(applied, 1e-12), np.exp(-s.upper_bound), None)
            evidence = credit * np.minimum(gain, s.evidence_max_gain)
        credit_scale = float(np.mean(np.abs(evidence)))
        self.running_credit *= np.where(self.running_credit < 0, s.harm_decay, s.credit_decay)
        increment = evidence / credit_scale if credit_scale > 0 else np.zeros_like(evidence)
        self.running_credit[present] += increment
        # Each node's per-round evidence, as an exponentially weighted mean and variance:
        # the noise against which the shrinkage judges the spread of the running credit.
        self.evidence_mean[present] += (1.0 - s.credit_decay) * (
            increment - self.evidence_mean[present]
        )
        self.evidence_variance[present] = s.credit_decay * (
            self.evidence_variance[present]
            + (1.0 - s.credit_decay) * (increment - self.evidence_mean[present]) ** 2
        )
        # An update that had to be cut down to the norm bound counts against its node.
        self.running_credit[present] += s.bound_penalty * np.log(np.maximum(bound_factors, 1e-6))
        if s.alignment_penalty > 0 and self.previous_second_gradient is not None:
            self.running_credit[present] -= s.alignment_penalty * misalignment(
                features.values[:, FEATURE_NAMES.index("cosine_previous")],
                s.alignment_fraction,
            )
        # Below −2b the bounded logit is saturated (4·tanh(2) = 3.86 nats down): a deeper
        # record would only delay the recovery of a node whose fault switched off.
        np.maximum(self.running_credit, -2.0 * s.bound, out=self.running_credit)
        full_probabilities = expand_to_roster(applied, present)
        reward_row = np.zeros(roster_size, dtype=np.float32)
        reward_row[present] = rewards
        self.pending = {
            "x": x,
            "mask": present.copy(),
            "anchor": anchor,
            "action": full_probabilities.astype(np.float32),
            "reference": expand_to_roster(reference, present).astype(np.float32),
            "rejected": np.array(float(rejected), dtype=np.float32),
            "reward": reward_row,
        }
        combined = second_gradient(applied, gradients)
        self.previous_second_gradient = combined
        self.previous_probabilities = full_probabilities
        self.rounds_seen += 1
        self._diagnostics = {
            "policy_features_seconds": time.perf_counter() - started,
            "exploration_sigma": self._exploration_sigma(),
            "mean_abs_credit": float(np.mean(np.abs(credit))),
            "rejected": float(rejected),
            "rejection_rate": self.rejections / max(self.proposals, 1),
            "norm_bounded_nodes": float(np.sum(bound_factors < 1.0)),
            "reference_is_data_size": float(chosen == 1),
            "credit_kept": self._diagnostics_shrinkage,
        }
        return Aggregation(probabilities=full_probabilities, second_gradient=combined)

    def _reference_credit(self, present: np.ndarray) -> np.ndarray:
        """The running credit the reference acts on: shrunk toward its mean (empirical
        Bayes, James–Stein) by the share of its spread across nodes that noise explains.

        With ``V`` the variance of the running credit across the present nodes and ``σ²``
        the variance one node's running credit would have from noise alone (the mean
        per-round variance of the nodes' evidence times ``1 / (1 − δ²)``), every node's
        credit keeps ``λ = max(0, 1 − σ²/V)`` of its distance from the mean. Credit that
        separates the nodes clearly (a fault) is kept whole; credit that does not (clean
        non-IID data) is shrunk, and the reference falls back toward the data-size weights
        instead of piling the weight onto the few nodes that the noise favoured.
        """
        assert self.running_credit is not None and self.evidence_variance is not None
        credit = self.running_credit[present]
        if not self.settings.credit_shrinkage or credit.size < 2:
            return np.asarray(credit)
        spread = float(np.var(credit))
        noise = float(np.mean(self.evidence_variance[present])) / (
            1.0 - self.settings.credit_decay**2
        )
        keep = max(0.0, 1.0 - noise / spread) if spread > 0 else 0.0
        self._diagnostics_shrinkage = keep
        centre = float(np.mean(credit))
        return np.asarray(centre + keep * (credit - centre))

    # -- learning

    def _policy(
        self,
        actor: nn.Module,
        x: torch.Tensor,
        mask: torch.Tensor,
        log_anchor: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        s = self.settings
        scores = actor(x, mask)
        if noise is not None:
            scores = scores + noise
        logits = bounded_logits_torch(log_anchor, scores, s.bound, s.upper_bound)
        return masked_softmax(logits, mask)

    def learn(self, feedback: RoundFeedback) -> None:
        s = self.settings
        if not s.learning or self.replay is None or self.replay.size < s.warmup_rounds:
            return
        if self.rounds_seen % s.learn_every != 0:
            return
        started = time.perf_counter()
        critic_losses: list[float] = []
        for step in range(s.critic_steps):
            batch = self.replay.sample(self.rng, s.batch_size)
            mask, next_mask = batch["mask"], batch["next_mask"]
            with torch.no_grad():
                noise_np = np.clip(
                    s.target_noise * self.rng.standard_normal(tuple(next_mask.shape)),
                    -s.target_noise_clip,
                    s.target_noise_clip,
                )
                next_action = self._policy(
                    self.target_actor,
                    batch["next_x"],
                    next_mask,
                    batch["next_anchor"],
                    torch.from_numpy(noise_np).float(),
                )
                next_q = self.target_critics(batch["next_x"], next_action, next_mask)
                target = critic_target(batch["reward"], s.discount, next_q, next_mask)
            loss = critic_loss(self.critics(batch["x"], batch["action"], mask), target, mask)
            critic_losses.append(loss.item())
            # One backward pass for both: the actor's loss sees the critics through
            # detached parameters, so it moves the actor only (as a separate step would,
            # at about half the cost of the tiny networks' per-call overhead).
            act = (step + 1) % s.policy_delay == 0
            if act:
                loss = loss + self._actor_loss(batch)
                self.actor_optimizer.zero_grad()
            self.critic_optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            self.critic_optimizer.step()
            if act:
                self.actor_optimizer.step()
                soft_update(self.target_actor, self.actor, s.target_update)
                soft_update(self.target_critics, self.critics, s.target_update)
        self.updates += 1
        self._diagnostics["policy_learn_seconds"] = time.perf_counter() - started
        if critic_losses:
            self._diagnostics["critic_loss"] = float(np.mean(critic_losses))

    def _actor_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.settings
        mask = batch["mask"]
        logits = bounded_logits_torch(
            batch["anchor"], self.actor(batch["x"], mask), s.bound, s.upper_bound
        )
        action = masked_softmax(logits, mask)
        # Each node's score maximises its own Q_i with the other nodes' weights held fixed.
        # The shared objective Σ_i Q_i makes the nodes compete for one unit of weight and,
        # on non-IID data, piled it onto 2-4 honest nodes; per node, a score rises while
        # its credit V_i is positive and saturates at the bound, as Hedge-LOO's does.
        own_action = own_share(logits, mask)
        frozen = {name: p.detach() for name, p in self.critics.named_parameters()}
        q_all = functional_call(self.critics, frozen, (batch["x"], own_action, mask))
        q = (q_all[0] * mask.float()).sum(dim=-1)
        log_action = torch.log(action.clamp_min(1e-12))
        kl = kl_to_anchor(action, batch["anchor"], mask)
        loss = (-q + s.kl_weight * kl).mean()
        rejected = batch["rejected"]
        if s.imitation_weight > 0 and bool(rejected.any()):
            reference = batch["reference"]
            imitation = torch.where(
                mask & (reference > 0),
                reference * (torch.log(reference.clamp_min(1e-12)) - log_action),
                0.0,
            ).sum(dim=-1)
            loss = loss + s.imitation_weight * (imitation * rejected).sum() / rejected.sum()
        return torch.as_tensor(loss)

    def diagnostics(self) -> dict[str, float]:
        return dict(self._diagnostics)

    # -- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "networks": {
                name: torch_state(module)
                for name, module in (
                    ("actor", self.actor),
                    ("critics", self.critics),
                    ("target_actor", self.target_actor),
                    ("target_critics", self.target_critics),
                    ("actor_optimizer", self.actor_optimizer),
                    ("critic_optimizer", self.critic_optimizer),
                )
            },
            "rng": self.rng.bit_generator.state,
            "replay": None if self.replay is None else self.replay.state_dict(),
            "log_prior": self.log_prior,
            "previous_second_gradient": self.previous_second_gradient,
            "previous_probabilities": self.previous_probabilities,
            "pending": self.pending,
            "running_credit": self.running_credit,
            "evidence_mean": self.evidence_mean,
            "evidence_variance": self.evidence_variance,
            "rounds_seen": self.rounds_seen,
            "updates": self.updates,
            "proposals": self.proposals,
            "rejections": self.rejections,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, blob in state["networks"].items():
            load_torch_state(getattr(self, name), blob)
        self.rng.bit_generator.state = state["rng"]
        self.log_prior = state["log_prior"]
        if state["replay"] is not None:
            assert self.log_prior is not None
            self.replay = self._new_replay(len(self.log_prior))
            self.replay.load_state_dict(state["replay"])
        self.previous_second_gradient = state["previous_second_gradient"]
        self.previous_probabilities = state["previous_probabilities"]
        self.pending = state["pending"]
        self.running_credit = state["running_credit"]
        self.evidence_mean = state.get("evidence_mean")
        self.evidence_variance = state.get("evidence_variance")
        self.rounds_seen = int(state["rounds_seen"])
        self.updates = int(state["updates"])
        self.proposals = int(state["proposals"])
        self.rejections = int(state["rejections"])
