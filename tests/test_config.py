"""TOML config files onto the settings dataclasses, and back."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord.aggregation.actor_critic import ActorCriticSettings
from accord.aggregation.hedge import HedgeLooSettings
from accord.config import (
    DEFAULT_POLICIES,
    SimulateConfig,
    load_simulate_config,
    simulate_config_to_toml,
)
from accord.data.faults import FaultSpec
from accord.data.partition import PartitionSpec
from accord.errors import ConfigurationError
from accord.rounds import RoundSettings
from accord.scenario import ScenarioSettings
from accord.simulation import SimulationSettings, StopConditions
from accord.training import LocalTrainingSettings, ModelSpec

FULL = """
policies = ["hedge-loo", "median"]

[scenario]
dataset = "wine"
nodes = 6
validation_fraction = 0.15
test_fraction = 0.25
seed = 7

[scenario.partition]
kind = "shards"
alpha = 2          # an integer where a float is expected is fine
shards_per_node = 3

[scenario.fault]
kind = "sign-flip"
count = 2
scale = 2.5

[model]
kind = "mlp"
hidden = [16, 8]

[local]
learning_rate = 0.05
epochs = 2
batch_size = 8
momentum = 0.5

[rounds]
server_learning_rate = 0.5

[stop]
max_rounds = 12
target_accuracy = 0.9
patience = 4
time_budget_seconds = 30

[actor_critic]
discount = 0.2
critics = 3
learning = false

