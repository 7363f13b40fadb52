"""Flower records to and from Accord's named weights, the server's held-out data, and its
scoring.

A Flower ``ArrayRecord`` holding a ``state_dict`` is, to Accord, named weights
(:data:`accord.training.weights.Weights`): parameters and buffers by name, any dtype.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import Array, ArrayRecord, MetricRecord
from torch import nn

from accord.errors import ConfigurationError, InputDataError
from accord.training.scoring import ModuleScorer, batches_of_arrays
from accord.training.weights import WeightLayout, Weights, load_module_weights

__all__ = [
    "HeldOutData",
    "ModelSource",
    "arrays_to_weights",
    "build_model_copy",
    "make_evaluate_fn",
    "make_scorer",
    "weights_to_arrays",
]

#: A model, or a function that builds a freshly initialised one.
ModelSource = nn.Module | Callable[[], nn.Module]


@dataclass(frozen=True)
class HeldOutData:
    """The server's held-out samples: ``features`` (n, ...) float32 in the model's input
    shape and ``labels`` (n,) class indices. Scored with mean cross-entropy and accuracy."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        features = np.asarray(self.features)
        labels = np.asarray(self.labels)
        if features.ndim < 2 or features.shape[0] == 0:
            raise InputDataError(
                f"held-out features: expected an array of shape (n >= 1, ...), got {features.shape}"
            )
        if labels.shape != (features.shape[0],):
            raise InputDataError(
                f"held-out labels: expected shape ({features.shape[0]},), got {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputDataError(f"held-out labels: expected integers, got dtype {labels.dtype}")
        if not np.isfinite(features).all():
            raise InputDataError("held-out features: contain NaN or Inf")
        object.__setattr__(self, "features", np.ascontiguousarray(features, dtype=np.float32))
        object.__setattr__(self, "labels", np.ascontiguousarray(labels, dtype=np.int64))


def arrays_to_weights(arrays: ArrayRecord) -> dict[str, npt.NDArray[np.generic]]:
    """A Flower ``ArrayRecord`` as named numpy arrays (a ``state_dict`` of numpy arrays)."""
    return {name: array.numpy() for name, array in arrays.items()}


def weights_to_arrays(weights: Weights) -> ArrayRecord:
    """Named numpy arrays as a Flower ``ArrayRecord`` (order kept; 0-d arrays stay 0-d)."""
    return ArrayRecord(
        {name: Array(np.asarray(value, order="C")) for name, value in weights.items()}
    )


def build_model_copy(model: ModelSource) -> nn.Module:
    """A private copy of ``model`` (or a freshly built one) in eval mode."""
    module = copy.deepcopy(model) if isinstance(model, nn.Module) else model()
    if not isinstance(module, nn.Module):
        raise ConfigurationError(
            f"model: expected a torch.nn.Module or a function returning one, got "
            f"{type(module).__name__}"
        )
    return module.eval()


def make_scorer(model: ModelSource, data: HeldOutData, layout: WeightLayout) -> ModuleScorer:
    """The validation function over flat trainable vectors of ``model`` on ``data``
    (vectorised where the model allows; :meth:`ModuleScorer.set_buffers` takes the
    round's buffers)."""
    return ModuleScorer(
        build_model_copy(model), batches_of_arrays(data.features, data.labels), layout=layout
    )


def make_evaluate_fn(
    model: ModelSource, data: HeldOutData
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """Server-side evaluation for any Flower strategy's ``start(evaluate_fn=...)``: loads
    the round's arrays into a copy of ``model`` and returns ``{"loss", "accuracy"}`` on
    ``data`` (mean cross-entropy, as Accord scores)."""
    module = build_model_copy(model)
    inputs = torch.from_numpy(data.features)
    targets = torch.from_numpy(data.labels)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_module_weights(module, arrays_to_weights(arrays))
        with torch.no_grad():
            logits = module(inputs)
            loss = float(torch.nn.functional.cross_entropy(logits, targets))
            accuracy = float((logits.argmax(dim=1) == targets).float().mean())
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    return evaluate
