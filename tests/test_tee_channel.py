"""Secure channel: handshake, key schedule and record format — known answers and attacks."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.errors import AttestationError, ChannelError, ProtocolError
from accord.tee.core.attestation import AttestationPolicy, key_fingerprint, public_key_bytes
from accord.tee.core.backend import SimulatedBackend
from accord.tee.core.channel import (
    RECORD_HEADER,
    ChannelKeys,
    ChannelReader,
    ChannelWriter,
    HandshakeConfig,
    InitiatorHandshake,
    ResponderHandshake,
    derive_channel_keys,
)
from accord.tee.core.wire import pack_fields, unpack_fields

PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
MEASUREMENT = hashlib.sha256(b"enclave").digest()
POLICY = AttestationPolicy(
    allowed_measurements=frozenset({MEASUREMENT.hex()}),
    trusted_platform_keys=frozenset({key_fingerprint(public_key_bytes(PLATFORM))}),
    allow_simulated=True,
)
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


def drbg(seed: bytes) -> Callable[[int], bytes]:
    """Deterministic randomness for known-answer handshakes."""
    counter = itertools.count()

    def random_bytes(n: int) -> bytes:
        return hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)

    return random_bytes


def config(name: str, seed: bytes, **changes: object) -> HandshakeConfig:
    backend = SimulatedBackend(
        PLATFORM,
        measurement=MEASUREMENT,
        security_version=1,
        debug=bool(changes.pop("debug", False)),
    )
    fields: dict[str, object] = {
        "party_name": name,
        "session": "s1",
        "parties": 2,
        "policy": POLICY,
        "make_evidence": backend.make_evidence,
        "random_bytes": drbg(seed),
    }
    fields.update(changes)
    return HandshakeConfig(**fields)  # type: ignore[arg-type]


def handshake(
    initiator: HandshakeConfig, responder: HandshakeConfig
) -> tuple[ChannelKeys, ChannelKeys, tuple[bytes, bytes, bytes]]:
    i, r = InitiatorHandshake(initiator), ResponderHandshake(responder)
    hello = i.hello()
    response = r.respond(hello)
    finish, keys_i = i.finish(response)
    keys_r = r.complete(finish)
    return keys_i, keys_r, (hello, response, finish)


def _second(seed: bytes) -> bytes:
    source = drbg(seed)
    source(32)
    return source(32)


def rfc5869_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """An independent HKDF (RFC 5869) from hmac, as the oracle for the key schedule."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


# ------------------------------------------------------------------ key schedule


def test_key_schedule_matches_rfc5869_and_pinned_vector() -> None:
    shared, transcript = bytes(range(32)), hashlib.sha256(b"transcript").digest()
    send, receive = derive_channel_keys(shared, transcript)
    oracle = rfc5869_hkdf_sha256(shared, transcript, b"accord-align/v1 channel keys", 64)
    assert send + receive == oracle
    assert send.hex() == "63ca66343d7ff6d0a16f58634f2ebcd03b6d872c79b42757cc74ca46a300eabc"


def test_handshake_gives_crosswise_equal_keys_and_pinned_transcript() -> None:
    keys_i, keys_r, (hello, response, finish) = handshake(config("a", b"A"), config("b", b"B"))
    assert keys_i.send_key == keys_r.receive_key and keys_i.receive_key == keys_r.send_key
    assert keys_i.send_key != keys_i.receive_key
    assert keys_i.transcript_hash == keys_r.transcript_hash
    assert (keys_i.peer_name, keys_r.peer_name) == ("b", "a")
    assert keys_i.peer_claims.measurement == MEASUREMENT
    # Every input is deterministic here, so the whole handshake is a known answer.
    assert keys_i.transcript_hash.hex() == (
        "85024128aed132b347857a25bffc4551d56fbd695882d6d0140f1e63cadee4f9"
    )
    assert keys_i.send_key.hex() == (
        "6c97263fdf85ed548d3fa76ac2745c8530521c8a17de9319ba246307d4108264"
    )
    # Recomputed independently: the initiator's X25519 key is its second 32 random bytes.
    private = X25519PrivateKey.from_private_bytes(_second(b"A"))
    peer_public = X25519PublicKey.from_public_bytes(unpack_fields(response, 5, "response")[3])
    shared = private.exchange(peer_public)
    oracle = rfc5869_hkdf_sha256(
        shared, keys_i.transcript_hash, b"accord-align/v1 channel keys", 64
    )
    assert (keys_i.send_key, keys_i.receive_key) == (oracle[:32], oracle[32:])
    # The transcript hash is SHA-256 over the three messages exactly as sent.
    assert (
        keys_i.transcript_hash
        == hashlib.sha256(
            b"accord-align-transcript/v1" + pack_fields([hello, response, finish])
        ).digest()
    )


