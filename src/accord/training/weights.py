"""Models as named arrays: trainable parameters and buffers, any dtype.

A model's weights cross the public API (:mod:`accord.fl`), the network and checkpoints as a
mapping from name to numpy array (a PyTorch ``state_dict`` made of numpy arrays). Policies
see only one flat float32 vector of the *trainable* parameters; :class:`WeightLayout` turns
named arrays into that vector and back. Buffers (BatchNorm's running mean and variance,
its ``num_batches_tracked`` counter, ...) never enter a policy; they are combined after
each round by :func:`combine_buffers`:

- a floating-point buffer is the sample-count-weighted mean of the present nodes' buffers
  (for BatchNorm's running statistics this is what FedAvg does with them);
- an integer or boolean buffer (a counter such as ``num_batches_tracked``) is the maximum
  over the present nodes: averaging a counter gives a value no node ever had, and the
  maximum keeps it monotone across rounds.

A trainable parameter of another floating dtype (float16, float64) is cast to float32 in
the flat vector and back to its own dtype when unflattened.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from accord.errors import ConfigurationError, InputDataError
from accord.types import FloatArray

__all__ = [
    "WeightEntry",
    "WeightLayout",
    "Weights",
    "combine_buffers",
    "load_module_weights",
    "module_weights",
]

#: Named parameters and buffers, any dtype (a ``state_dict`` of numpy arrays).
Weights = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class WeightEntry:
    """One named array of a model: its shape, numpy dtype name and whether it is trained."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class WeightLayout:
    """The names, shapes and dtypes of a model's weights, in ``state_dict`` order.

    Build it with :meth:`of_module` (trainable = parameters that require grad) or
    :meth:`of_weights`. ``dim`` is the length of the flat trainable vector."""

    entries: tuple[WeightEntry, ...]

    def __post_init__(self) -> None:
        names = [entry.name for entry in self.entries]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"weights: duplicate names in {names}")
        for entry in self.entries:
            if entry.trainable and not np.issubdtype(np.dtype(entry.dtype), np.floating):
                raise ConfigurationError(
                    f"weights: trainable parameter {entry.name!r} has dtype {entry.dtype}; "
                    "expected a floating-point dtype"
                )

    @classmethod
    def of_module(cls, module: nn.Module) -> WeightLayout:
        trainable = {name for name, p in module.named_parameters() if p.requires_grad}
        return cls(
            tuple(
                WeightEntry(
                    name=name,
                    shape=tuple(int(size) for size in tensor.shape),
                    dtype=_numpy_dtype_name(tensor),
                    trainable=name in trainable,
                )
                for name, tensor in module.state_dict().items()
            )
        )

    @classmethod
    def of_weights(cls, weights: Weights, trainable: Sequence[str]) -> WeightLayout:
        unknown = sorted(set(trainable) - set(weights))
        if unknown:
            raise ConfigurationError(f"weights: trainable names {unknown} are not in the weights")
        chosen = set(trainable)
        return cls(
            tuple(
                WeightEntry(name, tuple(map(int, a.shape)), a.dtype.name, name in chosen)
                for name, a in weights.items()
            )
        )

    @property
    def trainable(self) -> tuple[WeightEntry, ...]:
        return tuple(entry for entry in self.entries if entry.trainable)

    @property
    def buffers(self) -> tuple[WeightEntry, ...]:
        return tuple(entry for entry in self.entries if not entry.trainable)

    @property
    def dim(self) -> int:
        return sum(entry.size for entry in self.trainable)

    def check(
        self, weights: Weights, where: str = "weights", *, buffers_only: bool = False
    ) -> None:
        """Raise :class:`InputDataError` naming what differs from this layout: a missing or
        unexpected name, a shape or a dtype."""
        expected = self.buffers if buffers_only else self.entries
        missing = [entry.name for entry in expected if entry.name not in weights]
        unexpected = sorted(set(weights) - {entry.name for entry in expected})
        if missing or unexpected:
            raise InputDataError(
                f"{where}: expected the model's arrays; missing {missing}, unexpected {unexpected}"
            )
        for entry in expected:
            array = np.asarray(weights[entry.name])
            if tuple(array.shape) != entry.shape:
                raise InputDataError(
                    f"{where}: {entry.name}: expected shape {entry.shape}, got {array.shape}"
                )
            if array.dtype.name != entry.dtype:
                raise InputDataError(
                    f"{where}: {entry.name}: expected dtype {entry.dtype}, got {array.dtype.name}"
                )

    def flatten(self, weights: Weights) -> FloatArray:
        """The trainable arrays, in layout order, as one float32 vector (a copy)."""
        parts = [np.asarray(weights[entry.name]).reshape(-1) for entry in self.trainable]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def unflatten(self, flat: FloatArray) -> dict[str, npt.NDArray[Any]]:
        """The trainable arrays of a flat vector, each in its own shape and dtype."""
        if flat.shape != (self.dim,):
            raise InputDataError(
                f"weights: expected a flat vector of shape ({self.dim},), got {flat.shape}"
            )
        arrays: dict[str, npt.NDArray[Any]] = {}
        offset = 0
        for entry in self.trainable:
            piece = flat[offset : offset + entry.size]
            arrays[entry.name] = piece.reshape(entry.shape).astype(entry.dtype, copy=True)
            offset += entry.size
        return arrays

    def buffers_of(self, weights: Weights) -> dict[str, npt.NDArray[Any]]:
        return {entry.name: np.asarray(weights[entry.name]) for entry in self.buffers}

    def join(self, flat: FloatArray, buffers: Weights) -> dict[str, npt.NDArray[Any]]:
        """Full named weights, in ``state_dict`` order, from the flat trainable vector and
        the buffers."""
        trainable = self.unflatten(flat)
        return {
            entry.name: trainable[entry.name]
            if entry.trainable
            else np.array(buffers[entry.name], dtype=entry.dtype, copy=True)
            for entry in self.entries
        }

    def describe(self) -> list[tuple[str, tuple[int, ...], str, bool]]:
        """``(name, shape, dtype, trainable)`` of every array: what the registration
        fingerprint of the model covers."""
        return [(e.name, e.shape, e.dtype, e.trainable) for e in self.entries]

    def digest(self) -> str:
        """SHA-256 hex of :meth:`describe` as canonical JSON."""
        text = json.dumps([[n, list(s), d, t] for n, s, d, t in self.describe()])
        return hashlib.sha256(text.encode()).hexdigest()


