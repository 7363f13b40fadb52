"""The Actor-Critic: reward, settings, determinism, checkpoints, and that it learns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from accord.aggregation import RoundInput, ValidationScores
from accord.aggregation.actor_critic import (
    ActorCriticSettings,
    RichActorCritic,
    make_actor_critic,
    misalignment,
    reward,
)
from accord.aggregation.actor_critic_credit import (
    RunningCredit,
    fold_evidence,
    lift_targets,
    without_noise_like,
)
from accord.aggregation.actor_critic_guards import descent_choice, veto
from accord.aggregation.actor_critic_update import actor_loss
from accord.aggregation.combine import bounded_prior_softmax, second_gradient
from accord.aggregation.credit import descent_alignment
from accord.data.faults import FaultSpec
from accord.data.partition import PartitionSpec
from accord.errors import ConfigurationError
from accord.scenario import ScenarioSettings
from accord.simulation import Simulation, SimulationSettings, StopConditions
from accord.types import ValidationGradient


def test_reward_is_g_to_the_accuracy_change() -> None:
    assert reward(2.0, 0.5, 0.75) == pytest.approx(2.0**0.25)
    assert reward(2.0, 0.75, 0.5) == pytest.approx(2.0**-0.25)
    assert reward(1.0, 0.1, 0.9) == 1.0


@pytest.mark.parametrize("g", [0.99, 0.0, -2.0])
def test_reward_base_below_one_is_rejected(g: float) -> None:
    with pytest.raises(ConfigurationError, match=r"reward_base: expected .*>= 1"):
        ActorCriticSettings(reward_base=g)
    with pytest.raises(ConfigurationError, match="reward_base"):
        reward(g, 0.0, 1.0)


def test_a_reward_past_float32_range_is_refused_naming_both_fields() -> None:
    ActorCriticSettings(reward_base=30.0, reward_scale=1.0)  # 30^10 = 5.9e14: accepted
    with pytest.raises(ConfigurationError, match=r"reward_scale and reward_base.*1e\+15.*got"):
        ActorCriticSettings(reward_base=1e10, reward_scale=1e30)
    with pytest.raises(ConfigurationError, match="reward_scale and reward_base"):
        ActorCriticSettings(reward_base=2.0, reward_scale=1e13)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mode", "literal"),
        ("discount", 1.5),
        ("critics", 0),
        ("kl_weight", -1.0),
        ("learning", "yes"),
        ("exploration_decay", 2.0),
        ("anchor", "median"),
        ("credit", "exact"),
        ("safety", "on"),
        ("safety_k", -1.0),
        ("norm_bound", 0.5),
        ("max_rise", -0.1),
        ("harm_decay", 1.5),
        ("bound_penalty", -1.0),
        ("learn_every", 0),
        ("evidence_max_gain", 0.5),
        ("data_size_reference", "yes"),
        ("data_size_k", -1.0),
        ("reference_upper_bound", -0.5),
        ("credit_shrinkage", 1),
        ("alignment_penalty", -1.0),
        ("alignment_fraction", 0.0),
        ("evidence", "cosine"),
        ("veto_k", -1.0),
        ("descent_k", -2.0),
        ("scale_memory", 1.5),
        ("lift_below", -0.1),
        ("noise_exclude", "yes"),
    ],
)
def test_every_setting_is_validated(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        ActorCriticSettings(**{field: value})


def _settings(
    policy_seed: int = 0,
    rounds: int = 8,
    faulty: int = 3,
    actor_critic: ActorCriticSettings | None = None,
) -> SimulationSettings:
    return SimulationSettings(
        scenario=ScenarioSettings(fault=FaultSpec("label-flip", faulty), seed=policy_seed),
        stop=StopConditions(max_rounds=rounds),
        actor_critic=actor_critic or ActorCriticSettings(),
    )


#: The learner alone (no reference to anchor to, start from or fall back to), with the
#: learning budget of the original design.
UNSAFE = ActorCriticSettings(
    anchor="data-size",
    robust_start=False,
    safety=False,
    critic_steps=6,
    policy_delay=2,
    learn_every=1,
)


def _trace(result) -> list[tuple[float | None, tuple[float, ...]]]:
    return [(r.record.test_accuracy, tuple(r.record.probabilities.values())) for r in result.rounds]


@pytest.mark.parametrize("policy", ["actor-critic", "actor-critic-patent"])
def test_same_seed_gives_identical_runs(policy: str) -> None:
    first = Simulation(_settings(), policy).run()
    second = Simulation(_settings(), policy).run()
    assert _trace(first) == _trace(second)


def test_a_resumed_policy_continues_exactly() -> None:
    uninterrupted = Simulation(_settings(rounds=10), "actor-critic").run()
    first_half = Simulation(_settings(rounds=10), "actor-critic")
    for _ in range(5):
        first_half.run_round()
    state = first_half.engine.state_dict()
    resumed = Simulation(_settings(rounds=10), "actor-critic")
    resumed.engine.load_state_dict(state)
    records = [resumed.run_round() for _ in range(5)]
    expected = uninterrupted.rounds[5:]
    assert [r.record.probabilities for r in records] == [r.record.probabilities for r in expected]
    assert [r.record.test_accuracy for r in records] == [r.record.test_accuracy for r in expected]


def test_the_initial_policy_is_fedavg() -> None:
    frozen = Simulation(_settings(rounds=1), "actor-critic-frozen").run()
    fedavg = Simulation(_settings(rounds=1), "fedavg").run()
    np.testing.assert_allclose(
        list(frozen.rounds[0].record.probabilities.values()),
        list(fedavg.rounds[0].record.probabilities.values()),
        atol=5e-3,
    )


def test_rich_actor_critic_learns_to_starve_label_flippers() -> None:
    # Without the reference, whatever the flippers lose is the actor's doing.
    result = Simulation(_settings(rounds=40, actor_critic=UNSAFE), "actor-critic").run()
    faulty = result.faulty_nodes
    assert len(faulty) == 3
    masses = [sum(r.record.probabilities[n] for n in faulty) for r in result.rounds]
    uniform_share = 0.3
    # After enough rounds the flippers hold far less than their uniform share...
    assert max(masses[30:]) < uniform_share / 2
    # ...and the frozen control, the same networks without learning, does not.
    frozen = Simulation(_settings(rounds=40, actor_critic=UNSAFE), "actor-critic-frozen").run()
    frozen_mass = sum(frozen.rounds[-1].record.probabilities[n] for n in faulty)
    assert frozen_mass > uniform_share * 0.8
    assert result.rounds[-1].record.test_accuracy > frozen.rounds[-1].record.test_accuracy + 0.05


def test_make_actor_critic_picks_the_mode() -> None:
    assert make_actor_critic(ActorCriticSettings(mode="patent")).name == "actor-critic-patent"
    rich = make_actor_critic(dataclasses.replace(ActorCriticSettings(), mode="rich"))
    assert rich.needs_validation


def test_a_wildly_harmful_node_does_not_overflow_the_reward() -> None:
    settings = SimulationSettings(
        scenario=ScenarioSettings(nodes=4, fault=FaultSpec("sign-flip", 1, 50.0), seed=5),
        stop=StopConditions(max_rounds=5),
    )
    result = Simulation(settings, "actor-critic").run()  # warnings are errors here
    assert all(np.isfinite(r.record.validation_loss_after) for r in result.rounds)


def _per_sample_validation(targets: np.ndarray):
    """Per-sample loss = squared distance to that sample's target point."""

    def validate(weights: np.ndarray) -> ValidationScores:
        per_sample = ((weights[:, None, :] - targets[None, :, :]) ** 2).sum(axis=2)
        losses = per_sample.mean(axis=1)
        return ValidationScores(
            losses=losses, accuracies=1.0 / (1.0 + losses), sample_losses=per_sample
        )

    return validate


