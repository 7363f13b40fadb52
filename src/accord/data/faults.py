"""Faulty-node recipes: what a broken or malicious node does, and in which rounds.

Kinds:

- ``label-flip``: trains honestly on labels mapped ``y → C − 1 − y``.
- ``noise``: sends Gaussian noise scaled to the norm of its honest first gradient.
- ``sign-flip``: sends ``−scale ·`` its honest first gradient.
- ``scale``: sends ``scale ·`` its honest first gradient.
- ``free-rider``: sends zeros and does no work.

When (:class:`FaultSpec` ``start``, ``end``, ``probability``; rounds are 0-based round
indices, as ``round`` in ``metrics.jsonl``; the tables and plots show index + 1): a node is
faulty in round ``t`` when ``start <= t < end`` and, with ``probability < 1``, a draw that
depends on (scenario seed, node, round) only says so. The defaults (``start = 0``, no end,
probability 1) make a node faulty in every round, as before time-varying faults existed.

A faulty node does its recipe only in its faulty rounds and is honest in the others; a
label flipper keeps both label sets and trains on the flipped ones in its faulty rounds.
:func:`node_first_gradient` is the one place the recipe is written: the in-process
simulation and a networked node both call it, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from accord._validation import require_choice, require_int, require_number
from accord.errors import ConfigurationError
from accord.types import FloatArray

__all__ = [
    "DEFAULT_FAULTY_SHARE",
    "FAULT_KINDS",
    "FaultSpec",
    "NodeFault",
    "corrupt_gradient",
    "default_faulty_count",
    "fault_rng",
    "flip_labels",
    "labels_trained_on",
    "node_first_gradient",
]

FAULT_KINDS = ("free-rider", "label-flip", "noise", "scale", "sign-flip")

#: The default number of faulty nodes is this share of the nodes, rounded down (3 of 10,
#: 0 of 3): never every node.
DEFAULT_FAULTY_SHARE = 0.3


def default_faulty_count(nodes: int) -> int:
    """``floor(0.3 · nodes)``: the faulty-node count when none is given (3 of 10 nodes,
    1 of 4, 0 of 3), always fewer than ``nodes``."""
    return int(DEFAULT_FAULTY_SHARE * nodes + 1e-9)


@dataclass(frozen=True)
class FaultSpec:
    """One group of faulty nodes.

    ``kind``: what they do (:data:`FAULT_KINDS`, default ``label-flip``). ``count``: how
    many nodes (chosen by the seed); ``None`` (the default) means 30 % of the nodes rounded
    down, see :func:`default_faulty_count`. ``scale``: factor of ``sign-flip`` and ``scale``
    (default 4.0). ``start``: the first faulty round, a 0-based round index, i.e. the node
    is honest for the first ``start`` rounds (default 0). ``end``: the first round in which
    it is honest again, or ``None`` (the default) for never. ``probability``: the chance
    that the node is faulty in each round of ``[start, end)`` (default 1.0: every round),
    drawn from (scenario seed, node, round) only.
    """

    kind: str = "label-flip"
    count: int | None = None
    scale: float = 4.0
    start: int = 0
    end: int | None = None
    probability: float = 1.0

    def __post_init__(self) -> None:
        require_choice("fault", self.kind, FAULT_KINDS)
        if self.count is not None:
            require_int("faulty", self.count, minimum=0)
        require_number("fault_scale", self.scale, minimum=0.0)
        require_int("fault_start", self.start, minimum=0)
        if self.end is not None:
            require_int("fault_end", self.end, minimum=1)
            if self.end <= self.start:
                raise ConfigurationError(
                    "fault_end: expected end > start (a fault is active in rounds start + 1 "
                    f"to end, counted from 1), got start {self.start}, end {self.end}"
                )
        require_number(
            "fault_probability",
            self.probability,
            minimum=0.0,
            maximum=1.0,
            exclusive_minimum=True,
        )

    @property
    def corrupts_labels(self) -> bool:
        return self.kind == "label-flip"

    @property
    def always(self) -> bool:
        """Faulty in every round (no start, end or probability)."""
        return self.start == 0 and self.end is None and self.probability >= 1.0

    def with_count(self, nodes: int) -> FaultSpec:
        """This spec with ``count`` resolved for a run of ``nodes`` nodes."""
        if self.count is not None:
            return self
        return FaultSpec(
            self.kind,
            default_faulty_count(nodes),
            self.scale,
            self.start,
            self.end,
            self.probability,
        )

    def active(self, scenario_seed: int, node_index: int, round_index: int) -> bool:
        """Whether a node of this group is faulty in round ``round_index`` (0-based)."""
        if round_index < self.start or (self.end is not None and round_index >= self.end):
            return False
        if self.probability >= 1.0:
            return True
        draw = np.random.default_rng([scenario_seed, 15485863, node_index, round_index])
        return bool(draw.random() < self.probability)

    def label(self) -> str:
        """The kind, with the factor where it has one: ``label-flip``, ``scale x10``."""
        if self.kind in ("scale", "sign-flip"):
            return f"{self.kind} x{self.scale:g}"
        return self.kind

    def when(self) -> str:
        """When the fault is active, in the tables' round numbers (from 1), e.g. ``from
        round 31 until round 60, p=0.5 per round``; empty for every round."""
        parts = []
        if self.start > 0:
            parts.append(f"from round {self.start + 1}")
        if self.end is not None:
            parts.append(f"until round {self.end}")
        text = " ".join(parts)
        if self.probability < 1.0:
            text += (", " if text else "") + f"p={self.probability:g} per round"
        return text

    def describe(self) -> str:
        """Kind and timing: ``scale x10`` or ``noise (from round 31, p=0.5 per round)``."""
        when = self.when()
        return self.label() + (f" ({when})" if when else "")


@dataclass(frozen=True)
class NodeFault:
    """The faulty-node recipe one node follows: its group's ``spec``, and the scenario seed
    and node index its rounds and noise are drawn from."""

    spec: FaultSpec
    scenario_seed: int
    node_index: int

    def active(self, round_index: int) -> bool:
        """Whether the node is faulty in round ``round_index`` (0-based)."""
        return self.spec.active(self.scenario_seed, self.node_index, round_index)


def flip_labels(labels: npt.NDArray[np.int64], n_classes: int) -> npt.NDArray[np.int64]:
    """``y → C − 1 − y``: every label changes when C > 1 and C is even; for odd C the middle
    class maps to itself."""
    return np.asarray(n_classes - 1 - labels, dtype=np.int64)


def fault_rng(scenario_seed: int, node_index: int, round_index: int) -> np.random.Generator:
    """The noise a faulty node draws in one round: a function of (seed, node, round) only,
    so a resumed run or a node in its own process draws exactly the same noise."""
    return np.random.default_rng([scenario_seed, 104729, node_index, round_index])


def corrupt_gradient(spec: FaultSpec, honest: FloatArray, rng: np.random.Generator) -> FloatArray:
    """What a faulty node sends instead of its honest first gradient."""
    if spec.kind == "noise":
        noise = rng.standard_normal(honest.shape).astype(np.float32)
        norm = float(np.linalg.norm(noise))
        return np.asarray(
            noise * (float(np.linalg.norm(honest)) / max(norm, 1e-12)), dtype=np.float32
        )
    if spec.kind in ("sign-flip", "scale"):
        factor = -spec.scale if spec.kind == "sign-flip" else spec.scale
        # A factor past float32's range sends inf, as such an attacker would; the server
        # then leaves the node out ("contains NaN or Inf"), without a numpy warning here.
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(factor * honest, dtype=np.float32)
    if spec.kind == "free-rider":
        return np.zeros_like(honest, dtype=np.float32)
    return honest


def node_first_gradient(
    fault: NodeFault | None,
    round_index: int,
    train: Callable[[bool], FloatArray],
    dim: int,
) -> FloatArray:
    """The first gradient a node sends in round ``round_index``: the one recipe.

    ``train(flipped)`` trains the node from the round's global weights and returns its first
    gradient, on its flipped labels when ``flipped``. In a round where the node is not
    faulty (or has no fault) it is ``train(False)``; a faulty free rider sends ``dim`` zeros
    without training; a faulty label flipper sends ``train(True)``; the other kinds corrupt
    ``train(False)`` with noise from :func:`fault_rng`.
    """
    flipped = labels_trained_on(fault, round_index)
    if flipped is None:
        return np.zeros(dim, dtype=np.float32)
    gradient = train(flipped)
    if fault is None or flipped or not fault.active(round_index):
        return gradient
    return corrupt_gradient(
        fault.spec, gradient, fault_rng(fault.scenario_seed, fault.node_index, round_index)
    )


def labels_trained_on(fault: NodeFault | None, round_index: int) -> bool | None:
    """Which labels the recipe of :func:`node_first_gradient` trains on in round
    ``round_index``: ``True`` the flipped ones (a faulty label flipper), ``False`` its own,
    ``None`` none (a faulty free rider does not train). The batched simulation asks it to
    train a round's nodes together before each node runs the recipe."""
    if fault is None or not fault.active(round_index):
        return False
    if fault.spec.kind == "free-rider":
        return None
    return fault.spec.corrupts_labels
