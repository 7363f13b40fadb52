"""Named arrays (a ``state_dict`` as numpy arrays) to the flat vector the policies see.

Private stand-in for ``accord.fl``'s ``WeightLayout`` and ``combine_buffers``: the trainable
parameters (every ``nn.Parameter``, in ``named_parameters`` order, the order
:class:`~accord.training.models.FlatModel` and the validation function use) are flattened to
one float32 vector; buffers (BatchNorm's running statistics and ``num_batches_tracked``)
stay by name and are combined outside the policy:

- a floating-point buffer is the sample-count-weighted mean of the present nodes' buffers;
- an integer or boolean buffer (a counter) is the maximum over the present nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from accord.aggregation.base import FloatArray
from accord.errors import ConfigurationError

Weights = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Entry:
    """One named array: shape, numpy dtype name, whether a policy sees it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Layout:
    """The named arrays of a model in ``state_dict`` order; ``dim`` is the flat length."""

    entries: tuple[Entry, ...]

    @classmethod
    def of_module(cls, module: nn.Module) -> Layout:
        parameters = {name for name, _ in module.named_parameters()}
        entries = []
        for name, tensor in module.state_dict().items():
            dtype = str(tensor.detach().cpu().numpy().dtype)
            entries.append(Entry(name, tuple(tensor.shape), dtype, name in parameters))
        return cls(tuple(entries))

    @property
    def trainable(self) -> tuple[Entry, ...]:
        return tuple(entry for entry in self.entries if entry.trainable)

    @property
    def buffers(self) -> tuple[Entry, ...]:
        return tuple(entry for entry in self.entries if not entry.trainable)

    @property
    def dim(self) -> int:
        return sum(entry.size for entry in self.trainable)

    def mismatch(self, weights: Weights) -> str | None:
        """Why ``weights`` do not fit this layout (names, shapes, finiteness), or ``None``."""
        missing = sorted({entry.name for entry in self.entries} - set(weights))
        unexpected = sorted(set(weights) - {entry.name for entry in self.entries})
        if missing or unexpected:
            return f"expected the model's arrays; missing {missing}, unexpected {unexpected}"
        for entry in self.entries:
            array = weights[entry.name]
            if tuple(array.shape) != entry.shape:
                return f"{entry.name}: expected shape {entry.shape}, got {tuple(array.shape)}"
            floating = np.issubdtype(array.dtype, np.floating)
            if not entry.trainable and floating and not np.isfinite(array).all():
                return f"buffer {entry.name} contains NaN or Inf"
        return None

    def flatten(self, weights: Weights) -> FloatArray:
        """The trainable parameters as one float32 vector (checked by :meth:`mismatch`)."""
        if not self.trainable:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(
            [
                np.asarray(weights[entry.name], dtype=np.float32).reshape(-1)
                for entry in self.trainable
            ]
        )

    def buffers_of(self, weights: Weights) -> dict[str, npt.NDArray[Any]]:
        return {entry.name: np.asarray(weights[entry.name]) for entry in self.buffers}

    def join(self, flat: FloatArray, buffers: Weights) -> dict[str, npt.NDArray[Any]]:
        """Named arrays from the flat trainable vector and the buffers, each in its dtype."""
        if flat.shape != (self.dim,):
            raise ConfigurationError(f"weights: expected shape ({self.dim},), got {flat.shape}")
        named: dict[str, npt.NDArray[Any]] = {}
        offset = 0
        for entry in self.entries:
            if entry.trainable:
                piece = flat[offset : offset + entry.size].reshape(entry.shape)
                named[entry.name] = piece.astype(entry.dtype, copy=True)
                offset += entry.size
            else:
                named[entry.name] = np.asarray(buffers[entry.name], dtype=entry.dtype).copy()
        return named


def combine_buffers(
    buffers: Sequence[Weights], sample_counts: Sequence[float], layout: Layout
) -> dict[str, npt.NDArray[Any]]:
    """Float buffers: the sample-count-weighted mean; integer and boolean buffers: the
    maximum. Empty for a model without buffers."""
    if not layout.buffers:
        return {}
    counts = np.asarray(sample_counts, dtype=np.float64)
    if len(buffers) != counts.shape[0] or not buffers or counts.sum() <= 0:
        raise ConfigurationError(
            f"combine_buffers: {len(buffers)} buffer sets for sample counts {counts}"
        )
    shares = counts / counts.sum()
    combined: dict[str, npt.NDArray[Any]] = {}
    for entry in layout.buffers:
        stacked = np.stack([np.asarray(node[entry.name]) for node in buffers])
        if np.issubdtype(stacked.dtype, np.floating):
            mean = np.tensordot(shares, stacked.astype(np.float64), axes=1)
            combined[entry.name] = np.asarray(mean, dtype=entry.dtype)
        else:
            combined[entry.name] = np.asarray(stacked.max(axis=0), dtype=entry.dtype)
    return combined