def test_fresh_randomness_gives_fresh_keys() -> None:
    first, _, _ = handshake(config("a", b"A"), config("b", b"B"))
    second, _, _ = handshake(config("a", b"A2"), config("b", b"B"))
    assert first.send_key != second.send_key


def _tamper(message: bytes, count: int, index: int, value: bytes) -> bytes:
    fields = unpack_fields(message, count, "message")
    fields[index] = value
    return pack_fields(fields)


def test_altered_hello_nonce_is_caught_by_the_quote_binding() -> None:
    i, r = InitiatorHandshake(config("a", b"A")), ResponderHandshake(config("b", b"B"))
    hello = i.hello()
    # A host swaps the initiator's nonce: both sides still verify quotes (each binds the
    # nonce it saw), but the transcripts differ, so the keys do.
    altered = _tamper(hello, 6, 5, b"\x07" * 32)
    response = r.respond(altered)
    with pytest.raises(AttestationError, match="stale or replayed"):
        i.finish(response)


def test_replayed_response_from_an_earlier_session_is_refused() -> None:
    old_i, old_r = InitiatorHandshake(config("a", b"A")), ResponderHandshake(config("b", b"B"))
    old_response = old_r.respond(old_i.hello())
    fresh = InitiatorHandshake(config("a", b"A-new"))
    fresh.hello()
    with pytest.raises(AttestationError, match="stale or replayed"):
        fresh.finish(old_response)


def test_swapped_key_share_is_refused() -> None:
    i, r = InitiatorHandshake(config("a", b"A")), ResponderHandshake(config("b", b"B"))
    response = r.respond(i.hello())
    other = ResponderHandshake(config("b", b"C")).respond(i.hello())
    spliced = _tamper(response, 5, 3, unpack_fields(other, 5, "m")[3])
    with pytest.raises(AttestationError, match="stale or replayed"):
        i.finish(spliced)


def test_replayed_finish_is_refused_by_the_responder() -> None:
    i, r = InitiatorHandshake(config("a", b"A")), ResponderHandshake(config("b", b"B"))
    finish, _ = i.finish(r.respond(i.hello()))
    r2 = ResponderHandshake(config("b", b"B2"))
    r2.respond(InitiatorHandshake(config("a", b"A")).hello())
    with pytest.raises(AttestationError, match="stale or replayed"):
        r2.complete(finish)


def test_debug_peer_is_refused_during_the_handshake() -> None:
    with pytest.raises(AttestationError, match="debug mode"):
        handshake(config("a", b"A"), config("b", b"B", debug=True))


@pytest.mark.parametrize(
    ("responder", "message"),
    [
        ({"session": "s2"}, "in session 's1'"),
        ({"parties": 3}, "expects 2 parties, this party 3"),
        ({"party_name": "a"}, "also named 'a'"),
    ],
)
def test_handshake_refuses_another_session(responder: dict[str, object], message: str) -> None:
    name = str(responder.pop("party_name", "b"))
    with pytest.raises(ProtocolError, match=message):
        handshake(config("a", b"A"), config(name, b"B", **responder))


def test_handshake_refuses_another_protocol_version() -> None:
    i, r = InitiatorHandshake(config("a", b"A")), ResponderHandshake(config("b", b"B"))
    hello = _tamper(i.hello(), 6, 1, struct.pack("!H", 2))
    with pytest.raises(ProtocolError, match="protocol version 2"):
        r.respond(hello)


# ------------------------------------------------------------------ record format


def test_record_format_known_answer_against_independent_aes_gcm() -> None:
    writer = ChannelWriter(KEY_A)
    writer.send(2, b"hello")
    writer.end()
    batch = bytes(writer.next_batch())
    plaintext = struct.pack("!BQ", 2, 5) + b"hello"
    header0 = struct.pack("!BBHQI", 1, 1, 0, 0, len(plaintext) + 16)
    record0 = header0 + AESGCM(KEY_A).encrypt(bytes(4) + (0).to_bytes(8, "big"), plaintext, header0)
    end_body = struct.pack("!QQ", 1, 1)
    header1 = struct.pack("!BBHQI", 1, 2, 0, 1, len(end_body) + 16)
    record1 = header1 + AESGCM(KEY_A).encrypt(bytes(4) + (1).to_bytes(8, "big"), end_body, header1)
    assert batch == record0 + record1
    assert hashlib.sha256(batch).hexdigest() == (
        "814fb4e62b69dd0acff4d67ba78d4e1986ae2ad5c3b75d9e53d83857c446fac5"
    )
    reader = ChannelReader(KEY_A)
    assert reader.feed(batch) == [(2, bytearray(b"hello"))]
    assert reader.ended


