"""Hedge-LOO: exponential weights on each node's decayed leave-one-out credit.

No networks. Each round: ``p = softmax(log(n_i/n) + b·tanh(η·C_i / b))``; after the second
gradient is formed, every node's credit ``B − B₋ᵢ`` (see :mod:`accord.aggregation.credit`)
is scaled by the round's mean absolute credit and added to ``C_i ← δ·C_i + credit``. It is
the strongest baseline; the Actor-Critic must beat it to earn its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from accord._validation import require_choice, require_number
from accord.aggregation.base import Aggregation, Aggregator, RoundInput
from accord.aggregation.combine import bounded_prior_softmax, expand_to_roster, second_gradient
from accord.aggregation.credit import CREDIT_METHODS, credit_method_for, leave_one_out_credit

__all__ = ["HedgeLoo", "HedgeLooSettings"]


@dataclass(frozen=True)
class HedgeLooSettings:
    """``learning_rate`` η on the running credit (default 1.0); ``decay`` δ of the running
    credit per round (default 0.9); ``bound`` b in nats on how far a node may move from its
    data-size prior (default 4.0); ``server_learning_rate`` must match the round's η_server;
    ``credit_method``: ``exact``, ``first-order`` or ``auto`` (default; see
    :func:`accord.aggregation.credit.credit_method_for`)."""

    learning_rate: float = 1.0
    decay: float = 0.9
    bound: float = 4.0
    server_learning_rate: float = 1.0
    credit_method: str = "auto"

    def __post_init__(self) -> None:
        require_number("learning_rate", self.learning_rate, minimum=0.0)
        require_number("decay", self.decay, minimum=0.0, maximum=1.0)
        require_number("bound", self.bound, minimum=0.0, exclusive_minimum=True)
        require_number(
            "server_learning_rate", self.server_learning_rate, minimum=0.0, exclusive_minimum=True
        )
        require_choice("credit_method", self.credit_method, CREDIT_METHODS)


class HedgeLoo(Aggregator):
    name = "hedge-loo"
    needs_validation = True

    def __init__(self, settings: HedgeLooSettings | None = None) -> None:
        self.settings = settings or HedgeLooSettings()
        self.credit: dict[str, float] = {}

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        assert round_input.validate is not None  # guaranteed by needs_validation
        s = self.settings
        present_nodes = [
            n for n, here in zip(round_input.roster, round_input.present, strict=True) if here
        ]
        credit = np.array([self.credit.get(n, 0.0) for n in present_nodes])
        probabilities = bounded_prior_softmax(
            np.log(round_input.present_counts), s.learning_rate * credit, s.bound
        )
        gradients = round_input.first_gradients
        method = credit_method_for(
            s.credit_method, gradients.shape[0], gradients.shape[1], round_input.validation_gradient
        )
        loo = leave_one_out_credit(
            round_input.validate,
            round_input.global_weights,
            probabilities,
            gradients,
            s.server_learning_rate,
            validation_gradient=round_input.validation_gradient
            if method == "first-order"
            else None,
        )
        scale = float(np.mean(np.abs(loo.credit)))
        update = loo.credit / scale if scale > 0 else loo.credit
        # Only the present nodes' credit ages: a node not in this round (not sampled, or
        # failed) carries its credit over unchanged until it is heard from again.
        for node, value in zip(present_nodes, update, strict=True):
            self.credit[node] = s.decay * self.credit.get(node, 0.0) + float(value)
        return Aggregation(
            probabilities=expand_to_roster(probabilities, round_input.present),
            second_gradient=second_gradient(probabilities, round_input.first_gradients),
        )

    def state_dict(self) -> dict[str, Any]:
        return {"credit": dict(self.credit)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.credit = {str(k): float(v) for k, v in state["credit"].items()}
