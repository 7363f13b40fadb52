"""Alignment beyond memory, the pure part: keyed buckets that keep the shared order.

An input too large for memory is split into ``B`` buckets; every bucket is sorted, exchanged
and intersected on its own, so memory follows the bucket size, not the input size. For the
parties to meet in the same bucket and to end up with ONE shared order of the whole
intersection, the bucket of an ID is a function of the same keyed value the shared order
sorts by:

* ``s(d) = AES-256_k(d)`` for the ID's 128-bit digest ``d``, with
  ``k = HMAC-SHA256(seed, "accord/alignment/shared-order/v1")`` — exactly the sort key of
  :func:`accord.alignment.shared_order` (:func:`order_keys`);
* ``bucket(s) = floor(B · w₀(s) / 2⁶⁴)``, computed as ``((w₀ >> 32) · B) >> 32`` (``w₀`` is
  the first little-endian word of ``s``): a non-decreasing function of ``s`` in the
  canonical (word 0, word 1) order.

So bucket 0 holds the smallest sort keys, bucket ``B − 1`` the largest, and the intersection
of bucket ``b`` sorted by ``s`` is a contiguous run of the global shared order. Listing the
buckets' intersections in bucket order gives *exactly* the permutation the in-memory path
computes with the same seed — same intersection, same row map, position for position. The
seed (hence ``k``) comes out of the attested session and never leaves the enclaves, so no
host can compute which bucket an ID falls into or predict the order.

The enclaves exchange the sort keys ``s`` of a bucket instead of the digests: ``s`` is a
keyed pseudo-random permutation of ``d``, so it reveals exactly as little (nothing without
the key) and equal IDs still give equal values. What the bucketing adds for a host to see:
how many of its own rows fell into each bucket (the sizes of the sealed spill records) —
counts of a keyed pseudo-random split, independent of the IDs' values — and the sizes of the
per-bucket messages. It never sees which row went where (the spill is sealed).

Duplicates are found per bucket (equal IDs share a bucket), the reports are merged into the
report the in-memory path gives (:func:`merge_duplicates`), and the ``error`` policy raises
the same message only once every bucket was checked.

:func:`plan_buckets` chooses ``B`` from the input sizes and a memory budget; the parties
agree on the largest proposal (:func:`agree_buckets`).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from accord.alignment._sorting import check_digests, is_canonical, sort_order
from accord.alignment.digests import (
    DIGEST_DTYPE,
    DuplicatePolicy,
    DuplicateReport,
    _apply_duplicate_policy,
    derive_key,
    duplicate_message,
)
from accord.alignment.intersect import intersect
from accord.alignment.normalise import EXAMPLE_ROWS, IdReport, _invalid_message, _Tally
from accord.alignment.order import _ORDER_LABEL
from accord.errors import ConfigurationError, InputDataError, ProtocolError

__all__ = [
    "BYTES_PER_OWN_ROW",
    "BYTES_PER_PEER_ROW",
    "MAX_BUCKETS",
    "BucketPlan",
    "IdTally",
    "SortedBucket",
    "agree_buckets",
    "bucket_fingerprint",
    "bucket_ids",
    "check_bucket_keys",
    "combine_fingerprints",
    "duplicate_error",
    "intersect_bucket",
    "merge_duplicates",
    "order_keys",
    "plan_buckets",
    "sort_bucket",
    "split_by_bucket",
]

#: Most buckets a run may use (bucket ids fit in 16 bits; far more than any memory needs).
MAX_BUCKETS = 1 << 16
#: Working memory per own row of the bucket being processed (enclave: the sealed bucket
#: as received, its plaintext, the sort temporaries and the re-sealed output; measured).
BYTES_PER_OWN_ROW = 112
#: Working memory per peer row of a bucket (its keys as received and reassembled; up to
#: two buckets of each peer in flight).
BYTES_PER_PEER_ROW = 64

_FINGERPRINT_LABEL = b"accord/alignment/bucket-fingerprint/v1"
_RUN_FINGERPRINT_LABEL = b"accord/alignment/bucketed-fingerprint/v1"
_WORD_SHIFT = np.uint64(32)
_CHUNK_ROWS = 1 << 20


# ----------------------------------------------------------------------------- keys, buckets


def order_keys(digests: np.ndarray, seed: bytes) -> np.ndarray:
    """The shared-order sort key ``AES-256_k(d)`` of every digest (shape ``(n, 2)``, ``<u8``).

    ``sort_order(order_keys(d, seed))`` equals :func:`accord.alignment.shared_order` of
    ``d`` (the same key, the same cipher); row order is kept.
    """
    array = check_digests(digests, "digests")
    n = len(array)
    out = np.empty((n, 2), dtype=DIGEST_DTYPE)
    if n == 0:
        return out
    key = derive_key(seed, _ORDER_LABEL)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    plain = np.ascontiguousarray(array, dtype=DIGEST_DTYPE)
    scratch = np.empty(min(n, _CHUNK_ROWS) * 16 + 15, dtype=np.uint8)
    for start in range(0, n, _CHUNK_ROWS):
        piece = plain[start : start + _CHUNK_ROWS]
        size = len(piece) * 16
        encryptor.update_into(piece.view(np.uint8).reshape(-1).data, scratch.data)
        out[start : start + len(piece)] = scratch[:size].view(DIGEST_DTYPE).reshape(-1, 2)
    return out


def _check_buckets(buckets: int) -> int:
    if isinstance(buckets, bool) or not isinstance(buckets, int | np.integer):
        raise ConfigurationError(f"buckets: expected an integer, got {buckets!r}")
    if not 1 <= int(buckets) <= MAX_BUCKETS:
        raise ConfigurationError(f"buckets: expected 1 to {MAX_BUCKETS}, got {buckets}")
    return int(buckets)


def bucket_ids(sort_keys: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket (``uint32``, in ``[0, buckets)``) of each sort key; monotone in the key."""
    keys = check_digests(sort_keys, "sort keys")
    count = np.uint64(_check_buckets(buckets))
    high = keys[:, 0] >> _WORD_SHIFT
    high *= count
    high >>= _WORD_SHIFT
    return high.astype(np.uint32)


