"""The enclave's bucketed run, driven in process: equal to the in-memory path, resumable."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from accord.alignment import align, digest_ids, prepare_ids
from accord.errors import ChannelError, ConfigurationError, InputDataError, ProtocolError
from accord.tee.core.bucket_plan import BUCKET_HEADER, Proposal, agree_run_buckets, session_keys
from accord.tee.core.bucketed import BucketedRun

SEALING_KEY = b"q" * 32
SECRET = b"z" * 32


def _tables(parties: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    shared = [f"s{v:08d}" for v in rng.choice(10**7, size=700, replace=False)]
    tables = []
    for i in range(parties):
        ids = shared + [f"p{i}-{v:08d}" for v in rng.choice(10**7, size=500, replace=False)]
        rng.shuffle(ids)
        tables.append(ids)
    return tables


def _new(name: str, names: list[str], buckets: int, duplicates: str = "error") -> BucketedRun:
    return BucketedRun.start(
        party=name,
        session="s",
        parties=names,
        key_columns=["id"],
        duplicates=duplicates,
        skip_invalid=False,
        secret=SECRET,
        buckets=buckets,
        sealing_key=SEALING_KEY,
        random_bytes=os.urandom,
    )


class Party:
    """One party: its enclave run and the files its host would keep."""

    def __init__(self, name: str, names: list[str], ids: list[str], buckets: int) -> None:
        self.name = name
        self.ids = ids
        self.run = _new(name, names, buckets)
        self.files: dict[tuple[str, int], bytearray] = {}

    def spill_and_sort(self, batch: int = 333) -> None:
        for start in range(0, len(self.ids), batch):
            column = pa.array(self.ids[start : start + batch]).cast(pa.binary())
            for bucket, data in self.run.spill_batch([column]):
                self.files.setdefault(("spill", bucket), bytearray()).extend(data)
        _, tails = self.run.finish_spill()
        for bucket, data in tails:
            self.files.setdefault(("spill", bucket), bytearray()).extend(data)
        for bucket in range(self.run.state.buckets):
            self.files[("sorted", bucket)] = self.run.sort(
                bucket, self.files.pop(("spill", bucket))
            )


def _exchange(parties: list[Party], stop_after: int | None = None) -> None:
    """Run the bucket exchange; each party loads its next bucket, messages go to all."""
    buckets = parties[0].run.state.buckets
    first = min(p.run.state.exchanged for p in parties)
    for done, bucket in enumerate(range(first, buckets), start=1):
        for party in parties:
            if party.run.state.exchanged > bucket:  # resumed ahead: redo this bucket
                raise AssertionError("set_start should have rewound it")
            message = party.run.load(bucket, party.files[("sorted", bucket)])
            for other in parties:
                if other is not party:
                    other.run.receive(party.name, bytearray(message))
        for party in parties:
            assert party.run.ready() == bucket
            _, sealed = party.run.intersect(bucket)
            party.files[("result", bucket)] = sealed
        if stop_after is not None and done == stop_after:
            return


def _finish(parties: list[Party]) -> list[np.ndarray]:
    outcomes = {p.run.outcome() for p in parties}
    assert len(outcomes) == 1
    maps = []
    for party in parties:
        party.run.confirmed()
        pieces = [
            np.frombuffer(party.run.release(b, party.files[("result", b)]), dtype=np.int64)
            for b in range(party.run.state.buckets)
        ]
        maps.append(np.concatenate(pieces))
    return maps


def _in_memory(tables: list[list[str]]) -> list[np.ndarray]:
    digest_key, seed, _ = session_keys(SECRET)
    sets = [digest_ids(prepare_ids([pa.array(t)]), digest_key) for t in tables]
    return [
        align(own, [s.digests for j, s in enumerate(sets) if j != i], seed).row_map
        for i, own in enumerate(sets)
    ]


@pytest.mark.parametrize(("count", "buckets"), [(2, 5), (3, 3)])
def test_bucketed_run_equals_in_memory_alignment(count: int, buckets: int) -> None:
    tables = _tables(count)
    names = [f"p{i}" for i in range(count)]
    parties = [Party(n, names, t, buckets) for n, t in zip(names, tables, strict=True)]
    for party in parties:
        party.spill_and_sort()
        party.run.set_start([n for n in names if n != party.name], 0)
    _exchange(parties)
    maps = _finish(parties)
    for got, expected in zip(maps, _in_memory(tables), strict=True):
        assert len(got) == 700
        assert np.array_equal(got, expected)
    counts = parties[0].run.counts()
    assert counts["own_size"] == 1200 and counts["intersection_size"] == 700
    assert counts["peer_sizes"] == {n: 1200 for n in names[1:]}


def test_resumed_run_equals_the_uninterrupted_one() -> None:
    tables = _tables(2, seed=5)
    names = ["a", "b"]
    parties = [Party(n, names, t, 6) for n, t in zip(names, tables, strict=True)]
    for party in parties:
        party.spill_and_sort()
        party.run.set_start([n for n in names if n != party.name], 0)
    _exchange(parties, stop_after=2)
    # Party a finished a third bucket before the crash, b did not.
    a, b = parties
    blobs = {"b": b.run.checkpoint()}
    message = a.run.load(2, a.files[("sorted", 2)])
    b_message = b.run.load(2, b.files[("sorted", 2)])
    a.run.receive("b", bytearray(b_message))
    a.files[("result", 2)] = a.run.intersect(2)[1]
    del message
    blobs["a"] = a.run.checkpoint()
    assert a.run.state.exchanged == 3 and b.run.state.exchanged == 2
    # Both restart from their sealed state; the exchange restarts at the lowest progress.
    for party in parties:
        party.run = BucketedRun.resume(
            blobs[party.name],
            party=party.name,
            session="s",
            sealing_key=SEALING_KEY,
            random_bytes=os.urandom,
        )
    start = min(p.run.state.exchanged for p in parties)
    for party in parties:
        party.run.set_start([n for n in names if n != party.name], start)
    _exchange(parties)
    for got, expected in zip(_finish(parties), _in_memory(tables), strict=True):
        assert np.array_equal(got, expected)


def test_resume_refuses_another_partys_state_and_a_spill_restarts() -> None:
    party = Party("a", ["a", "b"], _tables(2)[0], 4)
    blob = party.run.checkpoint()
    with pytest.raises(ConfigurationError, match="belongs to party 'a'"):
        BucketedRun.resume(
            blob, party="b", session="s", sealing_key=SEALING_KEY, random_bytes=os.urandom
        )
    with pytest.raises(ChannelError):
        BucketedRun.resume(
            blob, party="a", session="s", sealing_key=b"x" * 32, random_bytes=os.urandom
        )
    resumed = BucketedRun.resume(
        blob, party="a", session="s", sealing_key=SEALING_KEY, random_bytes=os.urandom
    )
    assert resumed.state.generation == 1  # spill files of the cut attempt cannot be reused


def test_tampered_or_swapped_bucket_files_fail_closed() -> None:
    party = Party("a", ["a", "b"], _tables(2)[0], 4)
    party.spill_and_sort()
    party.run.set_start(["b"], 0)
    tampered = bytearray(party.files[("sorted", 0)])
    tampered[len(tampered) // 2] ^= 0x40
    with pytest.raises(ChannelError, match="bucket 0 failed verification"):
        party.run.load(0, tampered)
    with pytest.raises(ChannelError):
        party.run.load(0, party.files[("sorted", 1)])  # bucket 1's file in bucket 0's place
    with pytest.raises(ChannelError):
        party.run.load(0, party.files[("sorted", 0)][:-5])


def test_peer_messages_out_of_order_or_outside_their_bucket_are_refused() -> None:
    party = Party("a", ["a", "b"], _tables(2)[0], 4)
    party.spill_and_sort()
    party.run.set_start(["b"], 0)
    with pytest.raises(ProtocolError, match="expected bucket 0"):
        party.run.receive("b", bytearray(BUCKET_HEADER.pack(1, 0)))
    with pytest.raises(ProtocolError, match="wrong length"):
        party.run.receive("b", bytearray(BUCKET_HEADER.pack(0, 2)) + bytes(16))
    outside = np.array([[0, 0], [2**64 - 1, 0]], dtype=np.uint64)  # buckets 0 and 3
    with pytest.raises(ProtocolError, match="outside bucket"):
        party.run.receive("b", bytearray(BUCKET_HEADER.pack(0, 2)) + outside.tobytes())
    with pytest.raises(ProtocolError, match="before the exchange"):
        party.run.receive("c", bytearray(BUCKET_HEADER.pack(0, 0)))


def test_duplicates_error_after_every_bucket_was_sorted() -> None:
    ids = [f"d{i}" for i in range(200)] + ["d7", "d9", "d7"]
    party = Party("a", ["a", "b"], ids, 3)
    with pytest.raises(InputDataError, match="2 duplicated ID"):
        party.spill_and_sort(batch=50)
    assert party.run.state.sorted_buckets == 3


def test_agreed_bucket_count_is_the_largest_need() -> None:
    gib = 1 << 30
    small = Proposal(rows=10**6, memory_limit=2 * gib, reserved=gib // 2)
    big = Proposal(rows=10**8, memory_limit=2 * gib, reserved=gib // 2)
    hand = Proposal(rows=10, buckets=77)
    assert agree_run_buckets([small, small]) == 1
    assert agree_run_buckets([small, big]) == agree_run_buckets([big, small]) > 1
    assert agree_run_buckets([small, hand]) == 77
    with pytest.raises(ProtocolError):
        Proposal.from_dict({"rows": 5}, "peer")