class _FixedScores(torch.nn.Module):
    """An actor that always gives these scores (to force a proposal)."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.fixed = torch.tensor(scores)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fixed.expand(x.shape[0], -1)

    def scores(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.fixed.numpy().astype(np.float32)


def _per_sample_gradient(targets: np.ndarray):
    """The gradient of :func:`_per_sample_validation`'s mean loss, with its losses."""

    def gradient(weights: np.ndarray) -> ValidationGradient:
        per_sample = ((weights[None, :] - targets) ** 2).sum(axis=1)
        return ValidationGradient(
            loss=float(per_sample.mean()),
            gradient=(2.0 * (weights - targets.mean(axis=0))).astype(np.float32),
            sample_losses=per_sample,
        )

    return gradient


def _round(
    index: int,
    weights: np.ndarray,
    gradients: np.ndarray,
    validate,
    counts: np.ndarray | None = None,
    validation_gradient=None,
) -> RoundInput:
    return RoundInput(
        round_index=index,
        roster=("a", "b", "c", "bad"),
        sample_counts=np.ones(4) if counts is None else counts,
        present=np.ones(4, dtype=bool),
        global_weights=weights.astype(np.float32),
        first_gradients=gradients.astype(np.float32),
        validate=validate,
        validation_gradient=validation_gradient,
    )


