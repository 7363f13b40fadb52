"""TOML configuration files onto the frozen settings dataclasses, one to one.

A table of the file is a settings dataclass, a key is one of its fields, with the same
name. ``accord simulate --config run.toml`` reads a file whose top-level tables are the
fields of :class:`accord.simulation.SimulationSettings` (and its one top-level key,
``node_training``), plus one more top-level key, ``policies``, the policies to run side by
side::

    policies = ["actor-critic", "fedavg"]
    node_training = "auto"   # or "loop", "batched": how the simulation trains its nodes

    [scenario]               # ScenarioSettings
    dataset = "digits"
    nodes = 10
    seed = 0

    [scenario.partition]     # PartitionSpec
    kind = "dirichlet"
    alpha = 0.5

    [scenario.fault]         # FaultSpec: one group of faulty nodes
    kind = "label-flip"
    count = 3                # default: 30 % of the nodes, rounded down
    start = 0                # honest in the first `start` rounds (0-based round index)
    # end = 60               # honest again from round index `end` on (default: never)
    probability = 1.0        # faulty in each round of [start, end) with this probability

    # Or several groups (mixed faults), instead of [scenario.fault]:
    # [[scenario.faults]]
    # kind = "label-flip"
    # count = 2
    # [[scenario.faults]]
    # kind = "scale"
    # count = 1
    # scale = 10.0
    # start = 30

    [model]                  # ModelSpec
    kind = "mlp"
    hidden = [32]

    [local]                  # LocalTrainingSettings
    [rounds]                 # RoundSettings
    [stop]                   # StopConditions: max_rounds, target_accuracy, patience, ...
    [actor_critic]           # ActorCriticSettings
    [hedge]                  # HedgeLooSettings

Keys left out keep their documented defaults; TOML has no null, so a setting whose default
is "not set" (``stop.target_accuracy``) is set by writing it and unset by leaving it out.
An unknown key, a value of the wrong type or a value the settings reject gives one
:class:`ConfigurationError` line naming the file, the key and what is accepted.

:func:`settings_to_toml` writes settings back in the same layout (the run folder's
``config.toml``), so a run can be repeated with ``--config RUN_DIR/config.toml``. The
mapping itself (any settings dataclass to and from TOML or JSON data) is
:mod:`accord.settings_mapping`, re-exported here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from accord.errors import ConfigurationError
from accord.settings_mapping import (
    read_toml,
    settings_from_mapping,
    settings_to_mapping,
    settings_to_toml,
)

if TYPE_CHECKING:
    from accord.run import SimulationSettings

__all__ = [
    "DEFAULT_POLICIES",
    "SimulateConfig",
    "load_simulate_config",
    "read_toml",
    "settings_from_mapping",
    "settings_to_mapping",
    "settings_to_toml",
    "simulate_config_to_toml",
]

#: What ``accord simulate`` runs side by side when no policy is chosen.
DEFAULT_POLICIES: tuple[str, ...] = ("actor-critic", "fedavg")


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """What a ``accord simulate`` config file holds: the ``policies`` to run side by side
    (default actor-critic and fedavg) and the ``simulation`` settings they share."""

    simulation: SimulationSettings
    policies: tuple[str, ...] = DEFAULT_POLICIES


#: The layout version of a ``config.toml`` that Accord writes (``format_version``, 2 since
#: the settings gained credit methods and the protocol version 2). A file that names
#: another version is refused; a hand-written file without the key is read as this one.
CONFIG_FORMAT_VERSION = 2


def load_simulate_config(path: str | Path) -> SimulateConfig:
    """Read an ``accord simulate`` config file (layout in the module docstring)."""
    from accord.aggregation.registry import POLICIES
    from accord.run import SimulationSettings

    source = str(path)
    document = read_toml(path)
    if "format_version" in document:  # written by Accord; optional in a hand-written file
        version = document.pop("format_version")
        if version != CONFIG_FORMAT_VERSION:
            raise ConfigurationError(
                f"{source}: format_version {version!r}; this Accord reads version "
                f"{CONFIG_FORMAT_VERSION} (drop the key to read the file as this version's)"
            )
    policies = DEFAULT_POLICIES
    if "policies" in document:
        raw = document.pop("policies")
        if isinstance(raw, str):
            raw = [raw]
        accepted = ", ".join(POLICIES)
        if not isinstance(raw, list) or not raw or not all(isinstance(p, str) for p in raw):
            raise ConfigurationError(
                f"{source}: policies: expected a non-empty list of policy names "
                f"({accepted}), got {raw!r}"
            )
        for name in raw:
            if name not in POLICIES:
                raise ConfigurationError(
                    f"{source}: policies: unknown policy {name!r}; accepted: {accepted}"
                )
        if len(set(raw)) != len(raw):
            raise ConfigurationError(f"{source}: policies: a policy is listed twice: {raw!r}")
        policies = tuple(raw)
    simulation = settings_from_mapping(
        SimulationSettings, document, source=source, extra_keys=("policies",)
    )
    return SimulateConfig(simulation=simulation, policies=policies)


def simulate_config_to_toml(config: SimulateConfig) -> str:
    """The ``config.toml`` of a simulate run: read back by :func:`load_simulate_config`."""
    return settings_to_toml(
        config.simulation,
        top={"format_version": CONFIG_FORMAT_VERSION, "policies": list(config.policies)},
    )