def records(batch: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(batch):
        *_, length = RECORD_HEADER.unpack_from(batch, offset)
        end = offset + RECORD_HEADER.size + length
        out.append(batch[offset:end])
        offset = end
    return out


def sealed(messages: list[tuple[int, bytes]], record_size: int = 64) -> list[bytes]:
    writer = ChannelWriter(KEY_A, record_size=record_size)
    for kind, body in messages:
        writer.send(kind, body)
    writer.end()
    return records(bytes(writer.next_batch(1 << 30)))


def open_all(parts: list[bytes], record_size: int = 64) -> list[tuple[int, bytes]]:
    reader = ChannelReader(KEY_A, record_size=record_size)
    got: list[tuple[int, bytes]] = []
    for part in parts:
        got += [(kind, bytes(body)) for kind, body in reader.feed(part)]
    reader.check_closed()
    return got


MESSAGES = [(1, b"x" * 200), (2, b""), (3, bytes(range(256)) * 3)]


def test_messages_spanning_many_records_round_trip() -> None:
    parts = sealed(MESSAGES)
    assert len(parts) > 10
    assert open_all(parts) == MESSAGES


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_any_split_of_the_byte_stream_reassembles(cuts: list[int]) -> None:
    stream = b"".join(sealed(MESSAGES))
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in itertools.pairwise([0, *points, len(stream)])]
    assert open_all(pieces) == MESSAGES


def test_large_message_in_default_1_mib_records() -> None:
    body = bytes(range(256)) * (3 * 4096 + 17)  # about 3 MiB
    writer = ChannelWriter(KEY_A)
    writer.send(7, body[: len(body) // 2], body[len(body) // 2 :])
    writer.end()
    batch = bytes(writer.next_batch(1 << 30))
    assert len(records(batch)) == 5  # 4 data records of <= 1 MiB, then END
    reader = ChannelReader(KEY_A)
    assert reader.feed(batch) == [(7, bytearray(body))]


def test_next_batch_respects_the_batch_size() -> None:
    writer = ChannelWriter(KEY_A, record_size=100)
    writer.send(1, bytes(1000))
    writer.end()
    first = writer.next_batch(250)
    assert 0 < len(first) < 400 and writer.pending
    rest = writer.next_batch(1 << 20)
    assert writer.closed and not writer.pending
    assert open_all(records(bytes(first + rest)), record_size=100) == [(1, bytes(1000))]


def flip(record: bytes, index: int) -> bytes:
    altered = bytearray(record)
    altered[index] ^= 0x01
    return bytes(altered)


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        (lambda r: [r[0], r[1], r[1], *r[2:]], "record 1 arrived where record 2"),  # replay
        (lambda r: [r[0], r[2], r[1], *r[3:]], "record 2 arrived where record 1"),  # reorder
        (lambda r: [r[0], *r[2:]], "record 2 arrived where record 1"),  # drop
        (lambda r: [r[0], flip(r[1], 30), *r[2:]], "record 1 failed authentication"),  # body
        (lambda r: [r[0], flip(r[1], len(r[1]) - 1), *r[2:]], "failed authentication"),  # tag
        (lambda r: [r[0], flip(r[1], 3), *r[2:]], "unknown record version 1 or flags 1"),
        (lambda r: [r[0], flip(r[1], 1), *r[2:]], "unknown record type|failed auth"),  # type
        (lambda r: r[:-1], "truncated"),  # END dropped
        (lambda r: r[:-3], "truncated"),  # tail dropped
        (lambda r: [*r, r[-1]], "after the end-of-stream record"),  # data after END
        (lambda r: [r[-1]], "record 0 arrived where|record .* arrived where"),  # END alone
    ],
    ids=[
        "replay",
        "reorder",
        "drop",
        "flip-body",
        "flip-tag",
        "flip-reserved",
        "flip-type",
        "truncate-end",
        "truncate-tail",
        "extra-after-end",
        "only-end",
    ],
)
def test_attacks_on_records_fail_closed(
    attack: Callable[[list[bytes]], list[bytes]], message: str
) -> None:
    with pytest.raises(ChannelError, match=message):
        open_all(attack(sealed(MESSAGES)))


def test_records_under_another_key_or_direction_fail() -> None:
    parts = sealed(MESSAGES)
    reader = ChannelReader(KEY_B, record_size=64)
    with pytest.raises(ChannelError, match="record 0 failed authentication"):
        reader.feed(parts[0])


def test_end_record_counts_are_checked() -> None:
    # An END sealed with the right key but wrong counts (a buggy or confused peer).
    writer = ChannelWriter(KEY_A, record_size=64)
    writer.send(1, b"abc")
    writer._messages = 2  # the END will claim two messages
    writer.end()
    with pytest.raises(ChannelError, match="peer sent 2 messages"):
        ChannelReader(KEY_A, record_size=64).feed(writer.next_batch())


def test_message_after_end_cannot_be_queued() -> None:
    writer = ChannelWriter(KEY_A)
    writer.end()
    with pytest.raises(ProtocolError, match="after the end"):
        writer.send(1, b"late")
