"""A federation scenario: which data each node holds, which nodes are faulty, which model.

Shared by the in-process simulation and the networked node processes, so a node started
with ``--scenario-node 3`` holds exactly what node 3 holds in ``accord simulate``.

Faulty nodes come in groups (:class:`~accord.data.faults.FaultSpec`): ``fault`` is one
group (the usual case, and the ``[scenario.fault]`` table of a config file); ``faults``
lists several groups for mixed faults in one run (``[[scenario.faults]]``), e.g. two label
flippers, one ``scale ×10`` node and one free rider. "Faulty" is per node and per round:
:meth:`ScenarioData.faulty_in_round` says which nodes are faulty in a round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from accord._validation import require_int
from accord.data.datasets import (
    MAX_SYNTHETIC_SAMPLES,
    SYNTHETIC,
    HoldoutSplit,
    load_dataset,
    require_holdout_fractions,
    split_holdout,
)
from accord.data.faults import FaultSpec, NodeFault, flip_labels
from accord.data.partition import PartitionSpec, partition
from accord.errors import ConfigurationError

__all__ = [
    "NodeData",
    "ScenarioData",
    "ScenarioSettings",
    "build_scenario",
    "describe_scenario",
    "node_id",
    "node_seed",
]


@dataclass(frozen=True)
class ScenarioSettings:
    """The data side of a run. Defaults: digits, 10 nodes, Dirichlet 0.5, label flippers on
    30 % of the nodes rounded down (3 of 10), 10 % of the data as the server's validation set
    and 20 % as the test set, seed 0.

    ``fault``: the faulty nodes' group. ``faults``: several groups instead (mixed faults; each
    with a ``count``); when given, ``fault`` must keep its default. A run in which every node
    is faulty in every round is refused.

    ``samples``: size of a generated dataset (``synthetic``, ``synthetic-hard``); ``None``
    (default) keeps 3,000. The shipped datasets have a fixed size and refuse it.
    """

    dataset: str = "digits"
    nodes: int = 10
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    fault: FaultSpec = field(default_factory=FaultSpec)
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    faults: tuple[FaultSpec, ...] = ()
    samples: int | None = None

    def __post_init__(self) -> None:
        require_int("nodes", self.nodes, minimum=1)
        require_int("seed", self.seed, minimum=0)
        require_holdout_fractions(self.validation_fraction, self.test_fraction)
        if not isinstance(self.faults, tuple) or not all(
            isinstance(group, FaultSpec) for group in self.faults
        ):
            raise ConfigurationError(
                f"faults: expected a list of fault groups, got {self.faults!r}"
            )
        if self.faults:
            if self.fault != FaultSpec():
                raise ConfigurationError(
                    "faults: give one fault group (fault) or several (faults), not both"
                )
            for number, group in enumerate(self.faults, start=1):
                if group.count is None:
                    raise ConfigurationError(
                        f"faults: fault group {number} ({group.kind}) needs a count"
                    )
        groups = self.fault_groups
        total = sum(group.count or 0 for group in groups)
        if total > self.nodes:
            raise ConfigurationError(
                f"faulty: expected at most {self.nodes} faulty nodes (the node count), got {total}"
            )
        if total == self.nodes and all(group.always for group in groups if group.count):
            raise ConfigurationError(
                f"faulty: {total} faulty nodes of {self.nodes} leaves no honest node in any "
                f"round; expected fewer than {self.nodes}"
            )
        if self.samples is not None:
            self._check_samples(self.samples)

    def _check_samples(self, samples: int) -> None:
        """A generated dataset only, and enough samples for every node once the validation
        and test shares are held out."""
        require_int("samples", samples, minimum=1)
        if self.dataset not in SYNTHETIC:
            raise ConfigurationError(
                f"samples: only a generated dataset ({', '.join(SYNTHETIC)}) can be resized; "
                f"got samples={samples} with dataset {self.dataset!r}"
            )
        pool = 1.0 - self.validation_fraction - self.test_fraction
        needed = math.ceil(self.nodes * self.partition.min_samples / pool)
        if samples < needed:
            raise ConfigurationError(
                f"samples: expected at least {needed} for {self.nodes} nodes of "
                f"{self.partition.min_samples} samples each after the validation and test "
                f"shares, got {samples}"
            )
        if samples > MAX_SYNTHETIC_SAMPLES:
            raise ConfigurationError(
                f"samples: expected at most {MAX_SYNTHETIC_SAMPLES}, got {samples}"
            )

    @property
    def fault_groups(self) -> tuple[FaultSpec, ...]:
        """The fault groups with their counts resolved (``faults``, or ``(fault,)``)."""
        if self.faults:
            return self.faults
        return (self.fault.with_count(self.nodes),)

    @property
    def faulty_count(self) -> int:
        """Nodes in any fault group."""
        return sum(group.count or 0 for group in self.fault_groups)


@dataclass(frozen=True)
class NodeData:
    """One node's samples. ``labels`` are its own (true) labels; ``fault`` is the group it
    belongs to, if any (it may still be honest in some rounds, see
    :meth:`ScenarioData.faulty_in_round`); ``flipped_labels`` what a label flipper trains on
    in its faulty rounds."""

    node_id: str
    index: int
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    fault: FaultSpec | None = None
    flipped_labels: npt.NDArray[np.int64] | None = None

    @property
    def faulty(self) -> bool:
        """In a fault group: faulty in at least one round (every round for a static fault)."""
        return self.fault is not None

    @property
    def sample_count(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ScenarioData:
    settings: ScenarioSettings
    holdout: HoldoutSplit
    nodes: tuple[NodeData, ...]

    @property
    def n_features(self) -> int:
        return self.holdout.train.n_features

    @property
    def n_classes(self) -> int:
        return self.holdout.train.n_classes

    @property
    def faulty_nodes(self) -> tuple[str, ...]:
        """The nodes in a fault group, i.e. faulty in some round (with a ``probability``
        below 1, those that may be)."""
        return tuple(node.node_id for node in self.nodes if node.faulty)

    @property
    def time_varying(self) -> bool:
        """Whether some faulty node is honest in some rounds."""
        return any(node.fault is not None and not node.fault.always for node in self.nodes)

    def node_fault(self, node: NodeData) -> NodeFault | None:
        """The recipe ``node`` follows, for :func:`accord.data.faults.node_first_gradient`."""
        if node.fault is None:
            return None
        return NodeFault(node.fault, self.settings.seed, node.index)

    def faulty_in_round(self, round_index: int) -> frozenset[str]:
        """The ids of the nodes faulty in round ``round_index`` (0-based)."""
        seed = self.settings.seed
        return frozenset(
            node.node_id
            for node in self.nodes
            if node.fault is not None and node.fault.active(seed, node.index, round_index)
        )

    def fault_group_of(self, node: NodeData) -> int | None:
        """The index of ``node``'s group in ``settings.fault_groups`` (``None``: honest)."""
        if node.fault is None:
            return None
        return self.settings.fault_groups.index(node.fault)


