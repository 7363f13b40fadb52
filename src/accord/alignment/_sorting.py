"""Sorting 128-bit digests fast and exactly (internal).

numpy has no 128-bit integer and its ``argsort`` of 64-bit keys is about three times slower
than ``sort``. :func:`sort_order` therefore sorts a *packed* 64-bit key — the top bits of word
0 with the element's position in the low ``b = bit_length(n - 1)`` bits — with ``np.sort``, and
reads the permutation back from the low bits. Elements whose top bits tie (about n²/2^(65-b)
pairs, a few dozen at 10M) are then put in exact (word 0, word 1) order with a ``lexsort`` of
just those elements. Equal digests keep their input order (the position breaks the tie).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from accord.errors import ProtocolError

__all__ = ["check_digests", "is_canonical", "sort_order"]


def check_digests(digests: Any, what: str) -> np.ndarray:
    """Return ``digests`` as an ``(n, 2)`` uint64 array, or raise :class:`ProtocolError`."""
    array = np.asarray(digests)
    if array.ndim != 2 or array.shape[1] != 2 or array.dtype.kind != "u" or array.itemsize != 8:
        raise ProtocolError(
            f"{what}: expected an (n, 2) array of uint64, got shape {array.shape} "
            f"dtype {array.dtype}"
        )
    return array


def is_canonical(digests: np.ndarray) -> bool:
    """True when rows are strictly increasing in (word 0, word 1) order (so also distinct)."""
    if len(digests) < 2:
        return True
    high = digests[:, 0]
    later, earlier = high[1:], high[:-1]
    if not bool(np.all(later >= earlier)):
        return False
    ties = np.flatnonzero(later == earlier)
    if ties.size == 0:
        return True
    low = digests[:, 1]
    return bool(np.all(low[ties + 1] > low[ties]))


def sort_order(digests: np.ndarray) -> np.ndarray:
    """Permutation (int64) that sorts ``digests`` by (word 0, word 1); stable on equal rows."""
    n = len(digests)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    bits = max(1, (n - 1).bit_length())
    if bits > 48:  # pragma: no cover - 2^48 rows do not fit in memory anyway
        return np.lexsort((digests[:, 1], digests[:, 0])).astype(np.int64)
    index_mask = np.uint64((1 << bits) - 1)
    packed = digests[:, 0] & ~index_mask
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    order = (packed & index_mask).view(np.int64)
    prefix = packed
    prefix >>= np.uint64(bits)
    tie = prefix[1:] == prefix[:-1]
    del prefix, packed
    if tie.any():
        involved = np.zeros(n, dtype=bool)
        involved[:-1] |= tie
        involved[1:] |= tie
        slots = np.flatnonzero(involved)
        members = order[slots]
        # Members of one tie run share the prefix, so a global (word 0, word 1) order of all
        # members keeps the runs where they are and orders each run exactly. lexsort is
        # stable and the members arrive in position order within a run.
        chosen = np.take(digests, members, axis=0)
        exact = np.lexsort((chosen[:, 1], chosen[:, 0]))
        order[slots] = members[exact]
    return order
