"""Binary encodings shared by the enclave, its host and the peers (pure: bytes in, bytes out).

Three layers use these helpers:

* **Fields** — a canonical, unambiguous encoding of a list of byte strings (each prefixed
  with its 32-bit big-endian length). Handshake messages and quotes are built from fields,
  so the transcript hash covers exactly what was sent.
* **Calls** — one frame per host→enclave request and one per enclave→host reply:
  ``code (u8) | meta length (u32) | body length (u64) | meta (UTF-8 JSON) | body (raw bytes)``.
  Small parameters travel in ``meta``; bulk data (key columns, records, the row map) travels
  in ``body`` as raw bytes, never one message per ID.
* **Peer frames** — what hosts send each other over TCP: ``kind (u8) | length (u32) | body``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any

from accord.errors import ProtocolError

__all__ = [
    "CALL_HEADER",
    "MAX_CALL_META",
    "MAX_PEER_FRAME",
    "PEER_HEADER",
    "PROTOCOL_VERSION",
    "SESSION_ALREADY_FAILED",
    "Call",
    "PeerFrame",
    "decode_meta",
    "encode_columns",
    "encode_meta",
    "pack_fields",
    "unpack_fields",
]

#: Version of the alignment protocol spoken between parties (hello, handshake, records).
PROTOCOL_VERSION = 1

_LENGTH = struct.Struct("!I")

#: ``code, meta length, body length`` of a host↔enclave call or reply.
CALL_HEADER = struct.Struct("!BIQ")
#: The JSON metadata of a call is small; a larger one is a protocol error.
MAX_CALL_META = 1 << 20

#: How the enclave refuses any call after one failed (an echo of that first error, which
#: the host reports instead).
SESSION_ALREADY_FAILED = "the enclave session already failed"

#: ``kind, body length`` of a frame between two hosts.
PEER_HEADER = struct.Struct("!BI")
#: Upper bound of one frame between hosts (a batch of sealed records is at most 16 MiB).
MAX_PEER_FRAME = 64 << 20


class Call(IntEnum):
    """The fixed set of calls a host can make into its enclave (:mod:`accord.tee.core.session`)."""

    INIT = 1  # configure the session (name, parties, policy, key columns, duplicates)
    HANDSHAKE = 2  # one step of the attested handshake with one peer link
    LOAD_IDS = 3  # a batch of this party's key columns (raw Arrow buffers)
    LOAD_DONE = 4  # all IDs loaded: normalise, digest, queue the digests for the peers
    SEAL = 5  # the next sealed records for one peer link (empty when none are ready)
    UNSEAL = 6  # sealed records received from one peer link (or its end of stream)
    INTERSECT = 7  # intersect and shuffle; returns the counts (bucketed: one bucket)
    RESULT = 8  # this party's row map (bucketed: of one bucket), once every peer confirmed
    CHECKPOINT = 9  # bucketed: the sealed run state, progress and counts
    SORT_BUCKET = 10  # bucketed: one sealed spill file in, its sealed sorted file out
    LOAD_BUCKET = 11  # bucketed: one sealed sorted file in; its keys go to every peer


class PeerFrame(IntEnum):
    """Kinds of frame two hosts exchange over TCP."""

    HELLO = 1  # cleartext: magic, protocol version, party name, session, party count
    HANDSHAKE = 2  # an enclave handshake message (nonce, key share, quote), relayed as is
    RECORDS = 3  # a batch of sealed channel records, relayed as is
    ABORT = 4  # the sender gives up; body is one opaque category word


def pack_fields(fields: Sequence[bytes]) -> bytes:
    """Concatenate byte strings, each prefixed by its 32-bit length (canonical, unambiguous)."""
    parts: list[bytes] = []
    for field in fields:
        parts.append(_LENGTH.pack(len(field)))
        parts.append(bytes(field))
    return b"".join(parts)


def unpack_fields(data: bytes, count: int, what: str) -> list[bytes]:
    """Split ``data`` made by :func:`pack_fields` into exactly ``count`` fields.

    Raises :class:`ProtocolError` naming ``what`` when the encoding is malformed.
    """
    fields: list[bytes] = []
    offset = 0
    view = memoryview(data)
    for index in range(count):
        if offset + _LENGTH.size > len(view):
            raise ProtocolError(
                f"malformed {what}: expected {count} fields, data ends in field {index}"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise ProtocolError(
                f"malformed {what}: field {index} claims {length} bytes, "
                f"{len(view) - offset} remain"
            )
        fields.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise ProtocolError(f"malformed {what}: {len(view) - offset} trailing bytes")
    return fields


def encode_columns(columns: Sequence[Any]) -> tuple[dict[str, Any], list[Any]]:
    """Describe Arrow arrays (binary, string or integer) by their raw buffers, no copying.

    Returns the JSON description (for a ``LOAD_IDS`` call's metadata) and the buffers to send
    back to back as its body; :func:`accord.tee.core.loader.decode_columns` rebuilds the arrays.
    """
    described: list[dict[str, Any]] = []
    buffers: list[Any] = []
    for column in columns:
        sizes: list[int | None] = []
        for buffer in column.buffers():
            if buffer is None:
                sizes.append(None)
            else:
                sizes.append(buffer.size)
                buffers.append(buffer)
        described.append(
            {
                "type": str(column.type),
                "length": len(column),
                "offset": column.offset,
                "null_count": column.null_count,
                "buffers": sizes,
            }
        )
    return {"columns": described}, buffers


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON of a call's small parameters (sorted keys, so it is deterministic)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def decode_meta(data: bytes, what: str) -> dict[str, Any]:
    """Parse the JSON metadata of a call; anything but a JSON object is a protocol error."""
    if not data:
        return {}
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        # RecursionError: JSON nested deeper than the parser's recursion limit.
        raise ProtocolError(f"malformed {what}: metadata is not JSON ({error})") from error
    if not isinstance(meta, dict):
        raise ProtocolError(f"malformed {what}: metadata is {type(meta).__name__}, not an object")
    return meta
