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
    own_high = np.ascontiguousarray(own[:, 0])
    own_low = np.ascontiguousarray(own[:, 1])
    # Positions (into the sorted own digests) still present in every peer seen so far;
    # smaller peers first, so the candidates shrink fastest. None means "all".
    candidates: np.ndarray | None = None
    for given in sorted(peers, key=len):
        peer = given if is_canonical(given) else np.take(given, sort_order(given), axis=0)
        if candidates is None:
            found = _members(own_high, own_low, peer)
            candidates = np.flatnonzero(found)
        else:
            found = _members(np.take(own_high, candidates), np.take(own_low, candidates), peer)
            candidates = candidates[found]
        if candidates.size == 0:
            break
    assert candidates is not None
    candidates = candidates.astype(np.int64, copy=False)
    if order is None:
        return candidates
    return np.sort(np.take(order, candidates))


def _members(query_high: np.ndarray, query_low: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Whether each query (sorted by (high, low)) occurs in ``table`` (sorted the same way).

    ``table`` may hold runs of equal word 0 (even equal rows, when it came unsorted); each
    extra position of a run is checked in one more vectorised pass over the few queries
    whose first try missed.
    """
    size = len(table)
    if size == 0 or len(query_high) == 0:
        return np.zeros(len(query_high), dtype=bool)
    high = np.ascontiguousarray(table[:, 0])
    low = np.ascontiguousarray(table[:, 1])
    start = _sorted_searchsorted(high, query_high)
    at = np.minimum(start, size - 1)
    high_match = np.take(high, at) == query_high
    high_match &= start < size
    found: np.ndarray = high_match & (np.take(low, at) == query_low)
    if not bool(np.any(high[1:] == high[:-1])):
        return found
    # Rare: ties in word 0 within the table. Walk each missed query's run.
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


def _sorted_searchsorted(table: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``np.searchsorted(table, queries)`` for sorted uint64 arrays, bucketed to stay in cache."""
    buckets = len(table) // _BUCKET_ROWS
    if buckets < 2:
        return np.searchsorted(table, queries).astype(np.int64, copy=False)
    width = np.uint64((1 << 64) // buckets)
    bounds = np.arange(1, buckets, dtype=np.uint64) * width
    table_cuts = np.concatenate(([0], np.searchsorted(table, bounds), [len(table)])).tolist()
    query_cuts = np.concatenate(([0], np.searchsorted(queries, bounds), [len(queries)])).tolist()
    out = np.empty(len(queries), dtype=np.int64)
    for bucket in range(buckets):
        q0, q1 = query_cuts[bucket], query_cuts[bucket + 1]
        if q0 == q1:
            continue
        t0, t1 = table_cuts[bucket], table_cuts[bucket + 1]
        out[q0:q1] = np.searchsorted(table[t0:t1], queries[q0:q1])
        out[q0:q1] += t0
    return out
