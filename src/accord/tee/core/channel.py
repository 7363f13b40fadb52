"""The attested secure channel between two enclaves (pure: bytes in, bytes out).

**Handshake** (three messages; the party that dialled the TCP connection is the
*initiator*)::

    initiator → responder   hello    = fields(context, version, name_i, session, parties, nonce_i)
    responder → initiator   response = fields(context, name_r, nonce_r, pk_r, evidence_r)
    initiator → responder   finish   = fields(context, pk_i, evidence_i)

``session id = SHA-256(context ‖ fields(hello, name_r, nonce_r))``. Each side's evidence
carries ``report_data = SHA-256(own X25519 public key ‖ the other side's nonce ‖ session
id)``, so each verifier checks freshness with the nonce *it* chose and binds the key it
will use. Nonces and X25519 keys are ephemeral, drawn from the ``random_bytes`` passed in.

**Keys**: ``HKDF-SHA256(ikm = X25519 shared secret, salt = SHA-256 of the whole transcript
(hello, response, finish), info = "accord-align/v1 channel keys")`` gives 64 bytes: the
initiator→responder AES-256-GCM key, then the responder→initiator key. A host that alters
any handshake byte makes the two enclaves derive different keys, and the first record fails.

**Records** (at most :data:`RECORD_SIZE` plaintext bytes each)::

    header = version (u8) | type (u8) | 0 (u16) | sequence number (u64) | ciphertext length (u32)
    record = header | AES-256-GCM(key, nonce = 0^4 ‖ sequence number, plaintext, AD = header)

Sequence numbers start at 0 in each direction and the receiver accepts only the next one,
so replayed, reordered or dropped records fail, as does any altered byte (the header is
associated data). A message spans one or more ``DATA`` records; its first record starts
with ``kind (u8) | body length (u64)``. The stream closes with an authenticated ``END``
record that counts the messages and records sent: a stream that stops without it was
truncated. Every such failure raises :class:`~accord.errors.ChannelError`.
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from accord.errors import AttestationError, ChannelError, ConfigurationError, ProtocolError
from accord.tee.core.attestation import (
    DIGEST_SIZE,
    AttestationPolicy,
    EvidenceClaims,
    channel_report_data,
    check_party_binding,
    validate_party_name,
    verify_evidence,
)
from accord.tee.core.wire import PROTOCOL_VERSION, pack_fields, unpack_fields

__all__ = [
    "MESSAGE_HEADER",
    "PROTOCOL_VERSION",
    "RECORD_HEADER",
    "RECORD_SIZE",
    "ChannelKeys",
    "ChannelReader",
    "ChannelWriter",
    "HandshakeConfig",
    "InitiatorHandshake",
    "RecordType",
    "ResponderHandshake",
    "derive_channel_keys",
    "session_id",
    "transcript_hash",
    "validate_party_name",
]

#: Largest plaintext of one record (1 MiB): big enough that AEAD calls are never per ID.
RECORD_SIZE = 1 << 20
#: ``version, type, reserved, sequence number, ciphertext length``.
RECORD_HEADER = struct.Struct("!BBHQI")
#: ``kind, body length`` at the start of a message's first record.
MESSAGE_HEADER = struct.Struct("!BQ")

_TAG = 16
_RECORD_VERSION = 1
_END_BODY = struct.Struct("!QQ")
_HELLO = b"accord-align-hello/v1"
_RESPONSE = b"accord-align-response/v1"
_FINISH = b"accord-align-finish/v1"
_SESSION = b"accord-align-session/v1"
_TRANSCRIPT = b"accord-align-transcript/v1"
_KEY_INFO = b"accord-align/v1 channel keys"


class RecordType(IntEnum):
    """Types of channel record."""

    DATA = 1
    END = 2


@dataclass(frozen=True)
class HandshakeConfig:
    """What one enclave brings to every handshake of a session."""

    party_name: str
    session: str
    parties: int
    policy: AttestationPolicy
    #: Makes this enclave's evidence for a given ``report_data`` (the backend's quote).
    make_evidence: Callable[[bytes], bytes]
    #: Source of nonces and ephemeral keys (``os.urandom`` in the enclave).
    random_bytes: Callable[[int], bytes]

    def __post_init__(self) -> None:
        validate_party_name(self.party_name, "party_name")
        validate_party_name(self.session, "session")
        if isinstance(self.parties, bool) or not isinstance(self.parties, int):
            raise ConfigurationError(f"parties: expected an integer, got {self.parties!r}")
        if not 2 <= self.parties <= 64:
            raise ConfigurationError(f"parties: expected 2 to 64, got {self.parties}")


@dataclass(frozen=True)
class ChannelKeys:
    """The outcome of a completed handshake, as seen by one side."""

    peer_name: str
    send_key: bytes
    receive_key: bytes
    transcript_hash: bytes
    peer_claims: EvidenceClaims
    #: The policy binds the peer's name to the platform key that signed its evidence
    #: (``False``: the policy binds no names, so any trusted enclave could use this one).
    peer_name_bound: bool = False


def session_id(hello: bytes, responder_name: str, responder_nonce: bytes) -> bytes:
    """The session id both sides bind into their quotes."""
    return hashlib.sha256(
        _SESSION + pack_fields([hello, responder_name.encode(), responder_nonce])
    ).digest()


def transcript_hash(hello: bytes, response: bytes, finish: bytes) -> bytes:
    """SHA-256 over the three handshake messages exactly as sent."""
    return hashlib.sha256(_TRANSCRIPT + pack_fields([hello, response, finish])).digest()


def derive_channel_keys(shared_secret: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """HKDF-SHA256 → (initiator→responder key, responder→initiator key), 32 bytes each."""
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=transcript, info=_KEY_INFO).derive(
        shared_secret
    )
    return okm[:32], okm[32:]


def _x25519(random_bytes: Callable[[int], bytes]) -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.from_private_bytes(random_bytes(32))
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, public


def _shared_secret(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    if len(peer_public) != 32:
        raise ProtocolError(f"peer key share: expected 32 bytes, got {len(peer_public)}")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as error:  # a low-order point gives an all-zero secret
        raise ChannelError("the peer's key share is invalid (low-order point)") from error


def _nonce(random_bytes: Callable[[int], bytes]) -> bytes:
    nonce = random_bytes(DIGEST_SIZE)
    if len(nonce) != DIGEST_SIZE:
        raise ValueError(f"random_bytes returned {len(nonce)} bytes, expected {DIGEST_SIZE}")
    return nonce


def _peer_name(raw: bytes, own: str) -> str:
    try:
        name = validate_party_name(raw.decode("utf-8"), "peer party name")
    except (UnicodeDecodeError, ConfigurationError) as error:
        raise ProtocolError(f"the peer sent an invalid party name {raw!r}") from error
    if name == own:
        raise ProtocolError(
            f"the peer is also named {own!r}: every party needs its own --party-name"
        )
    return name


def _verify(
    peer: str,
    evidence: bytes,
    policy: AttestationPolicy,
    peer_public: bytes,
    own_nonce: bytes,
    sid: bytes,
) -> tuple[EvidenceClaims, bool]:
    """Verify the peer's evidence, bound to its key share, this side's nonce and the session,
    and that its enclave may act as party ``peer``: ``(claims, the name is bound)``. Both
    sides run this before any channel key exists, so a refused peer never gets a record."""
    try:
        claims = verify_evidence(evidence, policy, channel_report_data(peer_public, own_nonce, sid))
        return claims, check_party_binding(policy, peer, claims)
    except AttestationError as error:
        raise AttestationError(
            f"refused the enclave of peer {peer!r}: {error}", detail=error.detail
        ) from error


class InitiatorHandshake:
    """The dialling side: :meth:`hello`, then :meth:`finish` with the peer's response."""

    def __init__(self, config: HandshakeConfig) -> None:
        self._config = config
        self._nonce = _nonce(config.random_bytes)
        self._private, self._public = _x25519(config.random_bytes)
        self._hello: bytes | None = None

    def hello(self) -> bytes:
        """The first message (fresh nonce, no secret)."""
        if self._hello is None:
            config = self._config
            self._hello = pack_fields(
                [
                    _HELLO,
                    struct.pack("!H", PROTOCOL_VERSION),
                    config.party_name.encode(),
                    config.session.encode(),
                    struct.pack("!H", config.parties),
                    self._nonce,
                ]
            )
        return self._hello

    def finish(self, response: bytes) -> tuple[bytes, ChannelKeys]:
        """Verify the responder's evidence; return the finish message and the keys."""
        hello = self.hello()
        context, name_raw, nonce_r, public_r, evidence_r = unpack_fields(
            response, 5, "handshake response"
        )
        if context != _RESPONSE or len(nonce_r) != DIGEST_SIZE or len(public_r) != 32:
            raise ProtocolError("malformed handshake response")
        peer = _peer_name(name_raw, self._config.party_name)
        sid = session_id(hello, peer, nonce_r)
        claims, bound = _verify(peer, evidence_r, self._config.policy, public_r, self._nonce, sid)
        evidence = self._config.make_evidence(channel_report_data(self._public, nonce_r, sid))
        finish = pack_fields([_FINISH, self._public, evidence])
        send, receive = derive_channel_keys(
            _shared_secret(self._private, public_r), transcript_hash(hello, response, finish)
        )
        return finish, ChannelKeys(
            peer_name=peer,
            send_key=send,
            receive_key=receive,
            transcript_hash=transcript_hash(hello, response, finish),
            peer_claims=claims,
            peer_name_bound=bound,
        )