[hedge]
decay = 0.8
"""


def _write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_table_maps_onto_its_settings_dataclass(tmp_path: Path) -> None:
    config = load_simulate_config(_write(tmp_path, FULL))
    expected = SimulationSettings(
        scenario=ScenarioSettings(
            dataset="wine",
            nodes=6,
            partition=PartitionSpec(kind="shards", alpha=2.0, shards_per_node=3),
            fault=FaultSpec(kind="sign-flip", count=2, scale=2.5),
            validation_fraction=0.15,
            test_fraction=0.25,
            seed=7,
        ),
        model=ModelSpec(kind="mlp", hidden=(16, 8)),
        local=LocalTrainingSettings(learning_rate=0.05, epochs=2, batch_size=8, momentum=0.5),
        rounds=RoundSettings(server_learning_rate=0.5),
        stop=StopConditions(
            max_rounds=12, target_accuracy=0.9, patience=4, time_budget_seconds=30.0
        ),
        actor_critic=ActorCriticSettings(discount=0.2, critics=3, learning=False),
        hedge=HedgeLooSettings(decay=0.8),
    )
    assert config == SimulateConfig(simulation=expected, policies=("hedge-loo", "median"))
    assert isinstance(config.simulation.scenario.partition.alpha, float)


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_simulate_config(_write(tmp_path, ""))
    assert config == SimulateConfig(simulation=SimulationSettings(), policies=DEFAULT_POLICIES)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "[scenario]\nnodez = 3\n",
            r"^{file}: unknown key 'scenario.nodez'; accepted keys in \[scenario\]: dataset, "
            r"fault, faults, nodes, partition, samples, seed, test_fraction, validation_fraction$",
        ),
        (
            "colour = 1\n",
            r"^{file}: unknown key 'colour'; accepted keys in the top level: actor_critic, "
            r"hedge, local, model, node_training, policies, rounds, scenario, stop$",
        ),
        (
            "[scenario.fault]\nkind = 'bogus'\n",
            r"^{file}: scenario.fault.kind = \"bogus\": expected one of free-rider, label-flip, "
            r"noise, scale, sign-flip; got 'bogus'$",
        ),
        (
            "[scenario]\nnodes = 'ten'\n",
            r"^{file}: scenario.nodes: expected an integer, got \"ten\"$",
        ),
        (
            "[scenario.partition]\nalpha = -1\n",
            r"^{file}: scenario.partition.alpha = -1.0: expected a number > 0.0, got -1.0$",
        ),
        ("[model]\nhidden = 32\n", r"^{file}: model.hidden: expected an array of an integer"),
        ("[actor_critic]\nreward_base = 0.5\n", r"^{file}: actor_critic.reward_base = 0.5: "),
        ("scenario = 3\n", r"^{file}: scenario: expected a table \[scenario\], got 3$"),
        (
            "[scenario]\nnodes = 2\n[scenario.fault]\ncount = 2\n",  # every node faulty
            r"^{file}: \[scenario\] 2 faulty nodes of 2 leaves no honest node in any round; "
            r"expected fewer than 2$",
        ),
        (
            "[scenario]\nnodes = 4\n[scenario.fault]\ncount = 5\n",  # neither alone is wrong
            r"^{file}: \[scenario\] expected at most 4 faulty nodes",
        ),
        ("policies = ['fedavg', 'magic']\n", r"^{file}: policies: unknown policy 'magic'; "),
        ("policies = []\n", r"^{file}: policies: expected a non-empty list"),
        ("[stop\nmax_rounds = 3\n", r"^{file}: not valid TOML: .*line 1"),
    ],
)
def test_bad_files_give_one_line_naming_file_and_key(
    tmp_path: Path, text: str, pattern: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_simulate_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(pattern.format(file=re.escape(str(path))), message), message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nope.toml: cannot read the config file"):
        load_simulate_config(tmp_path / "nope.toml")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=st.integers(5, 40),
    faulty=st.integers(0, 4),
    kind=st.sampled_from(["label-flip", "noise", "free-rider"]),
    alpha=st.floats(0.01, 100.0, allow_nan=False),
    hidden=st.lists(st.integers(1, 256), min_size=1, max_size=3),
    target=st.none() | st.floats(0.0, 1.0),
    budget=st.none() | st.floats(0.001, 1e6),
    learning_rate=st.floats(1e-6, 10.0),
    policies=st.lists(
        st.sampled_from(["fedavg", "krum", "median", "actor-critic"]), min_size=1, unique=True
    ),
)
def test_written_config_reads_back_equal(
    tmp_path_factory: pytest.TempPathFactory,
    nodes: int,
    faulty: int,
    kind: str,
    alpha: float,
    hidden: list[int],
    target: float | None,
    budget: float | None,
    learning_rate: float,
    policies: list[str],
) -> None:
    simulation = SimulationSettings(
        scenario=ScenarioSettings(
            nodes=nodes,
            partition=PartitionSpec(alpha=alpha),
            fault=FaultSpec(kind=kind, count=faulty),
        ),
        model=ModelSpec(hidden=tuple(hidden)),
        local=LocalTrainingSettings(learning_rate=learning_rate),
        stop=StopConditions(target_accuracy=target, time_budget_seconds=budget),
        actor_critic=dataclasses.replace(ActorCriticSettings(), kl_weight=learning_rate),
    )
    config = SimulateConfig(simulation=simulation, policies=tuple(policies))
    path = tmp_path_factory.mktemp("config") / "config.toml"
    path.write_text(simulate_config_to_toml(config), encoding="utf-8")
    assert load_simulate_config(path) == config


def test_mixed_and_time_varying_fault_groups_read_back_equal(tmp_path: Path) -> None:
    faults = (
        FaultSpec("label-flip", 2),
        FaultSpec("scale", 1, 10.0, start=20),
        FaultSpec("free-rider", 1, start=5, end=40, probability=0.25),
    )
    config = SimulateConfig(
        simulation=SimulationSettings(scenario=ScenarioSettings(nodes=8, faults=faults)),
        policies=("fedavg",),
    )
    path = tmp_path / "config.toml"
    path.write_text(simulate_config_to_toml(config), encoding="utf-8")
    assert load_simulate_config(path) == config
    written = _write(
        tmp_path,
        "[scenario]\nnodes = 8\n[[scenario.faults]]\nkind = 'label-flip'\ncount = 2\n"
        "[[scenario.faults]]\nkind = 'scale'\ncount = 1\nscale = 10\nstart = 20\n"
        "[[scenario.faults]]\nkind = 'free-rider'\ncount = 1\nstart = 5\nend = 40\n"
        "probability = 0.25\n",
    )
    assert load_simulate_config(written).simulation.scenario.faults == faults


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "[[scenario.faults]]\nkind = 'scale'\n",
            r"scenario.faults = .*: fault group 1 \(scale\) needs a count$",
        ),
        (
            "[scenario.fault]\ncount = 1\n[[scenario.faults]]\nkind = 'scale'\ncount = 1\n",
            r"give one fault group \(fault\) or several \(faults\), not both$",
        ),
        (
            "[[scenario.faults]]\nkind = 'scale'\ncount = 1\nstart = 9\nend = 3\n",
            r"\[scenario.faults\] expected end > start .*, got start 9, end 3$",
        ),
        (
            "[[scenario.faults]]\nkind = 'noise'\ncount = 1\nprobability = 1.5\n",
            r"scenario.faults.probability = 1.5: expected a number <= 1.0, got 1.5$",
        ),
    ],
)
def test_bad_fault_groups_give_one_line(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_simulate_config(_write(tmp_path, text))
    assert "\n" not in str(caught.value)
    assert re.search(pattern, str(caught.value)), str(caught.value)


def test_a_config_file_of_another_format_version_is_refused_naming_both(tmp_path: Path) -> None:
    from accord.config import CONFIG_FORMAT_VERSION, SimulateConfig, simulate_config_to_toml

    written = simulate_config_to_toml(SimulateConfig(SimulationSettings()))
    assert f"format_version = {CONFIG_FORMAT_VERSION}" in written
    path = tmp_path / "config.toml"
    path.write_text(written)
    assert load_simulate_config(path).simulation == SimulationSettings()
    path.write_text(
        written.replace(f"format_version = {CONFIG_FORMAT_VERSION}", "format_version = 1")
    )
    with pytest.raises(ConfigurationError, match="format_version 1; this Accord reads version 2"):
        load_simulate_config(path)
