"""Faulty-node recipes: what a broken or malicious node does.

- ``label-flip``: trains honestly on labels mapped ``y → C − 1 − y``.
- ``noise``: sends Gaussian noise scaled to the norm of its honest first gradient.
- ``sign-flip``: sends ``−scale ·`` its honest first gradient.
- ``scale``: sends ``scale ·`` its honest first gradient.
- ``free-rider``: sends zeros and does no work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from accord._validation import require_choice, require_int, require_number
from accord.aggregation.base import FloatArray

__all__ = ["FAULT_KINDS", "FaultSpec", "corrupt_gradient", "fault_rng", "flip_labels"]

FAULT_KINDS = ("free-rider", "label-flip", "noise", "scale", "sign-flip")


@dataclass(frozen=True)
class FaultSpec:
    """``kind`` of fault, ``count`` of faulty nodes (chosen by the seed), and ``scale`` for
    ``sign-flip`` and ``scale`` (default 4.0)."""

    kind: str = "label-flip"
    count: int = 0
    scale: float = 4.0

    def __post_init__(self) -> None:
        require_choice("fault", self.kind, FAULT_KINDS)
        require_int("faulty", self.count, minimum=0)
        require_number("fault_scale", self.scale, minimum=0.0)

    @property
    def corrupts_labels(self) -> bool:
        return self.kind == "label-flip"


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
    if spec.kind == "sign-flip":
        return np.asarray(-spec.scale * honest, dtype=np.float32)
    if spec.kind == "scale":
        return np.asarray(spec.scale * honest, dtype=np.float32)
    if spec.kind == "free-rider":
        return np.zeros_like(honest, dtype=np.float32)
    return honest
