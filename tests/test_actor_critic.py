"""The Actor-Critic: reward, settings, determinism, checkpoints, and that it learns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from accord.aggregation.actor_critic import ActorCriticSettings, make_actor_critic, reward
from accord.data.faults import FaultSpec
from accord.errors import ConfigurationError
from accord.scenario import ScenarioSettings
from accord.simulation import Simulation, SimulationSettings, StopConditions


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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mode", "literal"),
        ("discount", 1.5),
        ("critics", 0),
        ("kl_weight", -1.0),
        ("learning", "yes"),
        ("exploration_decay", 2.0),
    ],
)
def test_every_setting_is_validated(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        ActorCriticSettings(**{field: value})


def _settings(policy_seed: int = 0, rounds: int = 8, faulty: int = 3) -> SimulationSettings:
    return SimulationSettings(
        scenario=ScenarioSettings(fault=FaultSpec("label-flip", faulty), seed=policy_seed),
        stop=StopConditions(max_rounds=rounds),
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


def test_rich_actor_critic_starves_label_flippers() -> None:
    result = Simulation(_settings(rounds=40), "actor-critic").run()
    faulty = result.faulty_nodes
    assert len(faulty) == 3
    masses = [sum(r.record.probabilities[n] for n in faulty) for r in result.rounds]
    uniform_share = 0.3
    # After enough rounds the flippers hold far less than their uniform share...
    assert max(masses[30:]) < uniform_share / 2
    # ...and the frozen control, the same networks without learning, does not.
    frozen = Simulation(_settings(rounds=40), "actor-critic-frozen").run()
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