def split_by_bucket(sort_keys: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, bounds)``: ``sort_keys[order[bounds[b]:bounds[b + 1]]]`` are bucket ``b``'s.

    The order is stable, so rows keep their relative (row) order inside each bucket.
    """
    ids = bucket_ids(sort_keys, buckets)
    narrow = ids.astype(np.uint16) if buckets <= 1 << 16 else ids
    order = np.argsort(narrow, kind="stable").astype(np.int64, copy=False)
    counts = np.bincount(ids, minlength=buckets)
    bounds = np.zeros(buckets + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    return order, bounds


def check_bucket_keys(keys: np.ndarray, bucket: int, buckets: int, what: str) -> np.ndarray:
    """``keys`` as canonical sort keys that all fall into ``bucket``, or :class:`ProtocolError`."""
    array = check_digests(keys, what)
    if not is_canonical(array):
        raise ProtocolError(f"{what}: expected strictly increasing (canonical) sort keys")
    if len(array):
        ends = bucket_ids(array[[0, -1]], buckets)
        if int(ends[0]) != bucket or int(ends[1]) != bucket:
            raise ProtocolError(f"{what}: keys outside bucket {bucket}")
    return array


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class BucketPlan:
    """How many buckets one party asks for, and why (all sizes in bytes)."""

    buckets: int
    #: The memory budget the plan fits in (``None``: buckets set by hand).
    memory_limit: int | None
    #: Estimated working memory of one bucket (own rows and the peers' rows).
    bucket_bytes: int
    #: What the plan reserves outside the buckets (processes, read-ahead, relaying).
    reserved_bytes: int


def plan_buckets(
    own_rows: int,
    peer_rows: Sequence[int],
    *,
    memory_limit: int,
    reserved_bytes: int,
    output_bytes: int = 0,
) -> BucketPlan:
    """The fewest buckets whose working memory fits in ``memory_limit``.

    ``own_rows`` and ``peer_rows`` are (estimated) row counts; ``reserved_bytes`` what the
    party's processes need besides the bucket being worked on (interpreters, libraries,
    read-ahead and relay buffers); ``output_bytes`` what writing the outputs needs at the end
    (it must fit next to the reserve, else no bucket count helps). A bucket holds about
    ``1/B`` of every party's rows (the split is pseudo-random); the plan keeps half of the
    room as headroom for the spread of bucket sizes and allocator slack.
    """
    for name, value in (("own_rows", own_rows), ("memory_limit", memory_limit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"{name}: expected an integer >= 0, got {value!r}")
    total = own_rows * BYTES_PER_OWN_ROW + sum(peer_rows) * BYTES_PER_PEER_ROW
    room = memory_limit - reserved_bytes
    if room <= 0 or output_bytes > memory_limit - reserved_bytes // 2:
        need = max(reserved_bytes, reserved_bytes // 2 + output_bytes)
        raise ConfigurationError(
            f"memory limit: {_size(memory_limit)} is too small; this run needs at least "
            f"{_size(need)} besides its buckets (processes, buffers and writing "
            f"{_size(output_bytes)} of outputs); raise --memory-limit"
        )
    usable = room // 2
    buckets = max(1, math.ceil(total / usable)) if usable > 0 else MAX_BUCKETS
    if buckets > MAX_BUCKETS:
        raise ConfigurationError(
            f"memory limit: {_size(memory_limit)} would need more than {MAX_BUCKETS} buckets; "
            "raise --memory-limit"
        )
    return BucketPlan(
        buckets=buckets,
        memory_limit=memory_limit,
        bucket_bytes=math.ceil(total / buckets),
        reserved_bytes=reserved_bytes,
    )


def agree_buckets(proposals: Iterable[int]) -> int:
    """The bucket count every party uses: the largest proposal (fits every party's budget)."""
    values = [_check_buckets(p) for p in proposals]
    if not values:
        raise ProtocolError("buckets: expected at least one proposal")
    return max(values)


def _size(value: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


# ----------------------------------------------------------------------------- one bucket


@dataclass(frozen=True, eq=False)
class SortedBucket:
    """One party's bucket in canonical order of its sort keys, duplicates handled.

    ``keys`` (``(m, 2)`` ``<u8``, strictly increasing) and ``rows`` (``int64``) line up.
    With the ``error`` policy nothing is dropped here; :func:`duplicate_error` on the merged
    report decides once every bucket has been sorted.
    """

    keys: np.ndarray
    rows: np.ndarray
    duplicates: DuplicateReport


def sort_bucket(
    keys: np.ndarray, rows: np.ndarray, duplicates: DuplicatePolicy | str
) -> SortedBucket:
    """Sort one bucket by sort key and apply the duplicate policy (``first``, ``drop-all``).

    ``rows`` must be increasing (a bucket is filled in row order), so equal keys keep their
    row order and ``first`` keeps the lowest row — as :func:`~accord.alignment.digest_ids`
    does. Under ``error`` duplicates stay in the result (the report counts them).
    """
    policy = DuplicatePolicy(duplicates)
    array = check_digests(keys, "bucket keys")
    row_array = np.asarray(rows, dtype=np.int64)
    if row_array.shape != (len(array),):
        raise ProtocolError(f"bucket rows: expected {len(array)} rows, got shape {row_array.shape}")
    order = sort_order(array)
    sorted_keys = np.take(array, order, axis=0)
    # Rows 0..n-1 (no row dropped, one bucket): the order is the rows, no gather needed.
    sorted_rows = order if _is_every_row(row_array) else np.take(row_array, order)
    del order
    survey = DuplicatePolicy.FIRST if policy is DuplicatePolicy.ERROR else policy
    report, keep = _apply_duplicate_policy(sorted_keys, sorted_rows, survey)
    if policy is DuplicatePolicy.ERROR:
        report = replace(report, policy=policy, dropped_rows=0)
        if keep is not None:
            # Keep one row per key so the bucket stays canonical; the run fails anyway.
            sorted_keys = np.compress(keep, sorted_keys, axis=0)
            sorted_rows = np.compress(keep, sorted_rows)
    elif keep is not None:
        sorted_keys = np.compress(keep, sorted_keys, axis=0)
        sorted_rows = np.compress(keep, sorted_rows)
    return SortedBucket(keys=sorted_keys, rows=sorted_rows, duplicates=report)


def _is_every_row(rows: np.ndarray) -> bool:
    """True when ``rows`` is ``0, 1, ..., n - 1`` (one compare pass; a gather saved)."""
    n = len(rows)
    return (
        n > 0
        and int(rows[0]) == 0
        and int(rows[-1]) == n - 1
        and bool(np.all(rows[1:] > rows[:-1]))
    )


def merge_duplicates(
    policy: DuplicatePolicy | str, reports: Iterable[DuplicateReport]
) -> DuplicateReport:
    """One report for the whole input from the buckets' reports (equal to the in-memory one).

    Each bucket keeps the first few duplicated IDs by first row; the global first few are
    among them, so sorting the union by first row gives the in-memory examples.
    """
    chosen = DuplicatePolicy(policy)
    ids = rows = dropped = 0
    examples: list[tuple[int, ...]] = []
    for report in reports:
        ids += report.duplicated_ids
        rows += report.duplicate_rows
        dropped += report.dropped_rows
        examples.extend(report.examples)
    examples.sort(key=lambda group: group[0])
    return DuplicateReport(chosen, ids, rows, dropped, tuple(examples[:EXAMPLE_ROWS]))


def duplicate_error(report: DuplicateReport) -> InputDataError | None:
    """The error the in-memory path raises for ``report`` under ``error``, else ``None``."""
    if report.policy is not DuplicatePolicy.ERROR or report.duplicated_ids == 0:
        return None
    return InputDataError(
        duplicate_message(report.duplicated_ids, report.duplicate_rows, report.examples)
    )


def intersect_bucket(
    own_keys: np.ndarray, own_rows: np.ndarray, peer_keys: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, keys)`` of this bucket's intersection with every peer, in the shared order.

    All key arrays are canonical; the result keeps their order, which *is* the shared order.
    """
    positions = intersect(own_keys, list(peer_keys))
    rows = np.take(np.asarray(own_rows, dtype=np.int64), positions)
    keys = np.take(own_keys, positions, axis=0)
    return rows, keys


def bucket_fingerprint(bucket: int, keys: np.ndarray) -> bytes:
    """SHA-256 over one bucket's intersection keys in order (equal on every party)."""
    digest = hashlib.sha256(_FINGERPRINT_LABEL)
    digest.update(struct.pack("<IQ", bucket, len(keys)))
    digest.update(np.ascontiguousarray(keys, dtype=DIGEST_DTYPE).data)
    return digest.digest()


def combine_fingerprints(fingerprints: Sequence[bytes]) -> bytes:
    """The run's fingerprint: SHA-256 over every bucket's fingerprint in bucket order."""
    digest = hashlib.sha256(_RUN_FINGERPRINT_LABEL)
    digest.update(struct.pack("<I", len(fingerprints)))
    for fingerprint in fingerprints:
        if len(fingerprint) != 32:
            raise ProtocolError(f"bucket fingerprint: expected 32 bytes, got {len(fingerprint)}")
        digest.update(fingerprint)
    return digest.digest()


# ----------------------------------------------------------------------------- ID reports


class IdTally:
    """Merges the :class:`IdReport` of input batches into the report of the whole input.

    Batches are prepared with ``skip_invalid=True`` as they stream in; :meth:`add` shifts
    each batch's example rows by the batch's first row. :meth:`error` gives the exact
    error :func:`~accord.alignment.prepare_ids` raises on the whole input when invalid IDs
    are not skipped.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.kept_rows = 0
        self._empty = _Tally()
        self._undecodable = _Tally()

    def add(self, report: IdReport) -> None:
        """Add the next batch's report (its rows follow the rows added so far)."""
        first = self.rows
        for tally, count, examples in (
            (self._empty, report.empty_rows, report.empty_examples),
            (self._undecodable, report.undecodable_rows, report.undecodable_examples),
        ):
            tally.count += count
            room = EXAMPLE_ROWS - len(tally.examples)
            tally.examples.extend(first + int(row) for row in examples[: max(room, 0)])
        self.rows += report.rows
        self.kept_rows += report.kept_rows

    def report(self) -> IdReport:
        """The report of every batch added so far."""
        return IdReport(
            rows=self.rows,
            kept_rows=self.kept_rows,
            empty_rows=self._empty.count,
            empty_examples=tuple(self._empty.examples),
            undecodable_rows=self._undecodable.count,
            undecodable_examples=tuple(self._undecodable.examples),
        )

    def error(self, labels: Sequence[str]) -> InputDataError | None:
        """The in-memory path's error for invalid IDs (when they are not skipped), or None."""
        if not (self._empty.count or self._undecodable.count):
            return None
        return InputDataError(_invalid_message(list(labels), self._empty, self._undecodable))
