"""Shared value types that cross layers: flat weight vectors and validation scoring.

:mod:`accord.aggregation`, :mod:`accord.training`, :mod:`accord.data` and the round logic
all speak of flat float32 weight vectors and of functions that score them; these names
live here, below all of them, so that none has to import another sideways.
:mod:`accord.aggregation.base` re-exports them for its policies' users.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "FloatArray",
    "ServerUpdateFn",
    "ValidationFn",
    "ValidationGradient",
    "ValidationGradientFn",
    "ValidationScores",
]

#: A flat float32 vector (or a stack of them): weights, first and second gradients.
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ValidationScores:
    """Validation loss and accuracy of K candidate weight vectors, in the order given.

    ``sample_losses``, when the validation function provides it, is the (K, n_samples)
    matrix of per-sample losses whose row means are ``losses``; the Actor-Critic's safety
    check compares two candidates sample by sample with it. ``None`` when not available.
    """

    losses: npt.NDArray[np.float64]
    accuracies: npt.NDArray[np.float64]
    sample_losses: npt.NDArray[np.float64] | None = None


#: Scores a (K, dim) stack of flat weight vectors on the server's validation set.
ValidationFn = Callable[[FloatArray], ValidationScores]

#: ``(w_t, round_index) -> w_t − w_root``: the server trains a copy of ``w_t`` on its own
#: small *root dataset* with the nodes' local procedure and returns the model delta, a first
#: gradient of its own (FLTrust's reference update). The validation function cannot stand in
#: for it: it scores weights, it gives no gradient. The driver builds it only for a policy
#: whose ``Aggregator.root_samples`` is positive.
ServerUpdateFn = Callable[[FloatArray, int], FloatArray]


@dataclass(frozen=True)
class ValidationGradient:
    """The validation loss at one flat weight vector, its gradient there (float32, the
    vector's length) and, when available, the per-sample losses."""

    loss: float
    gradient: FloatArray
    sample_losses: npt.NDArray[np.float64] | None = None


#: One forward and one backward pass on the server's validation set at a weight vector:
#: what first-order credit needs instead of ``2N + 2`` scored candidates.
ValidationGradientFn = Callable[[FloatArray], ValidationGradient]
