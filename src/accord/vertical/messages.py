"""The messages of a vertical round, as they travel between parties.

Training, one batch: the label party names the batch (:class:`BatchRequest`: an epoch and
a batch number, never row indices: each party derives the rows itself), every feature party
answers with its :class:`Embedding`, and the label party returns to each feature party the
:class:`EmbeddingGradient` of that party's embedding and nothing else. Scoring a split:
each feature party sends a :class:`SplitEmbedding` of every row of the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accord.errors import ProtocolError

__all__ = ["BatchRequest", "Embedding", "EmbeddingGradient", "SplitEmbedding", "check_matrix"]


@dataclass(frozen=True)
class BatchRequest:
    """Batch ``batch`` of epoch ``epoch`` in the order all parties derive from the seed."""

    epoch: int
    batch: int


@dataclass(frozen=True)
class Embedding:
    """A feature party's embedding of one training batch: float32, (rows, embedding_dim)."""

    party: str
    epoch: int
    batch: int
    values: np.ndarray


@dataclass(frozen=True)
class EmbeddingGradient:
    """The gradient of the loss with respect to one party's :class:`Embedding`."""

    party: str
    epoch: int
    batch: int
    values: np.ndarray


@dataclass(frozen=True)
class SplitEmbedding:
    """A feature party's embedding (no gradient kept) of every row of ``split``."""

    party: str
    split: str
    values: np.ndarray


def check_matrix(what: str, values: np.ndarray, rows: int, columns: int) -> None:
    """Refuse anything but a finite float32 ``(rows, columns)`` array, naming ``what``."""
    if not isinstance(values, np.ndarray) or values.dtype != np.float32:
        found = values.dtype if isinstance(values, np.ndarray) else type(values).__name__
        raise ProtocolError(f"{what}: expected float32 values, got {found}")
    if values.shape != (rows, columns):
        raise ProtocolError(f"{what}: expected shape {(rows, columns)}, got {values.shape}")
    if not np.isfinite(values).all():
        raise ProtocolError(f"{what}: expected finite values, got NaN or Inf")