def describe_scenario(data: ScenarioData) -> str:
    """One line about the data: dataset, nodes, split and the faulty nodes (as ``accord
    simulate`` and ``accord federate`` print it)."""
    scenario = data.settings
    partition = scenario.partition
    split = (
        f"Dirichlet {partition.alpha:g}"
        if partition.kind == "dirichlet"
        else ("IID" if partition.kind == "iid" else f"{partition.shards_per_node} label shards")
    )
    groups = []
    for group in scenario.fault_groups:
        members = [node.node_id for node in data.nodes if node.fault == group]
        if members:
            noun = "node" if len(members) == 1 else "nodes"
            when = f" {group.when()}" if group.when() else ""
            groups.append(f"{len(members)} {group.label()} {noun}{when} ({', '.join(members)})")
    faulty = ", ".join(groups) if groups else "no faulty node"
    return f"{scenario.dataset}, {scenario.nodes} nodes, {split}, {faulty}"


def node_seed(scenario_seed: int, index: int) -> int:
    """The seed of node ``index``'s local training (``-1``: the server's root update), the
    same in the simulation and in a node process."""
    return scenario_seed * 1009 + index + 1


def node_id(index: int) -> str:
    return f"node-{index:02d}"


def build_scenario(settings: ScenarioSettings) -> ScenarioData:
    """Deterministic in ``settings.seed``: split, partition and choose the faulty nodes
    (one draw of ``sum(counts)`` nodes, handed to the groups in order)."""
    rng = np.random.default_rng([settings.seed, 7919])
    dataset = load_dataset(settings.dataset, seed=settings.seed, samples=settings.samples)
    holdout = split_holdout(dataset, rng, settings.validation_fraction, settings.test_fraction)
    parts = partition(holdout.train.labels, settings.nodes, settings.partition, rng)
    groups = settings.fault_groups
    chosen = rng.choice(settings.nodes, size=settings.faulty_count, replace=False).tolist()
    group_of: dict[int, FaultSpec] = {}
    position = 0
    for group in groups:
        for index in chosen[position : position + (group.count or 0)]:
            group_of[int(index)] = group
        position += group.count or 0
    nodes = []
    for index, rows in enumerate(parts):
        labels = holdout.train.labels[rows]
        fault = group_of.get(index)
        flipped = (
            flip_labels(labels, holdout.train.n_classes)
            if fault is not None and fault.corrupts_labels
            else None
        )
        nodes.append(
            NodeData(
                node_id=node_id(index),
                index=index,
                features=holdout.train.features[rows],
                labels=labels,
                fault=fault,
                flipped_labels=flipped,
            )
        )
    return ScenarioData(settings=settings, holdout=holdout, nodes=tuple(nodes))
