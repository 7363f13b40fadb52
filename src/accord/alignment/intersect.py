"""Intersection of n ≥ 2 parties' digest sets, sort-based and vectorised.

Both sides are brought to canonical order (sorted by (word 0, word 1); sets that arrive
canonical skip the sort), then each own digest is looked up in each peer's sorted words with
a binary search. The search is cut into buckets of about 4096 peer digests by the leading
bits, so each bucket's search stays in cache (about twice as fast as one big
``searchsorted``). The full 128 bits are compared on every hit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from accord.alignment._sorting import check_digests, is_canonical, sort_order
from accord.errors import ProtocolError

__all__ = ["intersect"]

_BUCKET_ROWS = 4096


def intersect(own_digests: np.ndarray, peer_digests: Sequence[np.ndarray]) -> np.ndarray:
    """Indices into ``own_digests`` (ascending, int64) of the digests present in EVERY peer.

    Works for any input order; canonical (strictly increasing) inputs, as
    :func:`~accord.alignment.digest_ids` and the wire form give them, skip the sort. With
    ``k`` peers the result is the intersection of all ``k + 1`` sets — the pairwise ones are
    never returned. An empty ``peer_digests`` is refused: alignment needs two parties.
    """
    own = check_digests(own_digests, "own digests")
    if len(peer_digests) == 0:
        raise ProtocolError("intersect: expected at least one peer's digests (n >= 2 parties)")
    peers = [check_digests(p, f"peer {i} digests") for i, p in enumerate(peer_digests)]
    order: np.ndarray | None = None
    if not is_canonical(own):
        order = sort_order(own)
        own = np.take(own, order, axis=0)
    # Positions (into the sorted own digests) still present in every peer seen so far;
    # smaller peers first, so the candidates shrink fastest. None means "all".
    candidates: np.ndarray | None = None
    for given in sorted(peers, key=len):
        peer = given if is_canonical(given) else np.take(given, sort_order(given), axis=0)
        if candidates is None:
            candidates = np.flatnonzero(_members(own, peer))
        else:
            candidates = candidates[_members(np.take(own, candidates, axis=0), peer)]
        if candidates.size == 0:
            break
    assert candidates is not None
    candidates = candidates.astype(np.int64, copy=False)
    if order is None:
        return candidates
    return np.sort(np.take(order, candidates))


def _members(queries: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Whether each row of ``queries`` occurs in ``table``; both sorted by (word 0, word 1).

    Both are cut by the top bits of word 0 into buckets of 2048-4096 table rows, so each
    bucket's search and compares run on small contiguous copies that stay in cache, and no
    whole-array temporary is made.
    """
    found = np.zeros(len(queries), dtype=bool)
    if len(table) == 0 or len(queries) == 0:
        return found
    bits = max(0, (len(table) // _BUCKET_ROWS).bit_length() - 1)
    buckets = 1 << bits
    table_cuts = _bucket_cuts(table[:, 0], bits)
    query_cuts = _bucket_cuts(queries[:, 0], bits)
    for bucket in range(buckets):
        q0, q1 = query_cuts[bucket], query_cuts[bucket + 1]
        t0, t1 = table_cuts[bucket], table_cuts[bucket + 1]
        if q0 == q1 or t0 == t1:
            continue
        found[q0:q1] = _members_small(queries[q0:q1], table[t0:t1])
    return found


def _bucket_cuts(words: np.ndarray, bits: int) -> list[int]:
    """Start of each of the ``2**bits`` buckets (by the top bits) in sorted ``words``: one
    binary search per bucket boundary."""
    if bits == 0:
        return [0, len(words)]
    bounds = np.arange(1, 1 << bits, dtype=np.uint64) << np.uint64(64 - bits)
    return [0, *np.searchsorted(words, bounds).tolist(), len(words)]


def _members_small(queries: np.ndarray, table: np.ndarray) -> np.ndarray:
    """:func:`_members` for one bucket (small arrays)."""
    size = len(table)
    high = np.ascontiguousarray(table[:, 0])
    low = np.ascontiguousarray(table[:, 1])
    query_high = np.ascontiguousarray(queries[:, 0])
    query_low = np.ascontiguousarray(queries[:, 1])
    start = np.searchsorted(high, query_high)
    at = np.minimum(start, size - 1)
    high_match = (high[at] == query_high) & (start < size)
    found: np.ndarray = high_match & (low[at] == query_low)
    if size < 2 or not bool(np.any(high[1:] == high[:-1])):
        return found
    # Rare: ties in word 0 within the table (even equal rows when it came unsorted).
    # Walk the run of each query whose first try missed, one position per pass.
    pending = np.flatnonzero(high_match & ~found)
    step = 1
    while pending.size:
        position = start[pending] + step
        alive = position < size
        pending, position = pending[alive], position[alive]
        same_run = high[position] == query_high[pending]
        pending, position = pending[same_run], position[same_run]
        hit = low[position] == query_low[pending]
        found[pending[hit]] = True
        pending = pending[~hit]
        step += 1
    return found
