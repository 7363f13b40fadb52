"""The enclave's session logic, in process: sessions wired to each other without sockets.

Real crypto and the real alignment core; the hosts' relaying is a loop over SEAL/UNSEAL.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accord.alignment import DuplicatePolicy, digest_ids, prepare_ids
from accord.errors import InputDataError, ProtocolError
from accord.tee.core.attestation import (
    AttestationPolicy,
    key_fingerprint,
    policy_toml,
    public_key_bytes,
)
from accord.tee.core.backend import SimulatedBackend
from accord.tee.core.loader import IdLoader as _Loader
from accord.tee.core.loader import SessionConfig as _Config
from accord.tee.core.session import EnclaveSession
from accord.tee.core.wire import Call, encode_columns

PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
MEASUREMENT = hashlib.sha256(b"enclave").digest()
POLICY = policy_toml(
    AttestationPolicy(
        allowed_measurements=frozenset({MEASUREMENT.hex()}),
        trusted_platform_keys=frozenset({key_fingerprint(public_key_bytes(PLATFORM))}),
        allow_simulated=True,
    )
)
KEY = bytes(range(32))


def config(duplicates: str = "error", skip_invalid: bool = False) -> _Config:
    return _Config(
        party_name="a",
        session="s",
        parties=2,
        key_columns=("id",),
        duplicates=DuplicatePolicy(duplicates),
        skip_invalid=skip_invalid,
        pad_to=None,
    )


def batches(values: Sequence[bytes | None], cuts: Sequence[int]) -> list[list[pa.Array]]:
    edges = [0, *sorted(set(cuts)), len(values)]
    return [[pa.array(values[a:b], type=pa.binary())] for a, b in itertools.pairwise(edges)]


def ids_with_duplicates(seed: int, n: int = 400) -> list[bytes | None]:
    rng = random.Random(seed)
    pool = [f"id-{rng.getrandbits(40):x}".encode() for _ in range(n // 2)]
    return [rng.choice(pool) for _ in range(n)]


@pytest.mark.parametrize("policy", ["first", "drop-all"])
@pytest.mark.parametrize(
    ("seed", "size", "rows_hint"), [(1, 400, None), (2, 6000, 10), (3, 400, 400)]
)
def test_streamed_digests_equal_the_whole_input_digests(
    policy: str, seed: int, size: int, rows_hint: int | None
) -> None:
    # No estimate; one too small (capacity ~4100 < 6000: later batches are joined at the
    # end); an exact one.
    values = ids_with_duplicates(seed, size)
    cuts = random.Random(seed).sample(range(1, len(values)), 5)
    loader = _Loader(config(policy), rows_hint)
    parts = batches(values, cuts)
    for index, columns in enumerate(parts):
        if index == 2:
            loader.set_key(KEY)  # the key arrives while batches stream in
        loader.add(columns)
    report = loader.finish()
    streamed = loader.digest_set()
    whole = digest_ids(prepare_ids([pa.array(values, type=pa.binary())]), KEY, policy)
    assert np.array_equal(streamed.digests, whole.digests)
    assert np.array_equal(streamed.row_index, whole.row_index)
    assert streamed.duplicates == whole.duplicates
    assert report.rows == len(values)


def test_streamed_duplicate_error_equals_the_whole_input_error() -> None:
    values = ids_with_duplicates(4)
    loader = _Loader(config("error"))
    loader.set_key(KEY)
    for columns in batches(values, [100, 250]):
        loader.add(columns)
    loader.finish()
    with pytest.raises(InputDataError) as streamed:
        loader.digest_set()
    with pytest.raises(InputDataError) as whole:
        digest_ids(prepare_ids([pa.array(values, type=pa.binary())]), KEY, "error")
    assert str(streamed.value) == str(whole.value)


def test_duplicates_are_refused_before_the_session_key_with_the_same_error() -> None:
    values = ids_with_duplicates(4)
    loader = _Loader(config("error"), random_bytes=os.urandom)  # no key yet: no session
    for columns in batches(values, [100, 250]):
        loader.add(columns)
    with pytest.raises(InputDataError) as early:
        loader.finish()
    with pytest.raises(InputDataError) as whole:
        digest_ids(prepare_ids([pa.array(values, type=pa.binary())]), KEY, "error")
    assert str(early.value) == str(whole.value)
    assert "--duplicates (first, drop-all)" in str(early.value)
    distinct = _Loader(config("error"), random_bytes=os.urandom)
    for columns in batches(sorted({v for v in values if v is not None}), [50]):
        distinct.add(columns)
    assert distinct.finish().kept_rows == len(set(values))  # no duplicate: accepted
    distinct.set_key(KEY)
    assert len(distinct.digest_set()) == len(set(values))


def test_invalid_ids_in_later_batches_are_reported_by_absolute_row() -> None:
    values: list[bytes | None] = [b"x%d" % i for i in range(300)]
    values[5], values[150], values[299] = b"  ", b"\xff\xfe", None
    loader = _Loader(config())
    for columns in batches(values, [100, 200]):
        loader.add(columns)
    with pytest.raises(InputDataError) as streamed:
        loader.finish()
    with pytest.raises(InputDataError) as whole:
        prepare_ids([pa.array(values, type=pa.binary())], names=["id"])
    assert str(streamed.value) == str(whole.value)
    assert "150" in str(streamed.value) and "299" in str(streamed.value)


def test_skipped_invalid_ids_are_counted() -> None:
    values: list[bytes | None] = [b"x%d" % i for i in range(10)]
    values[3] = b""
    loader = _Loader(config(skip_invalid=True))
    loader.set_key(KEY)
    for columns in batches(values, [4]):
        loader.add(columns)
    report = loader.finish()
    assert (report.rows, report.kept_rows, report.empty_rows) == (10, 9, 1)
    assert report.empty_examples == (3,)
    assert 3 not in loader.digest_set().row_index.tolist()


# ------------------------------------------------------------------ whole sessions in process


def session(name: str, columns: int = 1, **init: Any) -> EnclaveSession:
    backend = SimulatedBackend(PLATFORM, measurement=MEASUREMENT, security_version=1, debug=False)
    enclave = EnclaveSession(backend, os.urandom)
    meta = {
        "party_name": name,
        "session": "s",
        "parties": 2,
        "policy": POLICY,
        "key_columns": [f"k{i}" for i in range(columns)],
        **init,
    }
    enclave.call(Call.INIT, meta, memoryview(b""))
    return enclave


def call(enclave: EnclaveSession, code: Call, meta: dict[str, Any], body: bytes = b"") -> Any:
    return enclave.call(code, meta, memoryview(body))


def connect(a: EnclaveSession, b: EnclaveSession) -> None:
    _, hello = call(a, Call.HANDSHAKE, {"link": 0, "step": "hello"})
    _, response = call(b, Call.HANDSHAKE, {"link": 0, "step": "respond"}, bytes(hello))
    _, finish = call(a, Call.HANDSHAKE, {"link": 0, "step": "finish"}, bytes(response))
    call(b, Call.HANDSHAKE, {"link": 0, "step": "complete"}, bytes(finish))


def pump(a: EnclaveSession, b: EnclaveSession) -> None:
    """Relay every pending record both ways until both sides are idle."""
    moved = True
    while moved:
        moved = False
        for source, sink in ((a, b), (b, a)):
            while 0 in source.status()["outbound"]:
                _, batch = call(source, Call.SEAL, {"link": 0})
                call(sink, Call.UNSEAL, {"link": 0}, bytes(batch))
                moved = True


def load(enclave: EnclaveSession, columns: list[list[bytes]]) -> None:
    meta, buffers = encode_columns([pa.array(c, type=pa.binary()) for c in columns])
    call(enclave, Call.LOAD_IDS, meta, b"".join(bytes(buffer) for buffer in buffers))
    call(enclave, Call.LOAD_DONE, {})


def ready_pair(ids_a: range, ids_b: range) -> tuple[EnclaveSession, EnclaveSession]:
    a, b = session("a"), session("b")
    connect(a, b)
    pump(a, b)
    load(a, [[b"%d" % i for i in ids_a]])
    load(b, [[b"%d" % i for i in ids_b][::-1]])
    pump(a, b)
    return a, b


def test_two_sessions_agree_position_by_position() -> None:
    a, b = ready_pair(range(0, 60), range(40, 100))
    counts_a, _ = call(a, Call.INTERSECT, {})
    counts_b, _ = call(b, Call.INTERSECT, {})
    assert counts_a["counts"]["intersection_size"] == counts_b["counts"]["intersection_size"] == 20
    assert counts_a["counts"]["peer_sizes"] == {"b": 60}
    pump(a, b)
    _, rows_a = call(a, Call.RESULT, {})
    _, rows_b = call(b, Call.RESULT, {})
    ids_a = [int(r) for r in np.frombuffer(rows_a, dtype=np.int64)]  # a: row r holds ID r
    ids_b = [99 - int(r) for r in np.frombuffer(rows_b, dtype=np.int64)]  # b's rows reversed
    assert ids_a == ids_b and sorted(ids_a) == list(range(40, 60))


def test_nothing_is_released_before_every_peer_confirmed() -> None:
    a, b = ready_pair(range(0, 60), range(40, 100))
    call(a, Call.INTERSECT, {})
    with pytest.raises(ProtocolError, match="RESULT before every peer confirmed"):
        call(a, Call.RESULT, {})
    # The failed call poisoned the session: fail closed, nothing is released afterwards.
    call(b, Call.INTERSECT, {})
    with pytest.raises(ProtocolError, match="already failed"):
        pump(a, b)
    with pytest.raises(ProtocolError, match="already failed"):
        call(a, Call.RESULT, {})


def test_parties_with_different_key_column_counts_are_refused() -> None:
    a, b = session("a", columns=1), session("b", columns=2)
    connect(a, b)
    with pytest.raises(ProtocolError, match="sees a different session"):
        pump(a, b)


def test_a_different_result_is_never_released() -> None:
    a, b = ready_pair(range(50), range(25, 75))
    call(a, Call.INTERSECT, {})
    call(b, Call.INTERSECT, {})
    outcome = b._outcome
    assert outcome is not None
    # b's enclave computed something else (a bug, a fault): a must refuse to release.
    b._outcome = (outcome[0], bytes(32))
    with pytest.raises(ProtocolError, match="peer 'a' computed a different result"):
        pump(a, b)  # b checks a's confirmation against its own result and refuses
    with pytest.raises(ProtocolError, match="already failed"):
        call(b, Call.RESULT, {})
    with pytest.raises(ProtocolError, match="RESULT before every peer confirmed"):
        call(a, Call.RESULT, {})  # b never confirmed, so a releases nothing either