@pytest.mark.parametrize(
    ("alone_method", "with_gradient"),
    [("exact", False), ("exact", True), ("first-order", False), ("first-order", True)],
)
def test_a_clearly_worse_proposal_is_rejected_and_the_reference_applied(
    alone_method: str, with_gradient: bool
) -> None:
    rng = np.random.default_rng(0)
    target = np.array([1.0, 1.0])
    samples = target + 0.1 * rng.normal(size=(200, 2))
    validate = _per_sample_validation(samples)
    gradient = _per_sample_gradient(samples) if with_gradient else None
    policy = RichActorCritic(
        ActorCriticSettings(
            warmup_rounds=2,
            exploration_noise=0.0,
            max_rise=0.0,
            seed=0,
            alone_method=alone_method,
        )
    )
    weights = np.zeros(2)
    for index in range(4):
        if index == 2:  # after the warm-up: the actor piles the weight on the bad node
            policy.actor = _FixedScores([-4.0, -4.0, -4.0, 4.0])
        direction = (weights - target) * 0.3
        gradients = np.stack([direction, direction * 1.1, direction * 0.9, -direction])
        running = None if policy.running_credit is None else policy.running_credit.copy()
        result = policy.aggregate(
            _round(index, weights, gradients, validate, validation_gradient=gradient)
        )
        assert policy.pending is not None
        if index < 2:  # the robust start applies the reference, which the check skips
            assert policy.diagnostics()["rejected"] == 0.0
        else:
            assert running is not None
            reference = bounded_prior_softmax(
                np.zeros(4), running, policy.settings.bound, policy.settings.reference_upper_bound
            )
            assert policy.diagnostics()["rejected"] == 1.0
            np.testing.assert_allclose(result.probabilities, reference, rtol=1e-9)
            assert float(policy.pending["rejected"]) == 1.0
            np.testing.assert_allclose(policy.pending["action"], reference, rtol=1e-6)
        weights = weights - result.second_gradient
    assert policy.diagnostics()["rejection_rate"] == 1.0
    assert policy.state_dict()["rejections"] == 2


def test_probabilities_stay_finite_whatever_the_gradients_and_scores() -> None:
    def validate(weights: np.ndarray) -> ValidationScores:
        losses = np.where(np.abs(weights).max(axis=1) > 1e3, np.inf, 1.0)
        return ValidationScores(losses=losses, accuracies=np.zeros(len(losses)))

    policy = RichActorCritic(ActorCriticSettings(warmup_rounds=1, seed=1))
    gradients = np.array([[1.0, 1.0], [1.0, 0.5], [3e30, -3e30], [0.0, 0.0]])
    for index in range(3):
        if index == 2:
            policy.actor = _FixedScores([float("nan")] * 4)
        result = policy.aggregate(_round(index, np.zeros(2), gradients, validate))
        assert np.all(np.isfinite(result.probabilities))
        assert result.probabilities.sum() == pytest.approx(1.0)
        assert np.all(np.isfinite(result.second_gradient))


def _scenario(dataset: str, nodes: int, partition: PartitionSpec, fault: FaultSpec, seed: int):
    return ScenarioSettings(
        dataset=dataset, nodes=nodes, partition=partition, fault=fault, seed=seed
    )


def test_sign_flippers_holding_a_third_of_the_data_do_not_blow_the_model_up() -> None:
    # Breast cancer, 2 of 8 nodes flip and scale their updates ×4 (35 % of the data):
    # the original design warmed up on data-size weights and diverged.
    settings = SimulationSettings(
        scenario=_scenario(
            "breast-cancer", 8, PartitionSpec("dirichlet", 0.5), FaultSpec("sign-flip", 2), 1
        ),
        stop=StopConditions(max_rounds=30),
    )
    result = Simulation(settings, "actor-critic").run()
    assert all(np.isfinite(r.record.validation_loss_after) for r in result.rounds)
    masses = [sum(r.record.probabilities[n] for n in result.faulty_nodes) for r in result.rounds]
    assert max(masses[3:]) < 0.1
    assert result.rounds[-1].record.test_accuracy > 0.85