def combine_buffers(
    buffers: Sequence[Weights], sample_counts: Sequence[float], layout: WeightLayout
) -> dict[str, npt.NDArray[Any]]:
    """The round's buffers from the present nodes' buffers (see the module docstring):
    floating-point buffers by the sample-count-weighted mean, integer and boolean buffers
    by the maximum. Returns an empty mapping for a model without buffers."""
    if not layout.buffers:
        return {}
    if len(buffers) != len(sample_counts) or not buffers:
        raise ConfigurationError(
            f"combine_buffers: {len(buffers)} buffer sets for {len(sample_counts)} sample counts"
        )
    counts = np.asarray(sample_counts, dtype=np.float64)
    if not np.all(counts >= 0) or counts.sum() <= 0:
        raise ConfigurationError(
            f"combine_buffers: sample counts must be >= 0 and not all 0, got {counts}"
        )
    weights = counts / counts.sum()
    combined: dict[str, npt.NDArray[Any]] = {}
    for entry in layout.buffers:
        stacked = np.stack([np.asarray(node[entry.name]) for node in buffers])
        if np.issubdtype(stacked.dtype, np.floating):
            mean = np.tensordot(weights, stacked.astype(np.float64), axes=1)
            combined[entry.name] = np.asarray(mean, dtype=entry.dtype)
        else:
            combined[entry.name] = np.asarray(stacked.max(axis=0), dtype=entry.dtype)
    return combined


def module_weights(module: nn.Module) -> dict[str, npt.NDArray[Any]]:
    """The module's ``state_dict`` as numpy arrays (copies, on the CPU)."""
    return {
        name: tensor.detach().cpu().numpy().copy() for name, tensor in module.state_dict().items()
    }


def load_module_weights(module: nn.Module, weights: Weights) -> None:
    """Load named arrays into ``module`` (all of its parameters and buffers, strictly)."""
    state = module.state_dict()
    missing = sorted(set(state) - set(weights))
    unexpected = sorted(set(weights) - set(state))
    if missing or unexpected:
        raise InputDataError(
            f"weights: do not fit the model; missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            source = torch.from_numpy(np.array(weights[name], order="C"))
            if tuple(source.shape) != tuple(tensor.shape):
                raise InputDataError(
                    f"weights: {name}: expected shape {tuple(tensor.shape)}, "
                    f"got {tuple(source.shape)}"
                )
            tensor.copy_(source.to(dtype=tensor.dtype))


def _numpy_dtype_name(tensor: torch.Tensor) -> str:
    return str(torch.empty(0, dtype=tensor.dtype).numpy().dtype)
