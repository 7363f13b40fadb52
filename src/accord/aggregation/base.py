"""The contract every weighting policy fulfils, and the values that cross it.

A round gives the policy a :class:`RoundInput` (the first gradients of the nodes that
answered, their data sizes, the global weights and, when the server holds a validation
set, a function that scores candidate weights; for a policy that asks for it, the
server's own first gradient on a small root dataset, see :data:`ServerUpdateFn`; the
value types shared with training and data live in :mod:`accord.types`). The
policy answers with an :class:`Aggregation`: per-node probabilities over the whole roster
(zero for nodes that did not answer) and the second gradient. After the update is applied
it receives a :class:`RoundFeedback` to learn from. Nothing here touches files or the network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from accord.errors import ProtocolError
from accord.types import (
    FloatArray,
    ServerUpdateFn,
    ValidationFn,
    ValidationGradient,
    ValidationGradientFn,
    ValidationScores,
)

__all__ = [
    "Aggregation",
    "Aggregator",
    "FloatArray",
    "RoundFeedback",
    "RoundInput",
    "ServerUpdateFn",
    "ValidationFn",
    "ValidationGradient",
    "ValidationGradientFn",
    "ValidationScores",
]


@dataclass(frozen=True)
class RoundInput:
    """What a policy sees in one round.

    ``roster`` lists every registered node in a fixed order; ``present`` marks those whose
    first gradient arrived and passed the checks; ``first_gradients`` holds one row per
    present node, in roster order. ``server_update`` is given to policies that ask for it
    (:attr:`Aggregator.root_samples` > 0) and ``None`` otherwise.
    """

    round_index: int
    roster: tuple[str, ...]
    sample_counts: npt.NDArray[np.float64]
    present: npt.NDArray[np.bool_]
    global_weights: FloatArray
    first_gradients: FloatArray
    validate: ValidationFn | None
    server_update: ServerUpdateFn | None = None
    #: The validation loss's gradient at a weight vector, for first-order credit; ``None``
    #: when the driver gives none (the policies then use exact credit).
    validation_gradient: ValidationGradientFn | None = None

    def __post_init__(self) -> None:
        n_present = int(self.present.sum())
        if self.first_gradients.ndim != 2 or self.first_gradients.shape[0] != n_present:
            raise ProtocolError(
                f"first_gradients: expected {n_present} rows, got shape "
                f"{self.first_gradients.shape}"
            )
        if self.first_gradients.shape[1] != self.global_weights.shape[0]:
            raise ProtocolError(
                f"first_gradients: expected {self.global_weights.shape[0]} columns, got "
                f"{self.first_gradients.shape[1]}"
            )
        if n_present == 0:
            raise ProtocolError("a round needs at least one first gradient")

    @property
    def present_counts(self) -> npt.NDArray[np.float64]:
        return self.sample_counts[self.present]


@dataclass(frozen=True)
class Aggregation:
    """A policy's answer: probabilities over the roster and the second gradient."""

    probabilities: npt.NDArray[np.float64]
    second_gradient: FloatArray


@dataclass(frozen=True)
class RoundFeedback:
    """What happened after the second gradient was applied.

    ``accuracy_before``/``loss_before`` score ``w_t`` and ``accuracy_after``/``loss_after``
    score ``w_{t+1}``, on the server's validation set or by federated evaluation.
    """

    round_index: int
    accuracy_before: float
    accuracy_after: float
    loss_before: float | None
    loss_after: float | None


class Aggregator(ABC):
    """A weighting policy: turns first gradients into probabilities and a second gradient."""

    #: Short name used in metrics, the CLI and benchmarks.
    name: str = "aggregator"
    #: Whether the policy needs the server's validation function every round.
    needs_validation: bool = False
    #: How many of the server's validation samples the policy's server update trains on
    #: (FLTrust's root dataset); 0: the policy needs no server update.
    root_samples: int = 0

    @abstractmethod
    def aggregate(self, round_input: RoundInput) -> Aggregation:
        """Weigh the present nodes and combine their first gradients."""

    def learn(self, feedback: RoundFeedback) -> None:  # noqa: B027 - optional hook
        """Learn from the outcome of the last :meth:`aggregate`; most rules do not."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a restart (checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - stateless default
        """Restore what :meth:`state_dict` returned."""

    def diagnostics(self) -> dict[str, float]:
        """Per-round figures worth logging (losses, timings); empty by default."""
        return {}