class ResponderHandshake:
    """The accepting side: :meth:`respond` to the hello, then :meth:`complete`."""

    def __init__(self, config: HandshakeConfig) -> None:
        self._config = config
        self._nonce = _nonce(config.random_bytes)
        self._private, self._public = _x25519(config.random_bytes)
        self._state: tuple[bytes, bytes, str, bytes] | None = None  # hello, response, peer, sid

    def respond(self, hello: bytes) -> bytes:
        """Check the hello against this enclave's session; return the response (with evidence)."""
        config = self._config
        context, version, name_raw, session, parties, nonce_i = unpack_fields(
            hello, 6, "handshake hello"
        )
        if context != _HELLO or len(version) != 2 or len(parties) != 2:
            raise ProtocolError("malformed handshake hello")
        (peer_version,) = struct.unpack("!H", version)
        if peer_version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"the peer's enclave speaks protocol version {peer_version}, "
                f"this one speaks {PROTOCOL_VERSION}"
            )
        if len(nonce_i) != DIGEST_SIZE:
            raise ProtocolError("malformed handshake hello: nonce size")
        peer = _peer_name(name_raw, config.party_name)
        if session != config.session.encode():
            raise ProtocolError(
                f"peer {peer!r} is in session {session.decode('utf-8', 'replace')!r}, "
                f"this party in {config.session!r}"
            )
        (peer_parties,) = struct.unpack("!H", parties)
        if peer_parties != config.parties:
            raise ProtocolError(
                f"peer {peer!r} expects {peer_parties} parties, this party {config.parties}"
            )
        sid = session_id(hello, config.party_name, self._nonce)
        evidence = config.make_evidence(channel_report_data(self._public, nonce_i, sid))
        response = pack_fields(
            [_RESPONSE, config.party_name.encode(), self._nonce, self._public, evidence]
        )
        self._state = (hello, response, peer, sid)
        return response

    def complete(self, finish: bytes) -> ChannelKeys:
        """Verify the initiator's evidence and derive the channel keys."""
        if self._state is None:
            raise ProtocolError("handshake finish before hello")
        hello, response, peer, sid = self._state
        context, public_i, evidence_i = unpack_fields(finish, 3, "handshake finish")
        if context != _FINISH or len(public_i) != 32:
            raise ProtocolError("malformed handshake finish")
        claims, bound = _verify(peer, evidence_i, self._config.policy, public_i, self._nonce, sid)
        receive, send = derive_channel_keys(
            _shared_secret(self._private, public_i), transcript_hash(hello, response, finish)
        )
        return ChannelKeys(
            peer_name=peer,
            send_key=send,
            receive_key=receive,
            transcript_hash=transcript_hash(hello, response, finish),
            peer_claims=claims,
            peer_name_bound=bound,
        )


