"""Intersection, shared seed, shared order and the whole pure step, against set oracles."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.alignment import (
    align,
    digest_ids,
    digests_from_bytes,
    digests_to_bytes,
    intersect,
    prepare_ids,
    shared_order,
    shared_seed,
)
from accord.alignment._sorting import sort_order
from accord.errors import ProtocolError

KEY = b"k" * 32
SEED = b"s" * 32


def digest_array(rows: list[tuple[int, int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint64).reshape(-1, 2)


# Small word-0 values force ties in word 0 (the run-walking path); large ones are typical.
words = st.integers(0, 3) | st.integers(0, 2**64 - 1)
digest_sets = st.lists(st.tuples(words, st.integers(0, 5)), unique=True, max_size=40)


@settings(max_examples=200, deadline=None)
@given(digest_sets, digest_sets)
def test_two_party_intersection_equals_set_intersection(
    own: list[tuple[int, int]], peer: list[tuple[int, int]]
) -> None:
    found = intersect(digest_array(own), [digest_array(peer)])
    expected = [i for i, d in enumerate(own) if d in set(peer)]
    assert found.tolist() == expected
    assert found.dtype == np.int64


@settings(max_examples=150, deadline=None)
@given(digest_sets, digest_sets, digest_sets)
def test_three_party_intersection_is_the_full_one(
    a: list[tuple[int, int]], b: list[tuple[int, int]], c: list[tuple[int, int]]
) -> None:
    found = intersect(digest_array(a), [digest_array(b), digest_array(c)])
    common = set(a) & set(b) & set(c)
    assert [a[i] for i in found] == [d for d in a if d in common]
    # Peer order does not matter.
    swapped = intersect(digest_array(a), [digest_array(c), digest_array(b)])
    assert swapped.tolist() == found.tolist()


@settings(max_examples=100, deadline=None)
@given(digest_sets, st.lists(st.tuples(words, st.integers(0, 5)), max_size=40))
def test_duplicates_and_canonical_inputs(
    own: list[tuple[int, int]], peer: list[tuple[int, int]]
) -> None:
    # A peer with repeated rows and a canonical (sorted) own set give the same membership.
    own_array = digest_array(own)
    canonical = np.take(own_array, sort_order(own_array), axis=0)
    found = intersect(canonical, [digest_array(peer)])
    expected = [i for i, d in enumerate(map(tuple, canonical.tolist())) if d in set(peer)]
    assert found.tolist() == expected


def test_large_random_sets_use_bucketed_search() -> None:
    rng = np.random.default_rng(11)
    universe = rng.integers(0, 2**63, size=(60_000, 2), dtype=np.uint64)
    own = universe[:40_000]
    peer = universe[20_000:]
    own_sorted = np.take(own, sort_order(own), axis=0)
    peer_sorted = np.take(peer, sort_order(peer), axis=0)
    found = intersect(own_sorted, [peer_sorted])
    expected = set(map(tuple, universe[20_000:40_000].tolist()))
    assert len(found) == 20_000
    assert set(map(tuple, own_sorted[found].tolist())) == expected


def test_intersect_needs_a_peer_and_valid_arrays() -> None:
    with pytest.raises(ProtocolError, match="at least one peer"):
        intersect(digest_array([(1, 2)]), [])
    with pytest.raises(ProtocolError, match=r"peer 0 digests: expected an \(n, 2\) array"):
        intersect(digest_array([(1, 2)]), [np.zeros(4, dtype=np.uint64)])


def test_shared_seed_is_order_independent_and_checked() -> None:
    shares = [bytes([i]) * 32 for i in range(3)]
    seeds = {shared_seed(list(p)) for p in itertools.permutations(shares)}
    assert len(seeds) == 1
    assert len(seeds.pop()) == 32
    assert shared_seed(shares[:2]) != shared_seed(shares)
    with pytest.raises(ProtocolError, match="at least 16 bytes, got 15"):
        shared_seed([b"x" * 15, b"y" * 32])
    with pytest.raises(ProtocolError, match="equal"):
        shared_seed([b"x" * 32, b"x" * 32])
    with pytest.raises(ProtocolError, match="at least one share"):
        shared_seed([])


def random_digests(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    digests = rng.integers(0, 2**64 - 1, size=(n, 2), dtype=np.uint64)
    return np.take(digests, sort_order(digests), axis=0)


def test_shared_order_is_a_permutation_independent_of_input_order() -> None:
    digests = random_digests(1000, 1)
    order = shared_order(digests, SEED)
    assert sorted(order.tolist()) == list(range(1000))
    shuffled = np.random.default_rng(2).permutation(1000)
    order_shuffled = shared_order(digests[shuffled], SEED)
    assert np.array_equal(digests[shuffled][order_shuffled], digests[order])


def test_shared_order_is_neither_input_nor_sorted_and_differs_by_seed() -> None:
    digests = random_digests(1000, 3)
    order = shared_order(digests, SEED)
    assert not np.array_equal(order, np.arange(1000))  # input order == sorted order here
    assert not np.array_equal(order, np.arange(1000)[::-1])
    other = shared_order(digests, b"t" * 32)
    assert not np.array_equal(order, other)
    # A shuffle, not a near-identity: few elements stay in place.
    assert int(np.count_nonzero(order == np.arange(1000))) < 20


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 60).flatmap(lambda n: st.permutations(list(range(n)))))
def test_shared_order_same_for_every_party(permutation: list[int]) -> None:
    n = len(permutation)
    digests = random_digests(n, n)
    first = digests[shared_order(digests, SEED)]
    second_input = digests[np.array(permutation, dtype=np.int64)]
    second = second_input[shared_order(second_input, SEED)]
    assert np.array_equal(first, second)


def test_shared_order_empty_and_seed_checked() -> None:
    assert shared_order(np.zeros((0, 2), dtype=np.uint64), SEED).tolist() == []
    with pytest.raises(Exception, match="at least 16 bytes"):
        shared_order(random_digests(3, 0), b"short")


def run_parties(tables: list[list[str]], seed: bytes = SEED, key: bytes = KEY) -> list:  # type: ignore[type-arg]
    """Every party's enclave step, exchanging digests in their wire form."""
    sets = [digest_ids(prepare_ids([pa.array(ids)]), key) for ids in tables]
    wires = [digests_to_bytes(s.digests) for s in sets]
    results = []
    for i, own in enumerate(sets):
        peers = [digests_from_bytes(w) for j, w in enumerate(wires) if j != i]
        results.append(align(own, peers, seed))
    return results


