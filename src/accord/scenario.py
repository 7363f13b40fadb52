"""A federation scenario: which data each node holds, which nodes are faulty, which model.

Shared by the in-process simulation and the networked node processes, so a node started
with ``--scenario-node 3`` holds exactly what node 3 holds in ``accord simulate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from accord._validation import require_int, require_number
from accord.data.datasets import (
    MAX_SYNTHETIC_SAMPLES,
    SYNTHETIC,
    HoldoutSplit,
    load_dataset,
    split_holdout,
)
from accord.data.faults import FaultSpec, flip_labels
from accord.data.partition import PartitionSpec, partition
from accord.errors import ConfigurationError

__all__ = ["NodeData", "ScenarioData", "ScenarioSettings", "build_scenario", "node_id"]


@dataclass(frozen=True)
class ScenarioSettings:
    """The data side of a run. Defaults: digits, 10 nodes, Dirichlet 0.5, 3 label flippers,
    10 % of the data as the server's validation set and 20 % as the test set, seed 0.

    ``samples``: size of a generated dataset (``synthetic``, ``synthetic-hard``); ``None``
    (default) keeps 3,000. The shipped datasets have a fixed size and refuse it.
    """

    dataset: str = "digits"
    nodes: int = 10
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    fault: FaultSpec = field(default_factory=lambda: FaultSpec("label-flip", 3))
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    samples: int | None = None

    def __post_init__(self) -> None:
        require_int("nodes", self.nodes, minimum=1)
        require_int("seed", self.seed, minimum=0)
        require_number("validation_fraction", self.validation_fraction, minimum=0.01, maximum=0.5)
        require_number("test_fraction", self.test_fraction, minimum=0.01, maximum=0.5)
        if self.fault.count > self.nodes:
            raise ConfigurationError(
                f"faulty: expected at most {self.nodes} faulty nodes (the node count), "
                f"got {self.fault.count}"
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


@dataclass(frozen=True)
class NodeData:
    """One node's samples; ``faulty`` tells the recipe it follows, if any."""

    node_id: str
    index: int
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    faulty: bool

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
        return tuple(node.node_id for node in self.nodes if node.faulty)


def node_id(index: int) -> str:
    return f"node-{index:02d}"


def build_scenario(settings: ScenarioSettings) -> ScenarioData:
    """Deterministic in ``settings.seed``: split, partition and choose the faulty nodes."""
    rng = np.random.default_rng([settings.seed, 7919])
    dataset = load_dataset(settings.dataset, seed=settings.seed, samples=settings.samples)
    holdout = split_holdout(dataset, rng, settings.validation_fraction, settings.test_fraction)
    parts = partition(holdout.train.labels, settings.nodes, settings.partition, rng)
    faulty = set(rng.choice(settings.nodes, size=settings.fault.count, replace=False).tolist())
    nodes = []
    for index, rows in enumerate(parts):
        labels = holdout.train.labels[rows]
        if index in faulty and settings.fault.corrupts_labels:
            labels = flip_labels(labels, holdout.train.n_classes)
        nodes.append(
            NodeData(
                node_id=node_id(index),
                index=index,
                features=holdout.train.features[rows],
                labels=labels,
                faulty=index in faulty,
            )
        )
    return ScenarioData(settings=settings, holdout=holdout, nodes=tuple(nodes))
