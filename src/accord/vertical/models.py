"""The networks of split learning: standardisation, bottom models, the top model.

Every party standardises its own columns with statistics of its own training rows and maps
them with its bottom model to an embedding; the label party's top model maps the parties'
embeddings to one logit per row (binary labels: sigmoid and binary cross-entropy).

With ``linear`` bottoms and a ``sum`` top the composed network is
``logit = w_top · Σ_p (W_p x_p + b_p) + b_top``, an affine function of all the columns:
vertical logistic regression, trained by split learning.

Initial weights come from a seed (a torch generator passed in, never the global one), so
a split run and the centralised composed network start from the same weights.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from accord.vertical.settings import ModelSettings

__all__ = [
    "ComposedModel",
    "Standardiser",
    "TopModel",
    "build_bottom",
    "build_top",
    "party_generator",
]


@dataclass(frozen=True)
class Standardiser:
    """Per-column ``(x - mean) / scale`` with statistics of one party's training rows."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Standardiser:
        """Mean and standard deviation of each column (a constant column keeps scale 1)."""
        mean = features.mean(axis=0, dtype=np.float64)
        scale = features.std(axis=0, dtype=np.float64)
        scale[~(scale > 1e-12)] = 1.0
        return cls(mean=mean.astype(np.float32), scale=scale.astype(np.float32))

    def transform(self, features: np.ndarray) -> np.ndarray:
        """The standardised columns as a new float32 array."""
        result: np.ndarray = ((features - self.mean) / self.scale).astype(np.float32, copy=False)
        return result


def party_generator(seed: int, party: str) -> torch.Generator:
    """The generator of ``party``'s initial weights: the run's seed and the party's name."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + zlib.crc32(party.encode("utf-8")))
    return generator


def _linear(inputs: int, outputs: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear`` with torch's default uniform ``±1/sqrt(inputs)`` init, drawn from
    ``generator``."""
    layer = nn.Linear(inputs, outputs)
    bound = 1.0 / float(np.sqrt(inputs))
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def _stack(widths: Sequence[int], generator: torch.Generator) -> nn.Sequential:
    """Affine layers between consecutive ``widths``, ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (inputs, outputs) in enumerate(itertools.pairwise(widths)):
        if index:
            layers.append(nn.ReLU())
        layers.append(_linear(inputs, outputs, generator))
    return nn.Sequential(*layers)


def build_bottom(
    feature_count: int, settings: ModelSettings, generator: torch.Generator
) -> nn.Sequential:
    """A party's bottom model from its ``feature_count`` columns to the embedding."""
    hidden = settings.bottom_hidden if settings.bottom == "mlp" else ()
    return _stack((feature_count, *hidden, settings.embedding_dim), generator)


class TopModel(nn.Module):
    """The label party's top: the parties' embeddings (in ``parties`` order) to one logit."""

    def __init__(
        self, parties: Sequence[str], settings: ModelSettings, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.parties = tuple(parties)
        self.kind = settings.top
        width = settings.embedding_dim
        if self.kind == "sum":
            self.head = _stack((width, 1), generator)
        else:
            self.head = _stack((width * len(self.parties), *settings.top_hidden, 1), generator)

    def forward(self, embeddings: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One logit per row."""
        if self.kind == "sum":
            combined = embeddings[self.parties[0]]
            for party in self.parties[1:]:
                combined = combined + embeddings[party]
        else:
            combined = torch.cat([embeddings[party] for party in self.parties], dim=1)
        logits: torch.Tensor = self.head(combined).squeeze(1)
        return logits


def build_top(parties: Sequence[str], settings: ModelSettings, seed: int) -> TopModel:
    """The top model over ``parties``' embeddings, initialised from ``seed``."""
    return TopModel(parties, settings, party_generator(seed, "\x00top"))


class ComposedModel(nn.Module):
    """Every bottom and the top as one network: the centralised twin of a split run."""

    def __init__(self, bottoms: Mapping[str, nn.Module], top: TopModel) -> None:
        super().__init__()
        self.bottoms = nn.ModuleDict(dict(bottoms))
        self.top = top

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        embeddings = {party: bottom(features[party]) for party, bottom in self.bottoms.items()}
        logits: torch.Tensor = self.top(embeddings)
        return logits