ids_strategy = st.lists(st.text("abcdefgh", min_size=1, max_size=3), unique=True, max_size=40)


@settings(max_examples=100, deadline=None)
@given(ids_strategy, ids_strategy, ids_strategy)
def test_parties_line_up_and_equal_set_intersection(
    a: list[str], b: list[str], c: list[str]
) -> None:
    for tables in ([a, b], [a, b, c]):
        results = run_parties(tables)
        expected = set.intersection(*(set(t) for t in tables))
        aligned = [[t[r] for r in res.row_map] for t, res in zip(tables, results, strict=True)]
        # Every party holds the full intersection, in the same order.
        assert set(aligned[0]) == expected
        assert all(column == aligned[0] for column in aligned)
        assert len({res.fingerprint for res in results}) == 1
        for i, res in enumerate(results):
            assert res.intersection_size == len(expected)
            assert res.own_size == len(tables[i])
            assert res.peer_sizes == tuple(len(t) for j, t in enumerate(tables) if j != i)


def test_hand_computed_two_party_alignment() -> None:
    # Arrange: overlap {carol, alice, erin} in different row orders.
    a = ["alice", "bob", "carol", "dave", "erin"]
    b = ["frank", "erin", "carol", "alice"]
    # Act
    res_a, res_b = run_parties([a, b])
    # Assert
    assert (res_a.own_size, res_a.peer_sizes, res_a.intersection_size) == (5, (4,), 3)
    assert (res_b.own_size, res_b.peer_sizes, res_b.intersection_size) == (4, (5,), 3)
    assert [a[r] for r in res_a.row_map] == [b[r] for r in res_b.row_map]
    assert sorted(res_a.row_map.tolist()) == [0, 2, 4]
    assert sorted(res_b.row_map.tolist()) == [1, 2, 3]
    assert res_a.fingerprint == res_b.fingerprint
    assert not res_a.row_map.flags.writeable


def test_order_differs_across_sessions_and_is_not_row_or_sorted_order() -> None:
    ids = [f"person-{i:04d}" for i in range(500)]
    peer = ids[::-1]
    first = run_parties([ids, peer], seed=b"1" * 32)[0].row_map
    second = run_parties([ids, peer], seed=b"2" * 32)[0].row_map
    assert sorted(first.tolist()) == list(range(500))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(500))
    assert not np.array_equal(first, np.argsort(ids))
    # Another session key changes the digests, hence the canonical order, too.
    third = run_parties([ids, peer], seed=b"1" * 32, key=b"other key, 32 bytes long.......")[0]
    assert not np.array_equal(first, third.row_map)


def test_pairwise_overlaps_are_not_output() -> None:
    # a∩b is large, a∩b∩c small: every party only gets the three-way intersection.
    a = ["x", "y", "z", "w"]
    b = ["x", "y", "z"]
    c = ["z", "q"]
    results = run_parties([a, b, c])
    for ids, res in zip([a, b, c], results, strict=True):
        assert [ids[r] for r in res.row_map] == ["z"]
