"""Torch models and their flat-vector view.

Gradients and weights cross every boundary (policies, the network, checkpoints) as one
flat float32 vector; :class:`FlatModel` converts between that vector and a module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from accord._validation import require_choice, require_int
from accord.errors import ConfigurationError
from accord.types import FloatArray

__all__ = ["MODEL_KINDS", "FlatModel", "ModelSpec", "build_model"]

MODEL_KINDS = ("logistic", "mlp")


@dataclass(frozen=True)
class ModelSpec:
    """``kind``: ``mlp`` (default) or ``logistic``; ``hidden``: hidden layer widths of the
    MLP (default ``(32,)``, i.e. 64-32-10 on digits)."""

    kind: str = "mlp"
    hidden: tuple[int, ...] = (32,)

    def __post_init__(self) -> None:
        require_choice("model", self.kind, MODEL_KINDS)
        if self.kind == "mlp" and not self.hidden:
            raise ConfigurationError("hidden: an mlp needs at least one hidden layer width")
        for width in self.hidden:
            require_int("hidden", width, minimum=1)


def build_model(spec: ModelSpec, n_features: int, n_classes: int, seed: int) -> nn.Module:
    """A freshly initialised model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.kind == "logistic":
            return nn.Linear(n_features, n_classes)
        layers: list[nn.Module] = []
        width = n_features
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)


class FlatModel:
    """A module plus the layout of its parameters in one flat vector."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in module.named_parameters()]
        self.sizes = [int(np.prod(shape)) for shape in self.shapes]
        self.dim = int(sum(self.sizes))

    @property
    def device(self) -> torch.device:
        first = next(self.module.parameters(), None)
        return torch.device("cpu") if first is None else first.device

    def get_flat(self) -> FloatArray:
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])
        return flat.cpu().numpy().astype(np.float32, copy=True)

    def set_flat(self, weights: FloatArray) -> None:
        if weights.shape != (self.dim,):
            raise ConfigurationError(f"weights: expected shape ({self.dim},), got {weights.shape}")
        # Copy, never alias: vector_to_parameters would make the parameters views of the
        # caller's array, and local training would then overwrite w_t in place.
        source = torch.from_numpy(np.ascontiguousarray(weights)).to(self.device)
        with torch.no_grad():
            for parameter, piece in zip(
                self.module.parameters(), torch.split(source, self.sizes), strict=True
            ):
                parameter.copy_(piece.view_as(parameter))

    def unflatten(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a (K, dim) tensor into per-parameter (K, *shape) tensors."""
        pieces = torch.split(stacked, self.sizes, dim=1)
        return {
            name: piece.reshape(stacked.shape[0], *shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }
