"""Bucketing beyond memory, pure part: the bucketed path equals the in-memory path exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.alignment import (
    DuplicatePolicy,
    align,
    digest_ids,
    keyed_digests,
    prepare_ids,
    shared_order,
)
from accord.alignment._sorting import sort_order
from accord.alignment.buckets import (
    MAX_BUCKETS,
    IdTally,
    agree_buckets,
    bucket_fingerprint,
    bucket_ids,
    check_bucket_keys,
    combine_fingerprints,
    duplicate_error,
    intersect_bucket,
    merge_duplicates,
    order_keys,
    plan_buckets,
    sort_bucket,
    split_by_bucket,
)
from accord.errors import ConfigurationError, InputDataError, ProtocolError

KEY = b"k" * 32
SEED = b"s" * 32


def _ids(prefix: str, values: list[int]) -> list[str]:
    return [f"{prefix}{v:07d}" for v in values]


def _bucketed(
    ids: list[str], buckets: int, policy: DuplicatePolicy, batch: int = 97
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One party's sorted buckets, built batch by batch as the enclave does."""
    keys: list[list[np.ndarray]] = [[] for _ in range(buckets)]
    rows: list[list[np.ndarray]] = [[] for _ in range(buckets)]
    for start in range(0, len(ids), batch):
        prepared = prepare_ids([pa.array(ids[start : start + batch])], skip_invalid=True)
        sort_keys = order_keys(keyed_digests(prepared.keys, KEY), SEED)
        order, bounds = split_by_bucket(sort_keys, buckets)
        for b in range(buckets):
            chosen = order[bounds[b] : bounds[b + 1]]
            keys[b].append(sort_keys[chosen])
            rows[b].append(prepared.row_index[chosen] + start)
    result = []
    for b in range(buckets):
        bucket = sort_bucket(
            np.concatenate(keys[b]) if keys[b] else np.zeros((0, 2), np.uint64),
            np.concatenate(rows[b]) if rows[b] else np.zeros(0, np.int64),
            policy,
        )
        result.append((bucket.keys, bucket.rows))
    return result


def _row_map(parties: list[list[tuple[np.ndarray, np.ndarray]]], me: int) -> np.ndarray:
    pieces = []
    for b, (keys, rows) in enumerate(parties[me]):
        peers = [check_bucket_keys(p[b][0], b, len(parties[me]), "peer") for i, p in
                 enumerate(parties) if i != me]  # fmt: skip
        piece, _ = intersect_bucket(keys, rows, peers)
        pieces.append(piece)
    return np.concatenate(pieces)


def _in_memory(all_ids: list[list[str]], me: int, policy: DuplicatePolicy) -> np.ndarray:
    sets = [digest_ids(prepare_ids([pa.array(ids)]), KEY, duplicates=policy) for ids in all_ids]
    peers = [s.digests for i, s in enumerate(sets) if i != me]
    return align(sets[me], peers, SEED).row_map


def test_order_keys_sort_like_the_shared_order() -> None:
    digests = np.random.default_rng(1).integers(0, 2**64, size=(5000, 2), dtype=np.uint64)
    assert np.array_equal(sort_order(order_keys(digests, SEED)), shared_order(digests, SEED))


def test_bucket_ids_are_monotone_in_the_sort_key_and_cover_every_bucket() -> None:
    keys = np.random.default_rng(2).integers(0, 2**64, size=(20000, 2), dtype=np.uint64)
    keys = keys[sort_order(keys)]
    ids = bucket_ids(keys, 7)
    assert np.all(np.diff(ids.astype(np.int64)) >= 0)
    assert set(ids.tolist()) == set(range(7))
    edges = np.array([[0, 0], [2**64 - 1, 2**64 - 1]], dtype=np.uint64)
    assert bucket_ids(edges, 7).tolist() == [0, 6]
    assert bucket_ids(edges, MAX_BUCKETS).tolist() == [0, MAX_BUCKETS - 1]


def test_split_by_bucket_is_stable() -> None:
    keys = np.random.default_rng(3).integers(0, 2**64, size=(3000, 2), dtype=np.uint64)
    order, bounds = split_by_bucket(keys, 5)
    ids = bucket_ids(keys, 5)
    for b in range(5):
        chosen = order[bounds[b] : bounds[b + 1]]
        assert np.all(ids[chosen] == b)
        assert np.all(np.diff(chosen) > 0)
    assert bounds[-1] == 3000


@pytest.mark.parametrize("parties", [2, 3])
@pytest.mark.parametrize("buckets", [1, 4, 13])
def test_bucketed_row_maps_equal_the_in_memory_row_maps(parties: int, buckets: int) -> None:
    rng = np.random.default_rng(parties * 100 + buckets)
    shared = rng.choice(10**6, size=400, replace=False).tolist()
    all_ids = [
        _ids("x", shared) + _ids(f"p{i}-", rng.choice(10**6, size=300, replace=False).tolist())
        for i in range(parties)
    ]
    for ids in all_ids:
        rng.shuffle(ids)
    bucketed = [_bucketed(ids, buckets, DuplicatePolicy.ERROR) for ids in all_ids]
    for me in range(parties):
        expected = _in_memory(all_ids, me, DuplicatePolicy.ERROR)
        assert len(expected) >= 400
        assert np.array_equal(_row_map(bucketed, me), expected)


@pytest.mark.parametrize("policy", [DuplicatePolicy.FIRST, DuplicatePolicy.DROP_ALL])
def test_duplicates_handled_per_bucket_as_in_memory(policy: DuplicatePolicy) -> None:
    a = _ids("d", [5, 1, 5, 2, 3, 5, 9, 1, 4, 7, 8])
    b = _ids("d", [1, 2, 3, 4, 5, 6, 7])
    bucketed = [_bucketed(ids, 3, policy, batch=4) for ids in (a, b)]
    assert np.array_equal(_row_map(bucketed, 0), _in_memory([a, b], 0, policy))
    sets = digest_ids(prepare_ids([pa.array(a)]), KEY, duplicates=policy)
    # The merged report equals the in-memory one.
    reports = []
    keys = order_keys(keyed_digests(prepare_ids([pa.array(a)]).keys, KEY), SEED)
    order, bounds = split_by_bucket(keys, 3)
    for b in range(3):
        chosen = order[bounds[b] : bounds[b + 1]]
        reports.append(sort_bucket(keys[chosen], chosen.astype(np.int64), policy).duplicates)
    assert merge_duplicates(policy, reports) == sets.duplicates


def test_duplicate_error_equals_the_in_memory_message() -> None:
    ids = _ids("e", [1, 2, 1, 3, 2, 4, 5, 6, 7, 8, 9, 6, 10, 11, 12, 13, 11, 14, 15, 16, 15])
    ids += _ids("e", [20, 20, 21, 21])
    with pytest.raises(InputDataError) as expected:
        digest_ids(prepare_ids([pa.array(ids)]), KEY, duplicates="error")
    keys = order_keys(keyed_digests(prepare_ids([pa.array(ids)]).keys, KEY), SEED)
    order, bounds = split_by_bucket(keys, 4)
    reports = []
    for b in range(4):
        chosen = order[bounds[b] : bounds[b + 1]]
        bucket = sort_bucket(keys[chosen], chosen.astype(np.int64), "error")
        assert np.all(np.diff(bucket.rows) != 0) or len(bucket.rows) < 2
        reports.append(bucket.duplicates)
    merged = merge_duplicates("error", reports)
    error = duplicate_error(merged)
    assert error is not None and str(error) == str(expected.value)
    assert duplicate_error(merge_duplicates("first", reports)) is None


def test_id_tally_equals_prepare_ids_on_the_whole_input() -> None:
    values: list[bytes | None] = [b"a", b"", b"b", b"\xff", None, b"c", b"  ", b"\xfe\x00"] * 3
    whole = pa.array(values, type=pa.binary())
    with pytest.raises(InputDataError) as expected:
        prepare_ids([whole], names=["id"])
    tally = IdTally()
    for start in range(0, len(values), 5):
        tally.add(prepare_ids([whole.slice(start, 5)], skip_invalid=True).report)
    assert tally.report() == prepare_ids([whole], skip_invalid=True).report
    error = tally.error(["id"])
    assert error is not None and str(error) == str(expected.value)
    clean = IdTally()
    clean.add(prepare_ids([pa.array(["a"])]).report)
    assert clean.error(["id"]) is None


def test_plan_buckets_fits_the_budget() -> None:
    gib = 1 << 30
    plan = plan_buckets(100_000_000, [100_000_000], memory_limit=2 * gib, reserved_bytes=gib // 2)
    assert plan.buckets > 1
    assert plan.bucket_bytes <= (2 * gib - gib // 2) // 2
    small = plan_buckets(1000, [1000], memory_limit=2 * gib, reserved_bytes=gib // 2)
    assert small.buckets == 1
    with pytest.raises(ConfigurationError, match="memory-limit"):
        plan_buckets(10, [10], memory_limit=100, reserved_bytes=200)
    with pytest.raises(ConfigurationError, match="memory-limit"):
        plan_buckets(10, [10], memory_limit=gib, reserved_bytes=gib // 2, output_bytes=gib)
    assert agree_buckets([3, 9, 4]) == 9
    with pytest.raises(ConfigurationError):
        agree_buckets([0])


def test_peer_keys_outside_their_bucket_are_refused() -> None:
    keys = np.random.default_rng(4).integers(0, 2**64, size=(200, 2), dtype=np.uint64)
    keys = keys[sort_order(keys)]
    ids = bucket_ids(keys, 4)
    first = keys[ids == 1]
    assert check_bucket_keys(first, 1, 4, "peer") is not None
    with pytest.raises(ProtocolError, match="outside bucket"):
        check_bucket_keys(keys[ids <= 1], 1, 4, "peer")
    with pytest.raises(ProtocolError, match="canonical"):
        check_bucket_keys(first[::-1], 1, 4, "peer")


def test_fingerprints_depend_on_bucket_and_content() -> None:
    keys = np.arange(8, dtype=np.uint64).reshape(4, 2)
    assert bucket_fingerprint(0, keys) != bucket_fingerprint(1, keys)
    assert bucket_fingerprint(0, keys) != bucket_fingerprint(0, keys[:3])
    a, b = bucket_fingerprint(0, keys), bucket_fingerprint(1, keys[:2])
    assert combine_fingerprints([a, b]) != combine_fingerprints([b, a])


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 60), max_size=80),
    st.lists(st.integers(0, 60), max_size=80),
    st.integers(1, 9),
)
def test_bucketed_intersection_equals_set_intersection(
    a: list[int], b: list[int], buckets: int
) -> None:
    a_ids, b_ids = _ids("h", sorted(set(a))), _ids("h", sorted(set(b)))
    if not a_ids or not b_ids:
        return
    bucketed = [_bucketed(ids, buckets, DuplicatePolicy.ERROR, batch=7) for ids in (a_ids, b_ids)]
    rows_a, rows_b = _row_map(bucketed, 0), _row_map(bucketed, 1)
    assert [a_ids[r] for r in rows_a] == [b_ids[r] for r in rows_b]
    assert set(a_ids[r] for r in rows_a) == set(a_ids) & set(b_ids)