def test_an_empty_update_is_charged_as_one_cut_down_to_nothing() -> None:
    # Leaving out an all-zero update changes nothing, so its credit is 0 and, held at its
    # data share, it would only shorten the step: it is charged log(1e-6) per unit of
    # bound_penalty, down to the running credit's floor of -2b.
    rng = np.random.default_rng(0)
    validate = _per_sample_validation(np.array([1.0, 1.0]) + 0.1 * rng.normal(size=(200, 2)))
    direction = np.array([-0.3, -0.3])
    gradients = np.stack([direction, direction * 1.1, direction * 0.9, np.zeros(2)])
    for penalty in (1.0, 0.1, 0.0):
        policy = RichActorCritic(ActorCriticSettings(bound_penalty=penalty, seed=0))
        policy.aggregate(_round(0, np.zeros(2), gradients, validate))
        running = policy.running_credit
        assert running is not None
        # Here every node's leave-one-out credit is about 0 (the same running credit each).
        np.testing.assert_allclose(running[:3], running[0])
        expected = max(-8.0, running[0] + penalty * np.log(1e-6))
        assert running[3] == pytest.approx(expected, abs=1e-6)


def test_the_actors_numpy_scores_are_its_forward_pass() -> None:
    from accord.aggregation.actor_critic_networks import ScoreActor

    torch.manual_seed(0)
    actor = ScoreActor(6, 16)
    with torch.no_grad():
        for parameter in actor.parameters():
            parameter.uniform_(-1.0, 1.0)
    x = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1, 1], dtype=bool)
    with torch.no_grad():
        expected = actor(torch.from_numpy(x)[None], torch.from_numpy(mask)[None])[0].numpy()
    np.testing.assert_allclose(actor.scores(x, mask), expected, atol=1e-5)


def test_a_noise_like_update_earns_no_positive_credit_and_is_charged() -> None:
    settings = ActorCriticSettings(noise_test_p=1e-6, noise_penalty=0.5)
    credit = np.array([1.0, -1.0, 2.0, 0.0])  # mean |credit| 1: increments are the credit
    noise_like = np.array([False, False, True, True])
    memory = RunningCredit(np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(1))
    fold_evidence(
        memory,
        settings,
        credit,
        data_size=np.full(4, 0.25),
        applied=np.full(4, 0.25),
        present=np.ones(4, dtype=bool),
        bound_factors=np.ones(4),
        cosines=None,
        noise_like=noise_like,
    )
    # Node 2 seemed to help (+2): a noise-like update's help is damping, so it earns 0.
    np.testing.assert_allclose(memory.credit, [1.0, -1.0, -0.5, -0.5])


def test_the_lift_skips_bounded_and_empty_updates() -> None:
    weights = np.array([0.01, 0.01, 0.01, 0.30, 0.67])
    share = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    factors = np.array([1.0, 0.4, 0.0, 1.0, 1.0])  # node 1 cut to the bound, node 2 empty
    assert lift_targets(weights, share, factors, 0.0) is None
    np.testing.assert_allclose(lift_targets(weights, share, factors, 0.5), [0.2, 0, 0, 0, 0])