def _record_nonce(sequence: int) -> bytes:
    return b"\x00\x00\x00\x00" + sequence.to_bytes(8, "big")


class ChannelWriter:
    """Seals outgoing messages into records; hands them out in batches for the host to relay."""

    def __init__(self, key: bytes, record_size: int = RECORD_SIZE) -> None:
        if len(key) != 32:
            raise ValueError("channel key must be 32 bytes")
        if record_size <= MESSAGE_HEADER.size:
            raise ValueError(f"record_size must exceed {MESSAGE_HEADER.size}")
        self._aead = AESGCM(key)
        self._record_size = record_size
        self._sequence = 0
        self._messages = 0
        # Pending messages, each a deque of the views still to be sealed (header first).
        self._queue: deque[deque[memoryview]] = deque()
        self._end_queued = False
        self._end_sent = False

    @property
    def pending(self) -> bool:
        """True while queued messages or the end record wait to be sealed."""
        return bool(self._queue) or (self._end_queued and not self._end_sent)

    @property
    def closed(self) -> bool:
        """True once the end-of-stream record has been sealed."""
        return self._end_sent

    def send(self, kind: int, *parts: bytes | bytearray | memoryview) -> None:
        """Queue one message (``kind`` 0-255) whose body is ``parts`` back to back.

        The parts are not copied; they must not change until sealed.
        """
        if self._end_queued:
            raise ProtocolError("message queued after the end of the stream")
        views = [memoryview(part).cast("B") for part in parts]
        total = sum(view.nbytes for view in views)
        header = memoryview(MESSAGE_HEADER.pack(kind, total))
        self._queue.append(deque([header, *(view for view in views if view.nbytes)]))
        self._messages += 1

    def end(self) -> None:
        """Queue the authenticated end-of-stream record (after every queued message)."""
        self._end_queued = True

    def _next_plaintext(self) -> memoryview | bytes:
        """Up to one record of the first queued message (a view when no join is needed)."""
        pieces = self._queue[0]
        first = pieces[0]
        if first.nbytes >= self._record_size or len(pieces) == 1:
            take = min(first.nbytes, self._record_size)
            chunk = first[:take]
            if take == first.nbytes:
                pieces.popleft()
            else:
                pieces[0] = first[take:]
            return chunk
        joined = bytearray()
        while pieces and len(joined) < self._record_size:
            piece = pieces[0]
            take = min(piece.nbytes, self._record_size - len(joined))
            joined += piece[:take]
            if take == piece.nbytes:
                pieces.popleft()
            else:
                pieces[0] = piece[take:]
        return bytes(joined)

    def next_batch(self, max_bytes: int = 16 << 20) -> bytearray:
        """Seal pending data into records totalling about ``max_bytes``; empty when idle."""
        records: list[tuple[RecordType, bytes | memoryview]] = []
        total = 0
        while self._queue and total < max_bytes:
            plaintext = self._next_plaintext()
            records.append((RecordType.DATA, plaintext))
            total += RECORD_HEADER.size + len(plaintext) + _TAG
            if not self._queue[0]:
                self._queue.popleft()
        if not self._queue and self._end_queued and not self._end_sent and total < max_bytes:
            records.append(
                (RecordType.END, _END_BODY.pack(self._messages, self._sequence + len(records)))
            )
            total += RECORD_HEADER.size + _END_BODY.size + _TAG
            self._end_sent = True
        out = bytearray(total)
        position = 0
        with memoryview(out) as view:
            for record_type, plaintext in records:
                sequence = self._sequence
                if sequence >= 2**48:
                    raise ChannelError("too many records on one channel")
                size = len(plaintext) + _TAG
                header = RECORD_HEADER.pack(_RECORD_VERSION, record_type, 0, sequence, size)
                view[position : position + RECORD_HEADER.size] = header
                position += RECORD_HEADER.size
                self._aead.encrypt_into(
                    _record_nonce(sequence), plaintext, header, view[position : position + size]
                )
                position += size
                self._sequence += 1
        return out


