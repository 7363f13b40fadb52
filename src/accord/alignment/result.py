"""The whole pure alignment step for one party, and its typed result."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from accord.alignment._sorting import check_digests
from accord.alignment.digests import DIGEST_DTYPE, DigestSet
from accord.alignment.intersect import intersect
from accord.alignment.order import shared_order

__all__ = ["AlignmentResult", "align"]

_FINGERPRINT_LABEL = b"accord/alignment/fingerprint/v1"


@dataclass(frozen=True, eq=False)
class AlignmentResult:
    """What one party's enclave computed.

    ``row_map[j]`` is this party's local row index (0-based data row) at shared position
    ``j``; ``len(row_map) == intersection_size``. ``fingerprint`` is SHA-256 over the
    intersection's digests in the shared order: equal on every party exactly when their
    outputs line up position by position. Compare it across enclaves over the channel; it
    reveals nothing about the IDs (the digests are keyed). ``peer_sizes`` are the sizes of
    the peers' digest sets, known to this enclave; whether the host sees them is the
    runtime's choice.
    """

    own_size: int
    peer_sizes: tuple[int, ...]
    intersection_size: int
    row_map: np.ndarray
    fingerprint: bytes


def align(own: DigestSet, peer_digests: Sequence[np.ndarray], seed: bytes) -> AlignmentResult:
    """Intersect ``own`` with every peer's digests and put the result in the shared order.

    ``peer_digests`` are the other parties' canonical digest arrays (any order also works),
    ``seed`` the session's :func:`~accord.alignment.shared_seed`.
    """
    peers = [check_digests(p, f"peer {i} digests") for i, p in enumerate(peer_digests)]
    positions = intersect(own.digests, peers)
    common = np.take(own.digests, positions, axis=0)
    order = shared_order(common, seed)
    positions = np.take(positions, order)
    row_map = np.take(np.asarray(own.row_index), positions).astype(np.int64, copy=False)
    row_map.flags.writeable = False
    fingerprint = hashlib.sha256(_FINGERPRINT_LABEL)
    fingerprint.update(
        np.ascontiguousarray(np.take(common, order, axis=0), dtype=DIGEST_DTYPE).data
    )
    return AlignmentResult(
        own_size=len(own.digests),
        peer_sizes=tuple(len(p) for p in peers),
        intersection_size=len(positions),
        row_map=row_map,
        fingerprint=fingerprint.digest(),
    )
