"""Splitting a training pool across nodes: IID, Dirichlet-α label skew, label shards."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from accord._validation import require_choice, require_int, require_number
from accord.errors import ConfigurationError

logger = logging.getLogger(__name__)

__all__ = ["PARTITIONS", "PartitionSpec", "partition"]

PARTITIONS = ("dirichlet", "iid", "shards")
#: Dirichlet draws tried before the short nodes of the last one are topped up.
_DIRICHLET_DRAWS = 1000


@dataclass(frozen=True)
class PartitionSpec:
    """``kind``: ``dirichlet`` (default), ``iid`` or ``shards``; ``alpha``: Dirichlet
    concentration (default 0.5, smaller is more skewed); ``shards_per_node`` (default 2);
    ``min_samples``: fewest samples a node may get (default 10)."""

    kind: str = "dirichlet"
    alpha: float = 0.5
    shards_per_node: int = 2
    min_samples: int = 10

    def __post_init__(self) -> None:
        require_choice("partition", self.kind, PARTITIONS)
        require_number("alpha", self.alpha, minimum=0.0, exclusive_minimum=True)
        require_int("shards_per_node", self.shards_per_node, minimum=1)
        require_int("min_samples", self.min_samples, minimum=1)


def partition(
    labels: npt.NDArray[np.int64], n_nodes: int, spec: PartitionSpec, rng: np.random.Generator
) -> list[npt.NDArray[np.intp]]:
    """Indices of each node's samples; every sample goes to exactly one node."""
    require_int("nodes", n_nodes, minimum=1)
    if labels.size < n_nodes * spec.min_samples:
        raise ConfigurationError(
            f"nodes: {labels.size} samples cannot give {n_nodes} nodes "
            f"{spec.min_samples} samples each"
        )
    if spec.kind == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(labels.size), n_nodes)]
    if spec.kind == "shards":
        # Shards differ in size by at most one sample, so the smallest node gets at least
        # this many, whatever the draw.
        fewest = spec.shards_per_node * (labels.size // (n_nodes * spec.shards_per_node))
        if fewest < spec.min_samples:
            raise ConfigurationError(
                f"shards_per_node: {spec.shards_per_node} shards per node of {labels.size} "
                f"samples over {n_nodes} nodes can leave a node {fewest} samples; expected at "
                f"least {spec.min_samples} each (fewer shards per node, or fewer nodes)"
            )
        return _shards(labels, n_nodes, spec.shards_per_node, rng)
    return _dirichlet(labels, n_nodes, spec.alpha, spec.min_samples, rng)


def _dirichlet(
    labels: npt.NDArray[np.int64],
    n_nodes: int,
    alpha: float,
    min_samples: int,
    rng: np.random.Generator,
) -> list[npt.NDArray[np.intp]]:
    classes = np.unique(labels)
    for _attempt in range(_DIRICHLET_DRAWS):
        parts: list[list[int]] = [[] for _ in range(n_nodes)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(n_nodes, alpha))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(int)
            for node, chunk in enumerate(np.split(members, cuts)):
                parts[node] += chunk.tolist()
        if min(len(p) for p in parts) >= min_samples:
            return [np.sort(np.array(p, dtype=np.intp)) for p in parts]
    # So skewed a draw leaves some node short every time (alpha 0.1 over 40 nodes or
    # more): the last draw, with the short nodes topped up by random samples of the
    # largest ones. The skew of every other node is kept, and the total is enough (checked
    # above), so this always succeeds.
    short = sum(len(p) < min_samples for p in parts)
    logger.warning(
        "alpha=%s: no draw of %d gave each of %d nodes %d samples; %d short nodes were "
        "topped up with random samples of the largest nodes",
        alpha,
        _DIRICHLET_DRAWS,
        n_nodes,
        min_samples,
        short,
    )
    return [np.sort(np.array(p, dtype=np.intp)) for p in _top_up(parts, min_samples, rng)]


def _top_up(parts: list[list[int]], min_samples: int, rng: np.random.Generator) -> list[list[int]]:
    """``parts`` with every node below ``min_samples`` given random samples of the node that
    holds the most at that moment (smallest nodes first)."""
    for node in np.argsort([len(p) for p in parts], kind="stable"):
        while len(parts[node]) < min_samples:
            donor = max(range(len(parts)), key=lambda k: len(parts[k]))
            parts[node].append(parts[donor].pop(int(rng.integers(len(parts[donor])))))
    return parts


def _shards(
    labels: npt.NDArray[np.int64], n_nodes: int, shards_per_node: int, rng: np.random.Generator
) -> list[npt.NDArray[np.intp]]:
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, n_nodes * shards_per_node)
    assignment = rng.permutation(len(shards))
    return [
        np.sort(np.concatenate([shards[s] for s in assignment[node::n_nodes]]))
        for node in range(n_nodes)
    ]