def test_noise_exclude_takes_a_marked_update_out_of_this_rounds_step() -> None:
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    marked = np.array([False, True, False, False])
    np.testing.assert_allclose(without_noise_like(weights, marked), [4 / 7, 0, 2 / 7, 1 / 7])
    assert without_noise_like(weights, None) is weights
    assert without_noise_like(weights, np.zeros(4, dtype=bool)) is weights
    # Every node with weight marked: nothing to renormalise onto, the weights stay.
    only = np.array([0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(without_noise_like(only, marked), only)


def test_noise_exclude_leaves_a_noise_update_out_of_the_step_but_not_out_of_memory() -> None:
    rng = np.random.default_rng(0)
    dim = 2000
    validate = _per_sample_validation(1.0 + 0.1 * rng.normal(size=(50, dim)))
    direction = np.full(dim, -0.3)
    honest = direction + 0.05 * rng.normal(size=(5, dim))
    noise = rng.normal(size=(1, dim)) * np.linalg.norm(direction) / np.sqrt(dim)
    gradients = np.concatenate([honest, noise]).astype(np.float32)
    round_input = RoundInput(
        round_index=0,
        roster=tuple(f"n{i}" for i in range(6)),
        sample_counts=np.ones(6),
        present=np.ones(6, dtype=bool),
        global_weights=np.zeros(dim, dtype=np.float32),
        first_gradients=gradients,
        validate=validate,
    )
    results = {}
    for exclude in (False, True):
        policy = RichActorCritic(ActorCriticSettings(noise_exclude=exclude, warmup_rounds=2))
        results[exclude] = policy.aggregate(round_input)
        assert policy.diagnostics()["noise_like_nodes"] == 1.0
        assert policy.previous_probabilities is not None
        assert policy.previous_probabilities[5] > 0.1  # the policy's own weight, kept
    assert results[False].probabilities[5] > 0.1
    assert results[True].probabilities[5] == 0.0
    assert results[True].probabilities.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(
        results[True].second_gradient, second_gradient(results[True].probabilities, gradients)
    )


def _fold_round(memory: RunningCredit, settings: ActorCriticSettings, credit: np.ndarray) -> None:
    fold_evidence(
        memory,
        settings,
        credit,
        data_size=np.full(credit.size, 1 / credit.size),
        applied=np.full(credit.size, 1 / credit.size),
        present=np.ones(credit.size, dtype=bool),
        bound_factors=np.ones(credit.size),
        cosines=None,
    )


@pytest.mark.parametrize("memory_factor", [0.0, 0.9])
def test_scale_memory_keeps_converged_noise_from_counting_like_an_attack(
    memory_factor: float,
) -> None:
    settings = ActorCriticSettings(scale_memory=memory_factor, credit_decay=0.5)
    memory = RunningCredit(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(1))
    _fold_round(memory, settings, np.array([1.0, -1.0]))  # a strong round: increments ±1
    after_strong = memory.credit.copy()
    _fold_round(memory, settings, np.array([-1e-4, 1e-4]))  # converged: noise reversed
    if memory_factor == 0:
        # Scaled to its own size, the noise undoes the strong round's evidence as much as
        # a round of the same size would.
        np.testing.assert_allclose(memory.credit[0], 0.5 * after_strong[0] - 1.0)
    else:
        # Measured against the remembered scale (0.9 × 1), it barely moves the record.
        np.testing.assert_allclose(memory.credit[0], 0.5 * after_strong[0] - 1e-4 / 0.9)
        assert memory.scale[0] == pytest.approx(0.9)


def test_nodes_trusted_before_they_turn_to_noise_are_held_down() -> None:
    # Digits, 4 of 10 nodes honest for 10 rounds, then isotropic noise. Late in training
    # leaving a noise node out lengthens the honest step, which the leave-one-out credit
    # paid as damping: before the noise test such nodes kept 53 % of the weight (zoo,
    # digits-10-late-noise); the test flags them and they are charged each round.
    fault = FaultSpec("noise", 4, start=10)
    settings = SimulationSettings(
        scenario=_scenario("digits", 10, PartitionSpec("dirichlet", 0.5), fault, 0),
        stop=StopConditions(max_rounds=30),
    )
    simulation = Simulation(settings, "actor-critic")
    result = simulation.run()
    noisy = result.faulty_nodes
    assert len(noisy) == 4
    last = result.rounds[-1].record.probabilities
    assert sum(last[node] for node in noisy) < 0.02
    flagged = [r.record.diagnostics.get("noise_like_nodes", 0.0) for r in result.rounds]
    assert sum(flagged[:10]) == 0  # honest rounds: no node looks like noise
    # Noise rounds: a noise node passes the test at p = 0.05 one round in 20.
    assert sum(flagged[10:]) >= 0.85 * 4 * 20


def test_a_free_rider_ends_below_half_its_share() -> None:
    settings = SimulationSettings(
        scenario=_scenario("wine", 4, PartitionSpec("iid"), FaultSpec("free-rider", 1), 0),
        stop=StopConditions(max_rounds=40),
    )
    simulation = Simulation(settings, "actor-critic")
    result = simulation.run()
    (rider,) = result.faulty_nodes
    counts = {node.node_id: node.sample_count for node in simulation.data.nodes}
    share = counts[rider] / sum(counts.values())
    assert result.rounds[-1].record.probabilities[rider] < share / 2


SKEWED = np.array([10.0, 20.0, 30.0, 40.0])
REFERENCE_UPPER = ActorCriticSettings().reference_upper_bound


def _reference_after(settings: ActorCriticSettings, credit: list[float], gradients: np.ndarray):
    """The weights applied in the second warm-up round (the reference), with the running
    credit set to ``credit`` after the first; and the policy."""
    rng = np.random.default_rng(0)
    validate = _per_sample_validation(np.array([1.0, 1.0]) + 0.1 * rng.normal(size=(200, 2)))
    policy = RichActorCritic(dataclasses.replace(settings, warmup_rounds=5, seed=0))
    weights = np.zeros(2)
    policy.aggregate(_round(0, weights, gradients, validate, SKEWED))
    policy.running_credit = np.array(credit)
    result = policy.aggregate(_round(1, weights, gradients, validate, SKEWED))
    return result.probabilities, policy


def test_on_clean_data_the_reference_is_the_data_size_weights_when_they_validate_no_worse() -> None:
    # Clean data: every node sends the same useful update, so any weights validate alike.
    # Hedge-LOO's rule would still follow the noise in its credit; the choice does not.
    gradients = np.tile(np.array([-0.3, -0.3]), (4, 1))
    credit = [6.0, -6.0, 0.0, 0.0]
    hedge = bounded_prior_softmax(np.log(SKEWED), np.array(credit), 4.0, REFERENCE_UPPER)
    chosen, policy = _reference_after(
        ActorCriticSettings(data_size_reference=True), credit, gradients
    )
    np.testing.assert_allclose(chosen, SKEWED / SKEWED.sum(), rtol=1e-9)
    assert policy.diagnostics()["reference_is_data_size"] == 1.0
    plain, policy = _reference_after(
        ActorCriticSettings(data_size_reference=False), credit, gradients
    )
    np.testing.assert_allclose(plain, hedge, rtol=1e-9)
    assert policy.diagnostics()["reference_is_data_size"] == 0.0


def test_the_reference_stays_hedge_loo_when_the_data_size_weights_validate_worse() -> None:
    # Node "bad" (the largest) pushes away from the target; its credit holds it down.
    gradients = np.array([[-0.3, -0.3], [-0.3, -0.3], [-0.3, -0.3], [0.6, 0.6]])
    credit = [0.0, 0.0, 0.0, -8.0]
    hedge = bounded_prior_softmax(np.log(SKEWED), np.array(credit), 4.0, REFERENCE_UPPER)
    chosen, policy = _reference_after(
        ActorCriticSettings(data_size_reference=True), credit, gradients
    )
    np.testing.assert_allclose(chosen, hedge, rtol=1e-9)
    assert policy.diagnostics()["reference_is_data_size"] == 0.0


def test_the_reference_upper_bound_limits_how_far_credit_lifts_a_node() -> None:
    gradients = np.tile(np.array([-0.3, -0.3]), (4, 1))
    credit = [20.0, 0.0, 0.0, 0.0]
    for upper in (4.0, 1.0, 0.0):
        chosen, _ = _reference_after(
            ActorCriticSettings(reference_upper_bound=upper), credit, gradients
        )
        lift = upper * np.tanh(20.0 / upper) if upper > 0 else 0.0
        lifted = SKEWED * np.exp([lift, 0.0, 0.0, 0.0])
        np.testing.assert_allclose(chosen, lifted / lifted.sum(), rtol=1e-6)


def test_credit_shrinkage_falls_back_to_data_size_when_noise_explains_the_spread() -> None:
    gradients = np.tile(np.array([-0.3, -0.3]), (4, 1))
    credit = [2.0, -2.0, 1.0, -1.0]
    settings = ActorCriticSettings(credit_shrinkage=True)
    rng = np.random.default_rng(0)
    validate = _per_sample_validation(np.array([1.0, 1.0]) + 0.1 * rng.normal(size=(200, 2)))
    for noise, expected in ((100.0, np.zeros(4)), (0.0, np.array(credit))):
        policy = RichActorCritic(dataclasses.replace(settings, warmup_rounds=5))
        policy.aggregate(_round(0, np.zeros(2), gradients, validate, SKEWED))
        policy.running_credit = np.array(credit)
        policy.evidence_variance = np.full(4, noise)
        result = policy.aggregate(_round(1, np.zeros(2), gradients, validate, SKEWED))
        reference = bounded_prior_softmax(np.log(SKEWED), expected, 4.0, REFERENCE_UPPER)
        np.testing.assert_allclose(result.probabilities, reference, rtol=1e-6)


def test_misalignment_scores_orthogonal_and_opposed_updates_against_the_median() -> None:
    cosines = np.array([0.6, 0.5, 0.3, 0.0, -0.5])
    np.testing.assert_allclose(misalignment(cosines, 0.5), [0.0, 0.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(misalignment(np.array([0.3, 0.2, 0.1]), 1.0), [0.0, 0.0, 0.5])
    np.testing.assert_array_equal(misalignment(np.array([-0.1, 0.0, 0.2]), 0.5), np.zeros(3))


def test_an_orthogonal_update_loses_credit_under_the_alignment_penalty() -> None:
    # Nodes a, b, c push toward the target; "bad" sends noise orthogonal to that direction.
    rng = np.random.default_rng(0)
    validate = _per_sample_validation(np.array([1.0, 1.0, 0.0]) + 0.1 * rng.normal(size=(200, 3)))
    gradients = np.array(
        [[-0.3, -0.3, 0.0], [-0.3, -0.25, 0.0], [-0.25, -0.3, 0.0], [0.0, 0.0, 0.4]]
    )
    ends = {}
    for penalty in (0.0, 1.0):
        # The lift off: it would send the orthogonal node to the floor of the running
        # credit with or without the penalty, which is what this test measures.
        settings = ActorCriticSettings(alignment_penalty=penalty, warmup_rounds=5, lift_below=0)
        policy = RichActorCritic(settings)
        weights = np.zeros(3)
        for index in range(4):
            weights = (
                weights
                - policy.aggregate(_round(index, weights, gradients, validate)).second_gradient
            )
        assert policy.running_credit is not None
        ends[penalty] = policy.running_credit.copy()
    # Three rounds with a previous second gradient, one unit of penalty each (decayed);
    # the aligned nodes are not penalised.
    assert ends[1.0][3] < ends[0.0][3] - 1.0
    assert np.all(ends[1.0][:3] > 0)


def test_descent_alignment_is_each_update_s_cosine_to_the_validation_gradient() -> None:
    gradients = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    cosines = descent_alignment(gradients.astype(np.float32), np.array([1.0, 0.0], np.float32))
    np.testing.assert_allclose(cosines, [1.0, 0.0, -1.0, np.sqrt(0.5), 0.0], atol=1e-7)


def test_descent_evidence_credits_a_node_by_its_own_direction_whatever_its_weight() -> None:
    # Nodes a, b, c descend toward the target; "bad" sends an orthogonal update. Under
    # descent evidence each round adds a node's cosine to the validation gradient (scaled
    # by the round's mean): the aligned nodes about 1, the orthogonal one about 0 at first
    # and less once the step it was part of has pushed the weights off the target.
    rng = np.random.default_rng(0)
    targets = np.array([1.0, 1.0, 0.0]) + 0.1 * rng.normal(size=(200, 3))
    validate = _per_sample_validation(targets)

    def validation_gradient(weights: np.ndarray) -> ValidationGradient:
        per_sample = ((weights[None, :] - targets) ** 2).sum(axis=1)
        gradient = 2.0 * (weights[None, :] - targets).mean(axis=0)
        return ValidationGradient(float(per_sample.mean()), gradient.astype(np.float32), per_sample)

    gradients = np.array(
        [[-0.3, -0.3, 0.0], [-0.3, -0.25, 0.0], [-0.25, -0.3, 0.0], [0.0, 0.0, 0.4]]
    )
    policy = RichActorCritic(
        ActorCriticSettings(evidence="descent", warmup_rounds=5, bound_penalty=0.0)
    )
    weights = np.zeros(3)
    for index in range(3):
        round_input = dataclasses.replace(
            _round(index, weights, gradients, validate), validation_gradient=validation_gradient
        )
        weights = weights - policy.aggregate(round_input).second_gradient
    assert policy.running_credit is not None
    assert policy.running_credit[3] <= 0.0
    assert np.all(policy.running_credit[:3] > 1.0)


def _scored(credit: list[float], after: float, candidates: list[float], lifted=None):
    """A LeaveOneOut whose per-sample losses are each mean plus the same spread."""
    from accord.aggregation.credit import LeaveOneOut

    spread = np.random.default_rng(0).normal(0.0, 1.0, 400)
    return LeaveOneOut(
        credit=np.array(credit),
        loss_after=after,
        sample_losses_after=after + spread,
        sample_losses_without=np.array([c + spread + 0.01 * i for i, c in enumerate(candidates)]),
        lifted=None if lifted is None else np.array(lifted),
    )


def test_the_veto_leaves_out_the_node_whose_removal_validates_clearly_better() -> None:
    applied = np.full(4, 0.25)
    # Node 3's removal lowers every sample's loss by 0.5: clearly better.
    assert veto(applied, _scored([0.1, 0.1, 0.0, -0.5], 2.0, [2.1, 2.1, 2.0, 1.5]), 2.0) == 3
    # A gain within the noise (0.01 per sample here, with paired spread 0.01): kept.
    noisy = _scored([0.1, 0.1, 0.0, -0.001], 2.0, [2.1, 2.1, 2.0, 1.999])
    noisy.sample_losses_without[3] += np.random.default_rng(1).normal(0.0, 0.5, 400)
    assert veto(applied, noisy, 2.0) is None
    # Every removal validates worse: nobody is left out.
    assert veto(applied, _scored([0.1, 0.2, 0.3, 0.4], 2.0, [2.1, 2.2, 2.3, 2.4]), 2.0) is None
    # A node already at weight 0 is not "left out" again.
    zero = np.array([1 / 3, 1 / 3, 1 / 3, 0.0])
    assert veto(zero, _scored([0.1, 0.1, 0.0, -0.5], 2.0, [2.1, 2.1, 2.0, 1.5]), 2.0) is None


def test_the_descent_choice_applies_zeno_weights_only_when_they_validate_clearly_better() -> None:
    from accord.aggregation.credit import LeaveOneOut, NodeFeatures

    rng = np.random.default_rng(0)
    target = np.array([1.0, 1.0])
    validate = _per_sample_validation(target + 0.1 * rng.normal(size=(200, 2)))
    weights = np.zeros(2, dtype=np.float32)
    honest = np.array([-0.3, -0.3], dtype=np.float32)  # a step towards the target
    gradients = np.stack([honest, honest, honest * 0.9, -3 * honest, -3 * honest])
    round_input = _round(0, weights, gradients[:4], validate)
    round_input = dataclasses.replace(
        round_input,
        roster=("a", "b", "c", "d", "e"),
        sample_counts=np.ones(5),
        present=np.ones(5, dtype=bool),
        first_gradients=gradients,
    )
    alone = validate(weights[None, :] - gradients).losses - validate(weights[None, :]).losses
    features = NodeFeatures(values=np.zeros((5, 6)), loss_now=0.0, alone_changes=alone)

    def scored(applied: np.ndarray) -> LeaveOneOut:
        step = weights - (applied[:, None] * gradients).sum(axis=0)
        after = validate(step[None, :])
        return LeaveOneOut(np.zeros(5), float(after.losses[0]), after.sample_losses[0])

    # Equal weights let the two harmful nodes undo the step: Zeno's weights keep the three
    # honest nodes (the best 60 %), which validate clearly better, so they are applied.
    equal = np.full(5, 0.2)
    chosen, taken = descent_choice(round_input, gradients, equal, scored(equal), features, 2.0, 1.0)
    assert taken
    np.testing.assert_allclose(chosen, [1 / 3, 1 / 3, 1 / 3, 0.0, 0.0])
    # Weights already on the honest nodes: Zeno's are no clearly better; kept as they are.
    good = np.array([0.4, 0.3, 0.3, 0.0, 0.0])
    kept, taken = descent_choice(round_input, gradients, good, scored(good), features, 2.0, 1.0)
    assert not taken and kept is good


def test_the_actor_s_loss_on_the_critic_pass_s_heads_equals_a_second_critic_pass() -> None:
    # td3_update hands the actor's loss the heads of the critics' own pass (the action
    # enters Q after them), detached; the loss and the actor's gradient must be what a
    # second critic pass without gradients gives, and the critics must get no gradient.
    policy = RichActorCritic(ActorCriticSettings(seed=3))
    replay = policy._new_replay(5)
    rng = np.random.default_rng(0)
    for rejected in (0.0, 1.0, 0.0, 1.0):
        mask = np.array([True, True, False, True, True])
        action = rng.dirichlet(np.ones(5)).astype(np.float32) * mask
        replay.add(
            x=rng.normal(size=(5, 6)).astype(np.float32),
            mask=mask,
            anchor=np.log(np.full(5, 0.2, np.float32)),
            action=action / action.sum(),
            reference=np.full(5, 0.25, np.float32) * mask,
            rejected=np.array(rejected, np.float32),
            reward=rng.normal(size=5).astype(np.float32),
            next_x=rng.normal(size=(5, 6)).astype(np.float32),
            next_mask=mask,
            next_anchor=np.log(np.full(5, 0.2, np.float32)),
        )
    batch = replay.sample(np.random.default_rng(1), 8)
    settings = policy.settings
    grads = []
    for from_critic_pass in (False, True):
        policy.actor.zero_grad()
        policy.critics.zero_grad()
        if from_critic_pass:
            value, baseline = policy.critics.heads_of(batch["x"], batch["mask"])
            heads = (value.detach(), baseline.detach())
        else:
            with torch.no_grad():
                heads = policy.critics.heads_of(batch["x"], batch["mask"])
        loss = actor_loss(policy.actor, heads, batch, settings)
        loss.backward()  # type: ignore[no-untyped-call]
        assert all(p.grad is None or not p.grad.any() for p in policy.critics.parameters())
        grads.append((loss.item(), [p.grad.clone() for p in policy.actor.parameters()]))
    assert grads[0][0] == grads[1][0]
    for first, second in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.equal(first, second)
