"""The Actor-Critic's settings (:class:`ActorCriticSettings`), one field per knob, validated
when built. Light on purpose: no torch, so a config file or a ``--help`` can use it; the
policy itself is :mod:`accord.aggregation.actor_critic`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from accord._validation import require_choice, require_int, require_number, require_probability
from accord.aggregation.credit import CREDIT_METHODS
from accord.errors import ConfigurationError

__all__ = [
    "ANCHORS",
    "CREDITS",
    "EVIDENCE",
    "MAX_CREDIT",
    "MAX_REWARD",
    "MODES",
    "ActorCriticSettings",
]

MODES = ("patent", "rich")
EVIDENCE = ("leave-one-out", "descent", "both")
ANCHORS = ("reference", "data-size")
CREDITS = ("step-normalised", "renormalised")

#: Largest |B − B₋ᵢ| (in nats of validation loss) that enters the rich mode's reward.
MAX_CREDIT = 10.0

#: Largest reward ``reward_scale · reward_base^MAX_CREDIT`` the settings accept: the critics
#: learn in float32 and square their errors, which overflow to inf past about 1e19.
MAX_REWARD = 1e15


@dataclass(frozen=True)
class ActorCriticSettings:
    """Every hyper-parameter of the Actor-Critic, with its default.

    - ``mode``: ``rich`` (default) or ``patent``.
    - ``reward_base`` g ≥ 1 of the reward ``g^Δ`` (default 2.0).
    - ``reward_scale`` c: the critics learn from ``c·(r − 1)`` (default 100.0).
    - ``discount`` γ (default 0.3; DESIGN found 0.9 worse).
    - ``critics``: how many critics, the target takes their minimum (default 2, TD3).
    - ``hidden``: width of every hidden layer (default 16).
    - ``actor_learning_rate`` (default 1e-3), ``critic_learning_rate`` (default 3e-3), Adam.
    - ``critic_steps`` per update (default 1); ``policy_delay``: critic steps per actor step
      (default 1); ``learn_every``: rounds per update (default 4); ``batch_size`` of
      transitions (default 32); ``replay_capacity`` (default 1000); ``warmup_rounds``
      before learning starts (default 3).
    - ``target_update`` τ of the soft target update (default 0.05).
    - ``exploration_noise`` σ₀ on the scores (default 0.3), multiplied by
      ``exploration_decay`` every round (default 0.97).
    - ``target_noise`` and ``target_noise_clip`` of TD3's target smoothing (0.2, 0.5).
    - ``kl_weight`` λ of the pull toward the anchor (default 0.5).
    - ``credit_decay`` δ of the running leave-one-out credit (default 0.9).
    - ``bound`` b: a node falls at most b nats below its anchor (default 4.0);
      ``upper_bound``: it rises at most this many nats above it (default 4.0).
    - ``learning``: False freezes the networks (the no-learning control; default True).
    - ``server_learning_rate``: must match the round's η_server (default 1.0).
    - ``seed`` of initialisation, noise and replay sampling (default 0).

    Safety and robustness (``rich`` mode; each has a setting that switches it off):

    - ``anchor``: ``reference`` (default) or ``data-size``: what the actor's scores move
      away from, and what the KL term pulls toward.
    - ``reference_learning_rate`` η of the reference, Hedge-LOO's rule
      ``softmax(log n_i + b·tanh(η·C_i / b))`` on the running credit C (default 1.0, as
      Hedge-LOO's).
    - ``robust_start``: apply the reference during the warm-up (default True).
    - ``safety``: reject a proposal clearly worse than the reference (default True);
      ``safety_k`` k: "clearly worse" is a mean per-sample validation loss difference above
      k standard errors (default 2.0); ``imitation_weight`` β of the pull toward the
      reference on rejected rounds (default 1.0).
    - ``norm_bound`` c: first gradients longer than c × the median norm of the non-zero
      updates are scaled down to it (default 2.0; 0 switches bounding off). Before
      2026-12-04 the median counted zero updates too: with 5 free riders of 10 it was half
      the shortest honest norm, every honest node but one was bounded and penalised each
      round, and the riders ended with 97 % of the weight in 2 of 3 seeds.
    - ``credit``: ``step-normalised`` (default; ``G₋ᵢ`` keeps ``G``'s length) or
      ``renormalised`` (the original, which pays free riders for damping).
    - ``max_rise``: the most a node's offset from its prior may rise in one round, in nats
      (default 0.25; 0 switches the guard off).
    - ``harm_decay``: the decay of a *negative* running credit (default 0.97; set it to
      ``credit_decay`` to switch the asymmetry off). A node held down for harm is not
      forgotten within ten rounds; positive credit still lifts it at the usual rate. The
      running credit never falls below ``−2·bound``, where the weight is already at its
      floor, so a node whose fault switched off climbs back within about 20 rounds.
    - ``evidence_at_share``: the running credit adds each node's credit rescaled from its
      weight to its data share (default False): leave-one-out credit shrinks with the
      weight, so a suppressed node's record fades. Measured on the issue's scenarios it
      let suppressed noise and scaled nodes climb back more often than it prevented it.
      ``evidence_max_gain``: the largest factor that rescaling may apply (default 54.6, e⁴).
    - ``bound_penalty``: each round, ``bound_penalty · log(factor)`` is added to the running
      credit of a node whose update was scaled down by ``factor`` (default 3.0 since
      2026-12-04, 1.0 before; 0 off). The lift (``lift_below``) skips such a node, so this
      charge is what keeps a bounded attacker down once the reference lifts the honest
      nodes less (``reference_upper_bound``). An
      empty update (all zeros) is charged as one cut down to nothing, ``log(1e-6)``:
      leaving it out changes nothing, so its credit is exactly 0, and its weight can only
      shorten the step. Without that charge, free riders holding half the data kept 57–59 %
      of their share in one seed of five (the target is under 50 %).
    - ``noise_test_p``: each round, an update that puts no more of its length in the span
      of the other updates than isotropic noise would (a χ² test, see
      :mod:`accord.aggregation.noise_test`; ``noise_test_p`` is the chance that such noise
      passes) earns no positive credit that round and is charged ``noise_penalty`` (in
      units of a round's mean evidence), as long as most updates pass the test (default
      0.05; 0 off; ``noise_penalty`` default 1.0). Late in training leaving a noise node
      out lengthens the honest part of the step, which the leave-one-out credit paid as if
      the node had damped an overshoot: nodes that turned to noise after 20 trusted rounds
      kept 53 % of the weight. At p = 1e-6 the bar is higher and honest nodes of converged
      models were flagged in 7.5 % of their rounds (hard noise: −2.9 points); at 0.05,
      0.5–1 %.
    - ``noise_exclude``: an update the noise test marks in this round gets no weight in
      this round's step (the others renormalised; default True since 2026-12-05, False
      before). The charge above acts from the next round on, and the lift pays such a node
      in its honest rounds: without this, nodes that send noise in a random half of the
      rounds held 31 % of the weight in one seed of three (digits, 60 rounds), and their
      noise was applied at that weight. The policy's memory keeps the unmarked weights
      (the relapse guard caps a node's rise from them).
    - ``scale_memory``: a round's credit is measured in units of
      ``max(mean |credit|, scale_memory × the last round's unit)`` (default 0, off: each
      round's own mean). Once training converges every node's credit is noise, and scaled
      to unit size that noise counts as much as an attack did early on: on breast cancer
      honest nodes drift to the floor of the running credit (harm fades more slowly than
      good credit) and a few nodes take the weight. At 0.95 the full zoo passed two more
      weight checks (31 against 29) and gained 0.06 point on average, but a held-down
      attacker's record then fades once the credit shrinks faster than the unit: with 2
      nodes, one a sign flipper, the flipper held 4–7 % of the weight in mid-run instead
      of 0.2 % and accuracy fell from 80.1 to 71.4 % (3 seeds, 60 rounds). After one round
      of huge credit (a candidate step that diverges) the unit would take about 90 rounds
      to fall 100-fold.

    The reference and what its credit is measured at (``reference_upper_bound`` and
    ``lift_below`` are on by default since 2026-12-04; the others are ablations, off;
    measured first on digits, 10 nodes, where Hedge-LOO's rule piles the weight onto 3–4
    nodes on clean non-IID data):

    - ``data_size_reference``: score the data-size weights beside Hedge-LOO's in the
      features' batched pass and take them as the reference unless they validate clearly
      worse (default False); ``data_size_k``: "clearly worse" is a mean per-sample loss
      difference above this many standard errors (default 0: any worse mean). One step's
      validation loss does not see the harm of piling (on clean non-IID data Hedge-LOO's
      step validates slightly *better*), and once the model has converged the data-size
      step ties with it: clean non-IID rose from 95.4 to 95.8 and the switched-off noise
      nodes recovered, but the faulty nodes ended with 3.4 % (3 flippers), 39 % (3 noise)
      and 22–34 % of the weight in 4 of the quick zoo's fault scenarios.
    - ``reference_upper_bound``: how many nats the reference may lift a node above its
      data-size prior (default 2.0 since 2026-12-04, 7 × its share; 4.0 before). Before
      the noise test and the lift, 2.0 raised clean non-IID from 95.4 to 95.8
      and helped every accuracy, but the LOO credit of a noise node is about 0, as is that
      of an under-paid honest node: noise and mixed faults are held down only by the lift
      of the others, and at 2.0 they ended with 10–30 % of the weight. On the full zoo (5
      seeds, 2026-12-04) at 2.5: the floor met in 17 scenarios instead of 12 and within a
      point of the oracle in 17 of 21 (the issue's 80 %), but 15 weight checks failed
      instead of 5 (breast cancer's sign flippers up to 84 % while faulty).
    - ``credit_shrinkage``: shrink the running credit toward its mean by the share of its
      spread across nodes that per-round noise explains (empirical Bayes; default False).
      On clean non-IID data the credit's spread is consistent, not noise (about 90 % of
      it is kept), so it barely moved clean non-IID (95.5) and cost breast cancer's sign
      flip 0.9 point.
    - ``alignment_penalty``: each round, subtract ``alignment_penalty ×``
      :func:`~accord.aggregation.actor_critic.misalignment`
      (0 for a node at least ``alignment_fraction`` × the median cosine to the last second
      gradient, 1 for an orthogonal update, up to 2 for an opposed one) from the running
      credit (default 0, off; ``alignment_fraction`` default 0.5). It tells a noise node
      (cosine about 0) from an under-paid honest one, which the leave-one-out credit does
      not. Meant to hold noise down under a smaller ``reference_upper_bound``; on the full
      zoo at 1 with a lift of 2.5 it lost accuracy almost everywhere (floor 8 of 22) and
      the weight checks did not come back (20 pass, 14 fail).
    - ``lift_below``: a node whose weight is below this fraction of its data share is
      credited by lifting it back to its share instead of leaving it out (default 0.5
      since 2026-12-04, 0 off; first-order credit lifts too): leaving out a node near 0 weight
      measures nothing, so a held-down attacker's record fades and a reformed node's cannot
      grow. A node whose update was cut down to the norm bound, or was empty, is not lifted
      (:func:`~accord.aggregation.actor_critic_credit.lift_targets`). Off by default until
      the noise test: the lift paid noise nodes (their lift damps an overshooting step),
      and a scaled node's honest direction.
    - ``evidence``: what each round adds to the running credit: ``leave-one-out`` (default,
      the leave-one-out credit), ``descent`` (each node's cosine to the validation loss's
      gradient at ``w_t``: how well its own update descends the server's loss, whatever
      weight it holds; one backward pass a round) or ``both`` (the two, each scaled by its
      mean magnitude). Leave-one-out credit shrinks with a node's weight, so a node held
      down cannot earn its way back by it and the large nodes of non-IID data are paid for
      their size. Measured on 14 scenarios of the zoo (3 seeds): ``descent`` raised the
      accuracy in 10 (clean non-IID 95.7 → 96.5, intermittent sign flips 84.4 → 85.7) and
      cost 2.3 points on shards noise, but near convergence the cosines are noise, and
      faulty nodes regained weight (sign flippers on breast cancer up to 60 % while
      faulty, and the weight checks failed in 10 scenarios instead of 5), so it stays
      off; see docs/learning-quality.md.
    - ``veto_k`` (default 0, off): each round, of the leave-one-out candidates the credit
      already scored, the one that validates best is applied instead when the step with
      its node validates clearly worse (``veto_k`` standard errors of the paired
      per-sample losses): a node that strikes in some rounds is left out in those rounds,
      at no extra validation cost. Measured on the full zoo (5 seeds) at 3: Dirichlet 0.1
      label flips 87.9 → 89.9 and late label flips 95.2 → 95.6, but shards noise, hard
      noise and 45 % noise lost 0.3–0.45 point and no target moved (at 2: the same, with
      hard noise −0.9), so it stays off.
    - ``descent_k`` (default 0, off): each round Zeno's weights, from the features' alone
      losses (the best 60 % of the nodes by ``L(w) − L(w − η g_i) − 0.0005‖g_i‖²``, at
      their data shares), are scored (one more validation row) and applied when they
      validate clearly better (``descent_k`` standard errors). Measured on the full zoo
      at 2: accuracy +0.12 point on average (intermittent sign flips 85.1 → 85.8,
      Dirichlet 0.1 87.9 → 89.6), the floor met in 13 scenarios of 21 instead of 12,
      within a point of the oracle in 13 of 20 instead of 12, no loss to FLTrust instead
      of 3, but Zeno keeps noise nodes and norm-bounded scaled nodes: the weight checks
      passed 18 times instead of 26 (noise nodes up to 75 % while faulty), so it stays
      off.
    - ``alone_method`` (default ``first-order``): how the alone feature (each node's step
      alone, the first feature) is measured. ``first-order`` takes it as ``−η ∇L(w)·g_i``
      from one backward pass at ``w``, and the reference is scored in the credit's batched
      pass: one validation call a round. ``exact`` scores each node's step (N more rows,
      in a second call with the reference), as before 2026-12-04; it needs no gradient,
      and a driver that gives none gets it whatever the setting. On digits (10 nodes) the
      policy time is 2.8 × Hedge-LOO's instead of 3.3 ×. On the full zoo (5 seeds) the
      two are alike within the zoo's own noise: accuracy −0.006 point on average, weight
      checks 29 pass instead of 28, floor 12 of 22 instead of 13, within a point of the
      oracle 12 of 21 instead of 13, where two runs of the exact default with the
      exploration noise changed by 1e-5 gave 14 and 14, 11 and 12, 27 and 27.
    - ``credit_method``: how the features and the leave-one-out credit are measured:
      ``exact`` (``2N + 2`` scored candidates), ``first-order`` (two backward passes and
      N dot products) or ``auto`` (default: first-order above 32 nodes or 20M candidate
      floats, see :func:`accord.aggregation.credit.credit_method_for`).
    """

    mode: str = "rich"
    reward_base: float = 2.0
    reward_scale: float = 100.0
    discount: float = 0.3
    critics: int = 2
    hidden: int = 16
    actor_learning_rate: float = 1e-3
    critic_learning_rate: float = 3e-3
    critic_steps: int = 1
    policy_delay: int = 1
    learn_every: int = 4
    batch_size: int = 32
    replay_capacity: int = 1000
    warmup_rounds: int = 3
    target_update: float = 0.05
    exploration_noise: float = 0.3
    exploration_decay: float = 0.97
    target_noise: float = 0.2
    target_noise_clip: float = 0.5
    kl_weight: float = 0.5
    credit_decay: float = 0.9
    bound: float = 4.0
    upper_bound: float = 4.0
    learning: bool = True
    server_learning_rate: float = 1.0
    seed: int = 0
    anchor: str = "reference"
    reference_learning_rate: float = 1.0
    robust_start: bool = True
    safety: bool = True
    safety_k: float = 2.0
    imitation_weight: float = 1.0
    norm_bound: float = 2.0
    credit: str = "step-normalised"
    max_rise: float = 0.25
    harm_decay: float = 0.97
    evidence_at_share: bool = False
    evidence_max_gain: float = 54.6
    bound_penalty: float = 3.0
    data_size_reference: bool = False
    data_size_k: float = 0.0
    reference_upper_bound: float = 2.0
    credit_shrinkage: bool = False
    alignment_penalty: float = 0.0
    credit_method: str = "auto"
    alignment_fraction: float = 0.5
    lift_below: float = 0.5
    evidence: str = "leave-one-out"
    veto_k: float = 0.0
    descent_k: float = 0.0
    alone_method: str = "first-order"
    noise_test_p: float = 0.05
    noise_penalty: float = 1.0
    noise_exclude: bool = True
    scale_memory: float = 0.0

    def __post_init__(self) -> None:
        require_choice("mode", self.mode, MODES)
        require_number("reward_base", self.reward_base, minimum=1.0)
        require_number("reward_scale", self.reward_scale, minimum=0.0, exclusive_minimum=True)
        _require_float32_reward(self.reward_scale, self.reward_base)
        require_probability("discount", self.discount)
        require_int("critics", self.critics, minimum=1)
        require_int("hidden", self.hidden, minimum=1)
        require_number(
            "actor_learning_rate", self.actor_learning_rate, minimum=0.0, exclusive_minimum=True
        )
        require_number(
            "critic_learning_rate", self.critic_learning_rate, minimum=0.0, exclusive_minimum=True
        )
        require_int("critic_steps", self.critic_steps, minimum=0)
        require_int("policy_delay", self.policy_delay, minimum=1)
        require_int("learn_every", self.learn_every, minimum=1)
        require_int("batch_size", self.batch_size, minimum=1)
        require_int("replay_capacity", self.replay_capacity, minimum=1)
        require_int("warmup_rounds", self.warmup_rounds, minimum=1)
        require_probability("target_update", self.target_update)
        require_number("exploration_noise", self.exploration_noise, minimum=0.0)
        require_probability("exploration_decay", self.exploration_decay)
        require_number("target_noise", self.target_noise, minimum=0.0)
        require_number("target_noise_clip", self.target_noise_clip, minimum=0.0)
        require_number("kl_weight", self.kl_weight, minimum=0.0)
        require_probability("credit_decay", self.credit_decay)
        require_number("bound", self.bound, minimum=0.0, exclusive_minimum=True)
        require_number("upper_bound", self.upper_bound, minimum=0.0, exclusive_minimum=True)
        require_number(
            "server_learning_rate", self.server_learning_rate, minimum=0.0, exclusive_minimum=True
        )
        require_int("seed", self.seed, minimum=0)
        for name in (
            "learning",
            "robust_start",
            "safety",
            "evidence_at_share",
            "data_size_reference",
            "credit_shrinkage",
            "noise_exclude",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"{name}: expected true or false, got {getattr(self, name)!r}"
                )
        require_choice("anchor", self.anchor, ANCHORS)
        require_number("reference_learning_rate", self.reference_learning_rate, minimum=0.0)
        require_number("safety_k", self.safety_k, minimum=0.0)
        require_number("imitation_weight", self.imitation_weight, minimum=0.0)
        require_number("norm_bound", self.norm_bound, minimum=0.0)
        if 0.0 < self.norm_bound < 1.0:
            raise ConfigurationError(
                f"norm_bound: expected 0 (off) or at least 1 (times the median norm), "
                f"got {self.norm_bound!r}"
            )
        require_choice("credit", self.credit, CREDITS)
        require_choice("credit_method", self.credit_method, CREDIT_METHODS)
        require_number("max_rise", self.max_rise, minimum=0.0)
        require_probability("harm_decay", self.harm_decay)
        self._check_ablations()

    def _check_ablations(self) -> None:
        """The knobs of the ablations (most off by default)."""
        require_number("bound_penalty", self.bound_penalty, minimum=0.0)
        require_number("evidence_max_gain", self.evidence_max_gain, minimum=1.0)
        require_number("data_size_k", self.data_size_k, minimum=0.0)
        require_number("reference_upper_bound", self.reference_upper_bound, minimum=0.0)
        require_number("alignment_penalty", self.alignment_penalty, minimum=0.0)
        require_number(
            "alignment_fraction", self.alignment_fraction, minimum=0.0, exclusive_minimum=True
        )
        require_number("lift_below", self.lift_below, minimum=0.0, maximum=1.0)
        require_choice("evidence", self.evidence, EVIDENCE)
        require_number("veto_k", self.veto_k, minimum=0.0)
        require_number("descent_k", self.descent_k, minimum=0.0)
        require_choice("alone_method", self.alone_method, ("exact", "first-order"))
        require_number("noise_test_p", self.noise_test_p, minimum=0.0, maximum=0.5)
        require_number("scale_memory", self.scale_memory, minimum=0.0, maximum=1.0)
        require_number("noise_penalty", self.noise_penalty, minimum=0.0)


def _require_float32_reward(scale: float, base: float) -> None:
    """The largest reward, ``scale · base^MAX_CREDIT``, at most :data:`MAX_REWARD`."""
    largest = math.log10(scale) + MAX_CREDIT * math.log10(base)
    if largest > math.log10(MAX_REWARD):
        raise ConfigurationError(
            f"reward_scale and reward_base: the largest reward, reward_scale · "
            f"reward_base^{MAX_CREDIT:g}, must be at most {MAX_REWARD:g} (the critics learn in "
            f"float32); got {scale:g} · {base:g}^{MAX_CREDIT:g} = 1e{largest:.0f}"
        )
