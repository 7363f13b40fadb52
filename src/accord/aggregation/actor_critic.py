"""The Actor-Critic weighting policy (DESIGN §1 and §3.1), in two modes. This module acts
(one round's weights); beside it: the settings
(:mod:`~accord.aggregation.actor_critic_settings`, re-exported here), the networks
(:mod:`~accord.aggregation.actor_critic_networks`), the update
(:mod:`~accord.aggregation.actor_critic_update`), the running credit behind the reference
(:mod:`~accord.aggregation.actor_critic_credit`), the per-round guards
(:mod:`~accord.aggregation.actor_critic_guards`) and the patent mode
(:mod:`~accord.aggregation.actor_critic_patent`).

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
      median norm (of the non-zero updates: free riders set no scale) before anything
      else; the log of the factor is a feature and is charged to the node's running credit,
      and an empty update (all zeros, a free rider's) is charged as one cut to nothing.
    - *robust start*: for the first ``warmup_rounds`` rounds the policy applies the
      reference.
    - *safe policy improvement*: the proposal and the reference are both scored on the
      validation set, both in the credit's batched pass (with ``alone_method = "exact"``
      the reference in the features' pass); a proposal whose mean per-sample loss exceeds
      the reference's by more than ``safety_k`` standard errors is rejected and the
      reference applied instead. The replay records the applied action, and on rejected
      rounds an imitation term
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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from accord.aggregation.actor_critic_credit import (
    RunningCredit,
    fold_evidence,
    lift_targets,
    misalignment,
    reference_credit,
    without_noise_like,
)
from accord.aggregation.actor_critic_guards import round_guards
from accord.aggregation.actor_critic_networks import (
    ActionLinearCritics,
    Replay,
    ScoreActor,
    load_torch_state,
    torch_state,
)
from accord.aggregation.actor_critic_patent import PatentActorCritic, reward
from accord.aggregation.actor_critic_settings import MAX_CREDIT, ActorCriticSettings
from accord.aggregation.actor_critic_update import td3_update
from accord.aggregation.base import (
    Aggregation,
    Aggregator,
    FloatArray,
    RoundFeedback,
    RoundInput,
    ValidationGradientFn,
)
from accord.aggregation.combine import (
    applied_step,
    bound_norms,
    bounded_prior_softmax,
    cap_rise,
    clearly_worse,
    data_size_probabilities,
    expand_to_roster,
    gram_norms,
    row_gram,
    row_norms,
    second_gradient,
)
from accord.aggregation.credit import (
    FEATURE_NAMES,
    LeaveOneOut,
    NodeFeatures,
    credit_method_for,
    descent_alignment,
    leave_one_out_credit,
    node_features,
)
from accord.aggregation.noise_test import (
    coordinate_step,
    noise_like_rows,
    noise_like_rows_of_gram,
)
from accord.optim import Adam

__all__ = [
    "ActorCriticSettings",
    "PatentActorCritic",
    "RichActorCritic",
    "make_actor_critic",
    "misalignment",
    "reward",
]

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class _Reference:
    """A round's reference weights (over the present nodes), which candidate they are
    (0: Hedge-LOO's, 1: the data-size weights), the node features of that round, and the
    reference's validation loss and per-sample losses when they were scored."""

    weights: np.ndarray
    chosen: int
    features: NodeFeatures
    loss: float | None
    sample_losses: np.ndarray | None
    #: Whether the reference is to be scored in the credit's pass (the features' pass did
    #: not validate candidates: its alone feature is first-order).
    deferred: bool = False


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
        self.credit_scale = np.zeros(1)
        self.rounds_seen = 0
        self.updates = 0
        self.proposals = 0
        self.rejections = 0
        self._warned_no_gradient = False
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

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        assert round_input.validate is not None  # guaranteed by needs_validation
        s = self.settings
        roster_size = len(round_input.roster)
        present = round_input.present
        replay, log_prior_all = self._ensure_state(round_input)
        assert self.previous_probabilities is not None
        started = time.perf_counter()
        gradients, bound_factors, norms, noise_like = self._bounded_updates(round_input)
        log_prior = log_prior_all[present]
        data_size = data_size_probabilities(round_input.present_counts)
        warm = s.robust_start and self.rounds_seen < s.warmup_rounds
        check = s.safety and not warm
        method = credit_method_for(
            s.credit_method,
            gradients.shape[0],
            gradients.shape[1],
            round_input.validation_gradient,
        )
        first_order = round_input.validation_gradient if method == "first-order" else None
        ref = self._reference(round_input, gradients, bound_factors, data_size, check, first_order)
        x = np.zeros((roster_size, len(FEATURE_NAMES)), dtype=np.float32)
        x[present] = ref.features.values
        anchor = np.zeros(roster_size, dtype=np.float32)
        anchor[present] = (
            np.log(np.maximum(ref.weights, 1e-30)) if s.anchor == "reference" else (log_prior)
        )
        if self.pending is not None:
            replay.add(**self.pending, next_x=x, next_mask=present, next_anchor=anchor)
        if warm:
            proposal, fell_back = ref.weights, False
        else:
            proposal, fell_back = self._propose(x, anchor, log_prior, ref.weights, round_input)
        checked = check and not fell_back
        # An empty update (all zeros) is charged as one cut down to nothing: whoever sends
        # it, its weight can only shorten the step, which the step-normalised credit does
        # not see (leaving it out changes nothing, so its credit is exactly 0). A non-finite
        # row has the factor 0 already.
        charged_factors = np.where(norms == 0, 0.0, bound_factors)
        loo, worse = self._checked_credit(
            round_input, gradients, proposal, ref, checked, first_order, data_size, charged_factors
        )
        rejected = fell_back or worse
        applied = ref.weights if rejected else proposal
        credit = np.nan_to_num(loo.credit, nan=0.0, posinf=MAX_CREDIT, neginf=-MAX_CREDIT)
        if not warm:
            applied, vetoed, descended = round_guards(
                round_input, gradients, applied, loo, ref.features, s
            )
        else:
            vetoed, descended = None, False
        # The policy's weights stay its memory (the relapse guard caps a node's rise from
        # them, and a node at 0 would count as absent and go uncapped); only this round's
        # step leaves out an update the noise test marks.
        stepped = without_noise_like(applied, noise_like) if s.noise_exclude else applied
        # A wildly harmful node (a scaled sign flip) can move the loss by tens of nats;
        # clipping Δ keeps g^Δ finite in float32 without changing any ordering that matters.
        delta = np.clip(credit, -MAX_CREDIT, MAX_CREDIT)
        rewards = s.reward_scale * (np.power(s.reward_base, delta) - 1.0)
        self._update_running_credit(
            self._evidence(round_input, gradients, credit),
            data_size,
            applied,
            present,
            charged_factors,
            ref,
            noise_like,
        )
        full_probabilities = expand_to_roster(applied, present)
        reward_row = np.zeros(roster_size, dtype=np.float32)
        reward_row[present] = rewards
        self.pending = {
            "x": x,
            "mask": present.copy(),
            "anchor": anchor,
            "action": full_probabilities.astype(np.float32),
            "reference": expand_to_roster(ref.weights, present).astype(np.float32),
            "rejected": np.array(float(rejected), dtype=np.float32),
            "reward": reward_row,
        }
        combined = second_gradient(stepped, gradients)
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
            "reference_is_data_size": float(ref.chosen == 1),
            "credit_kept": self._diagnostics_shrinkage,
            "vetoed": float(vetoed is not None),
            "descent_chosen": float(descended),
            "noise_like_nodes": float(np.sum(noise_like)),
        }
        reported = full_probabilities if stepped is applied else expand_to_roster(stepped, present)
        return Aggregation(probabilities=reported, second_gradient=combined)

    def _bounded_updates(
        self, round_input: RoundInput
    ) -> tuple[FloatArray, np.ndarray, np.ndarray, np.ndarray]:
        """The first gradients after norm bounding, each one's bound factor and norm, and
        which look like noise to the others
        (:func:`~accord.aggregation.noise_test.noise_like_rows`)."""
        s = self.settings
        rows = round_input.first_gradients
        noise_like: np.ndarray | None = None
        if s.noise_test_p > 0 and coordinate_step(*rows.shape) == 1:
            # One pass over the rows gives both their norms and the noise test's Gram
            # matrix (cosines, which norm bounding does not change).
            gram = row_gram(rows)
            norms = gram_norms(gram)
            noise_like = noise_like_rows_of_gram(gram, rows.shape[1], s.noise_test_p)
        else:
            norms = row_norms(rows)
        gradients, bound_factors = bound_norms(rows, s.norm_bound, norms=norms)
        if noise_like is None:
            noise_like = noise_like_rows(gradients, s.noise_test_p)
        return gradients, bound_factors, norms, noise_like

    def _ensure_state(self, round_input: RoundInput) -> tuple[Replay, np.ndarray]:
        """The replay buffer, the log data-size prior, the running credit and evidence,
        made on the first round (the roster is known then); returns (replay, log prior)."""
        roster_size = len(round_input.roster)
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
        return self.replay, self.log_prior

    def _reference(
        self,
        round_input: RoundInput,
        gradients: FloatArray,
        bound_factors: np.ndarray,
        data_size: np.ndarray,
        check: bool,
        first_order: ValidationGradientFn | None,
    ) -> _Reference:
        """The node features and the reference weights: Hedge-LOO's on this policy's
        credit or (when the choice is on, and they validate no clearly worse) the data-size
        weights, scored in the features' batched pass when the safety check needs it (or,
        with a first-order alone feature, marked to be scored in the credit's pass).
        ``first_order``: the validation gradient when the credit is first-order."""
        assert round_input.validate is not None
        assert self.previous_probabilities is not None and self.running_credit is not None
        assert self.log_prior is not None
        s = self.settings
        present = round_input.present
        hedge, _ = _finite_probabilities(
            bounded_prior_softmax(
                self.log_prior[present],
                s.reference_learning_rate * self._reference_credit(present),
                s.bound,
                s.reference_upper_bound,
            ),
            data_size,
        )
        choose = s.data_size_reference
        candidates = [hedge, data_size] if choose else [hedge]
        scored = check or choose
        alone_first_order = (
            first_order is None
            and s.alone_method == "first-order"
            and round_input.validation_gradient is not None
        )
        # With a first-order alone feature the features' pass scores no candidate: the
        # reference is scored in the credit's pass instead, one validation call a round.
        deferred = scored and alone_first_order and not choose
        features = node_features(
            round_input.validate,
            round_input.global_weights,
            gradients,
            s.server_learning_rate,
            self.previous_second_gradient,
            len(round_input.roster) * self.previous_probabilities[present],
            self.running_credit[present] * (1.0 - s.credit_decay),
            bound_factors=bound_factors,
            candidate_gradients=(
                np.stack([second_gradient(c, gradients) for c in candidates])
                if scored and not deferred
                else None
            ),
            validation_gradient=round_input.validation_gradient
            if alone_first_order
            else first_order,
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
        samples = features.candidate_sample_losses
        scored_here = scored and not deferred
        return _Reference(
            weights=candidates[chosen],
            chosen=chosen,
            features=features,
            loss=float(features.candidate_losses[chosen]) if scored_here else None,
            sample_losses=samples[chosen] if scored_here and samples is not None else None,
            deferred=deferred,
        )

    def _propose(
        self,
        x: np.ndarray,
        anchor: np.ndarray,
        log_prior: np.ndarray,
        reference: np.ndarray,
        round_input: RoundInput,
    ) -> tuple[np.ndarray, bool]:
        """The actor's weights (with exploration noise, bounded around the anchor, their
        rise capped), or the reference when they are not finite: (weights, fell back)."""
        assert self.previous_probabilities is not None
        s = self.settings
        present = round_input.present
        scores_np = self.actor.scores(x, present).astype(np.float64)[present]
        sigma = self._exploration_sigma()
        if sigma > 0:
            scores_np = scores_np + sigma * self.rng.standard_normal(scores_np.shape)
        proposal = bounded_prior_softmax(
            anchor[present].astype(np.float64), scores_np, s.bound, s.upper_bound
        )
        proposal = cap_rise(proposal, self.previous_probabilities[present], log_prior, s.max_rise)
        proposal, fell_back = _finite_probabilities(proposal, reference)
        if fell_back:
            logger.warning(
                "round %d: the actor proposed non-finite weights; applying the reference",
                round_input.round_index + 1,
            )
        return proposal, fell_back

    def _checked_credit(
        self,
        round_input: RoundInput,
        gradients: FloatArray,
        proposal: np.ndarray,
        ref: _Reference,
        check: bool,
        first_order: ValidationGradientFn | None,
        data_size: np.ndarray,
        charged_factors: np.ndarray,
    ) -> tuple[LeaveOneOut, bool]:
        """The leave-one-out credit of the proposal and, with ``check``, the safety test:
        a proposal clearly worse than the reference is rejected and the credit is the
        reference's. Returns (credit, rejected)."""
        assert round_input.validate is not None
        s = self.settings
        step_normalised = s.credit == "step-normalised"

        def lift_to(weights: np.ndarray) -> np.ndarray | None:
            return lift_targets(weights, data_size, charged_factors, s.lift_below)

        reference_row = None
        if ref.deferred and check:
            reference_row = applied_step(
                round_input.global_weights, ref.weights, gradients, s.server_learning_rate
            )[None, :]
        loo = leave_one_out_credit(
            round_input.validate,
            round_input.global_weights,
            proposal,
            gradients,
            s.server_learning_rate,
            step_normalised=step_normalised,
            validation_gradient=first_order,
            lift_to=lift_to(proposal),
            extra_rows=reference_row,
        )
        if not check:
            return loo, False
        self.proposals += 1
        reference_loss, reference_samples = ref.loss, ref.sample_losses
        if loo.extra_scores is not None:
            reference_loss = float(loo.extra_scores.losses[0])
            extra_samples = loo.extra_scores.sample_losses
            reference_samples = None if extra_samples is None else np.asarray(extra_samples[0])
        if loo.sample_losses_after is not None and reference_samples is not None:
            rejected = clearly_worse(loo.sample_losses_after, reference_samples, s.safety_k)
        else:  # no per-sample losses: compare the means
            assert reference_loss is not None
            rejected = clearly_worse(
                np.array([loo.loss_after]), np.array([reference_loss]), s.safety_k
            )
        if not rejected:
            return loo, False
        self.rejections += 1
        return (
            leave_one_out_credit(
                round_input.validate,
                round_input.global_weights,
                ref.weights,
                gradients,
                s.server_learning_rate,
                step_normalised=step_normalised,
                validation_gradient=first_order,
                lift_to=lift_to(ref.weights),
            ),
            True,
        )

    def _update_running_credit(
        self,
        credit: np.ndarray,
        data_size: np.ndarray,
        applied: np.ndarray,
        present: np.ndarray,
        bound_factors: np.ndarray,
        ref: _Reference,
        noise_like: np.ndarray,
    ) -> None:
        """Fold this round's evidence into each node's running credit (the reference's
        memory): :func:`~accord.aggregation.actor_critic_credit.fold_evidence`."""
        assert self.running_credit is not None
        assert self.evidence_mean is not None and self.evidence_variance is not None
        cosines = None
        if self.previous_second_gradient is not None:
            cosines = ref.features.values[:, FEATURE_NAMES.index("cosine_previous")]
        fold_evidence(
            RunningCredit(
                self.running_credit, self.evidence_mean, self.evidence_variance, self.credit_scale
            ),
            self.settings,
            credit,
            data_size=data_size,
            applied=applied,
            present=present,
            bound_factors=bound_factors,
            cosines=cosines,
            noise_like=noise_like,
        )

    def _evidence(
        self, round_input: RoundInput, gradients: FloatArray, credit: np.ndarray
    ) -> np.ndarray:
        """What the running credit learns from this round (the ``evidence`` setting): the
        leave-one-out credit, each node's descent alignment, or the two at equal scale."""
        kind = self.settings.evidence
        if kind == "leave-one-out":
            return credit
        if round_input.validation_gradient is None:
            if not self._warned_no_gradient:
                logger.warning(
                    "evidence %r needs the validation loss's gradient, which this run does "
                    "not give; the running credit uses the leave-one-out credit",
                    kind,
                )
                self._warned_no_gradient = True
            return credit
        at_weights = round_input.validation_gradient(round_input.global_weights)
        descent = descent_alignment(gradients, at_weights.gradient)
        if kind == "descent":
            return descent

        def unit(values: np.ndarray) -> np.ndarray:
            return np.asarray(values / max(float(np.mean(np.abs(values))), 1e-30))

        return np.asarray(unit(credit) + unit(descent))

    def _reference_credit(self, present: np.ndarray) -> np.ndarray:
        """The running credit the reference acts on
        (:func:`~accord.aggregation.actor_critic_credit.reference_credit`)."""
        assert self.running_credit is not None and self.evidence_variance is not None
        credit, keep = reference_credit(
            self.running_credit[present], self.evidence_variance[present], self.settings
        )
        if keep is not None:
            self._diagnostics_shrinkage = keep
        return credit

    # -- learning

    def learn(self, feedback: RoundFeedback) -> None:
        """Every ``learn_every`` rounds once the replay holds ``warmup_rounds`` rounds, the
        critics' and the actor's update
        (:func:`~accord.aggregation.actor_critic_update.td3_update`)."""
        s = self.settings
        if not s.learning or self.replay is None or self.replay.size < s.warmup_rounds:
            return
        if self.rounds_seen % s.learn_every != 0:
            return
        started = time.perf_counter()
        critic_losses = td3_update(self, self.replay, self.rng, s)
        self.updates += 1
        self._diagnostics["policy_learn_seconds"] = time.perf_counter() - started
        if critic_losses:
            self._diagnostics["critic_loss"] = float(np.mean(critic_losses))

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
            "credit_scale": self.credit_scale,
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
        self.credit_scale = np.asarray(state.get("credit_scale", np.zeros(1)), dtype=np.float64)
        self.rounds_seen = int(state["rounds_seen"])
        self.updates = int(state["updates"])
        self.proposals = int(state["proposals"])
        self.rejections = int(state["rejections"])