class ChannelReader:
    """Opens incoming records in order and reassembles messages.

    :meth:`feed` takes bytes in any split (the host may cut batches anywhere) and returns
    complete ``(kind, body)`` messages. After the peer's end-of-stream record, :attr:`ended`
    is true; :meth:`check_closed` raises if the stream stopped before it.
    """

    def __init__(
        self, key: bytes, max_message: int = 1 << 36, record_size: int = RECORD_SIZE
    ) -> None:
        if len(key) != 32:
            raise ValueError("channel key must be 32 bytes")
        self._aead = AESGCM(key)
        self._max_message = max_message
        self._max_ciphertext = record_size + _TAG
        self._sequence = 0
        self._messages = 0
        self._pending = bytearray()
        self._message: tuple[int, bytearray, int] | None = None  # kind, body, filled
        self._ended = False

    @property
    def ended(self) -> bool:
        """True once the authenticated end-of-stream record arrived."""
        return self._ended

    @property
    def records(self) -> int:
        """Number of records opened so far."""
        return self._sequence

    def check_closed(self) -> None:
        """Call when the underlying stream ends: fail unless it ended with the END record."""
        if not self._ended:
            raise ChannelError(
                f"the stream was truncated: it stopped after record {self._sequence - 1} "
                "without the end-of-stream record"
            )

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytearray]]:
        """Open every complete record in ``pending + data``; return finished messages."""
        messages: list[tuple[int, bytearray]] = []
        view = memoryview(data).cast("B")
        if self._pending:
            self._pending += view
            view = memoryview(bytes(self._pending))
            self._pending.clear()
        offset = 0
        while len(view) - offset >= RECORD_HEADER.size:
            version, record_type, reserved, sequence, length = RECORD_HEADER.unpack_from(
                view, offset
            )
            self._check_header(version, record_type, reserved, sequence, length)
            end = offset + RECORD_HEADER.size + length
            if end > len(view):
                break
            header = view[offset : offset + RECORD_HEADER.size]
            ciphertext = view[offset + RECORD_HEADER.size : end]
            finished = self._open(record_type, sequence, header, ciphertext)
            if finished is not None:
                messages.append(finished)
            offset = end
        if offset < len(view):
            self._pending += view[offset:]
        return messages

    def _check_header(
        self, version: int, record_type: int, reserved: int, sequence: int, length: int
    ) -> None:
        if self._ended:
            raise ChannelError("a record arrived after the end-of-stream record")
        if version != _RECORD_VERSION or reserved != 0:
            raise ChannelError(
                f"record {sequence}: unknown record version {version} or flags {reserved}"
            )
        if sequence != self._sequence:
            raise ChannelError(
                f"record {sequence} arrived where record {self._sequence} was expected "
                "(replayed, reordered or dropped records)"
            )
        if record_type not in (RecordType.DATA, RecordType.END):
            raise ChannelError(f"record {sequence}: unknown record type {record_type}")
        if not _TAG < length <= self._max_ciphertext:
            raise ChannelError(f"record {sequence}: implausible ciphertext length {length}")

    def _decrypt(
        self, sequence: int, header: memoryview, ciphertext: memoryview, out: memoryview
    ) -> None:
        try:
            self._aead.decrypt_into(_record_nonce(sequence), ciphertext, header, out)
        except InvalidTag as error:
            raise ChannelError(
                f"record {sequence} failed authentication (altered, forged or under the wrong key)"
            ) from error

    def _open(
        self, record_type: int, sequence: int, header: memoryview, ciphertext: memoryview
    ) -> tuple[int, bytearray] | None:
        size = len(ciphertext) - _TAG
        if self._message is not None and record_type == RecordType.DATA:
            # Continuation: decrypt straight into the message body, no extra copy.
            kind, body, filled = self._message
            if filled + size > len(body):
                self._decrypt(sequence, header, ciphertext, memoryview(bytearray(size)))
                raise ChannelError(f"record {sequence} overruns its message")
            self._decrypt(sequence, header, ciphertext, memoryview(body)[filled : filled + size])
            self._sequence += 1
            filled += size
        else:
            plaintext = bytearray(size)
            self._decrypt(sequence, header, ciphertext, memoryview(plaintext))
            self._sequence += 1
            if record_type == RecordType.END:
                self._close(sequence, plaintext)
                return None
            if len(plaintext) < MESSAGE_HEADER.size:
                raise ChannelError(f"record {sequence}: message header missing")
            kind, total = MESSAGE_HEADER.unpack_from(plaintext)
            if total > self._max_message:
                raise ChannelError(f"record {sequence}: message of {total} bytes is too large")
            first = memoryview(plaintext)[MESSAGE_HEADER.size :]
            if len(first) > total:
                raise ChannelError(f"record {sequence} overruns its message")
            if len(first) == total:
                body = plaintext[MESSAGE_HEADER.size :]
                filled = total
            else:
                body = bytearray(total)
                body[: len(first)] = first
                filled = len(first)
        if filled == len(body):
            self._message = None
            self._messages += 1
            return kind, body
        self._message = (kind, body, filled)
        return None

    def _close(self, sequence: int, plaintext: bytearray) -> None:
        if self._message is not None:
            raise ChannelError(f"the end-of-stream record {sequence} cuts a message short")
        if len(plaintext) != _END_BODY.size:
            raise ChannelError(f"end-of-stream record {sequence} is malformed")
        messages, records = _END_BODY.unpack(plaintext)
        if messages != self._messages or records != sequence:
            raise ChannelError(
                f"end-of-stream record: peer sent {messages} messages in {records} records, "
                f"{self._messages} messages in {sequence} records arrived"
            )
        self._ended = True
