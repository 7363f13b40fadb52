"""The messages two enclaves exchange inside their channel, and the session's derived keys.

Each message is one channel message of a :class:`MessageKind`: ``ROSTER`` (the parties a
peer sees, its key-column count, its bucket proposal and its 32-byte random share),
``DIGESTS`` (a count, flags and the keyed digests, optionally padded), ``CONFIRM`` (|I| and
the result fingerprint) and ``BUCKET`` (one bucket's sort keys,
:data:`accord.tee.core.bucket_plan.BUCKET_HEADER`). The digest key and the shuffle seed
derive from the session secret with :func:`derive`. Also here: the small codecs of the
host-call parameters shared by the session's calls. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

from accord.alignment import DIGEST_BYTES
from accord.errors import ProtocolError

__all__ = [
    "CONFIRM",
    "DIGESTS_HEADER",
    "DIGEST_KEY_LABEL",
    "HIDDEN_SIZE",
    "ORDER_SEED_LABEL",
    "SHARE_BYTES",
    "MessageKind",
    "bucket_of",
    "decode_confirm",
    "decode_digests",
    "decode_roster",
    "derive",
    "encode_roster",
    "joined",
]

#: Bytes of each enclave's random share of the session secret.
SHARE_BYTES = 32
#: ``DIGESTS``: real count, flags; then the digests (and zero padding).
DIGESTS_HEADER = struct.Struct("!QB")
#: ``DIGESTS`` flag: the sender padded its stream (its set size is hidden).
HIDDEN_SIZE = 0x01
#: ``CONFIRM``: |I| and the result fingerprint.
CONFIRM = struct.Struct("!Q32s")
#: Labels of the keys derived from the session secret (in memory and bucketed alike, so
#: the same secret gives the same digests and the same shared order).
DIGEST_KEY_LABEL = b"accord-align/v1 digest key"
ORDER_SEED_LABEL = b"accord-align/v1 order seed"

_ROSTER_LENGTH = struct.Struct("!I")


class MessageKind(IntEnum):
    """Messages two enclaves exchange inside their channel."""

    ROSTER = 1
    DIGESTS = 2
    CONFIRM = 3
    BUCKET = 4  # bucketed runs: one bucket's sort keys


def derive(session_secret: bytes, label: bytes) -> bytes:
    """The key ``label`` names, derived from the session secret (HMAC-SHA256)."""
    return hmac.new(session_secret, label, hashlib.sha256).digest()


def encode_roster(fields: Mapping[str, Any], share: bytes) -> bytes:
    """A ``ROSTER`` message: length-prefixed sorted JSON, then the random share."""
    text = json.dumps(fields, sort_keys=True).encode()
    return _ROSTER_LENGTH.pack(len(text)) + text + share


def decode_roster(message: bytes | bytearray, peer: str) -> tuple[dict[str, Any], bytes]:
    """The fields and share of ``peer``'s ``ROSTER`` message (a :class:`ProtocolError` for
    any malformed one)."""
    if len(message) < _ROSTER_LENGTH.size:
        raise ProtocolError(f"peer {peer!r} sent a malformed roster (too short)")
    (length,) = _ROSTER_LENGTH.unpack_from(message)
    try:
        roster = json.loads(bytes(message[4 : 4 + length]))
    except (ValueError, RecursionError) as error:  # not UTF-8 or not JSON; nested too deep
        raise ProtocolError(f"peer {peer!r} sent a malformed roster (not JSON)") from error
    share = bytes(message[4 + length :])
    if not isinstance(roster, dict):
        raise ProtocolError(f"peer {peer!r} sent a malformed roster")
    return roster, share


def decode_digests(message: bytes | bytearray, peer: str) -> tuple[memoryview, bool]:
    """The digests of ``peer``'s ``DIGESTS`` message (their bytes) and whether it hid its
    set size (padded with zeros, which must be all that follows)."""
    if len(message) < DIGESTS_HEADER.size:
        raise ProtocolError(f"peer {peer!r} sent a malformed digest message")
    count, flags = DIGESTS_HEADER.unpack_from(message)
    start = DIGESTS_HEADER.size
    end = start + count * DIGEST_BYTES
    if end > len(message) or any(memoryview(message)[end:]):
        raise ProtocolError(f"peer {peer!r} sent a malformed digest message")
    return memoryview(message)[start:end], bool(flags & HIDDEN_SIZE)


def decode_confirm(message: bytes | bytearray, peer: str) -> tuple[int, bytes]:
    """``(|I|, result fingerprint)`` of ``peer``'s ``CONFIRM`` message."""
    if len(message) != CONFIRM.size:
        raise ProtocolError(f"peer {peer!r} sent a malformed confirmation")
    size, fingerprint = CONFIRM.unpack(message)
    return int(size), bytes(fingerprint)


def bucket_of(meta: Mapping[str, Any]) -> int:
    bucket = meta.get("bucket")
    if isinstance(bucket, bool) or not isinstance(bucket, int):
        raise ProtocolError(f"expected an integer bucket, got {bucket!r}")
    return bucket


def joined(pieces: list[tuple[int, bytearray]]) -> tuple[list[list[int]], bytearray]:
    """``[[bucket, length], ...]`` and the pieces back to back (one reply body)."""
    out = bytearray(sum(len(piece) for _, piece in pieces))
    at = 0
    for _, piece in pieces:
        out[at : at + len(piece)] = piece
        at += len(piece)
    return [[bucket, len(piece)] for bucket, piece in pieces], out
