"""Sealed files: what an enclave spills to disk, readable only by an enclave of the same build.

Pure: bytes in, bytes out. The enclave seals; its host writes the bytes to the run
directory and hands them back later (:mod:`accord.tee.runtime.runstate`). Nothing here touches a
file.

**Sealing key.** A hardware TEE derives a sealing key from its own measurement inside the
CPU (SGX ``EGETKEY`` with the ``MRENCLAVE`` policy; the SEV-SNP ``MSG_KEY_REQ`` derived key;
on TDX a key released by a service against the TD's measurement), so only the same enclave
build on the same platform can unseal, even after a restart — which is what lets a run
resume. The ``simulated`` backend imitates it with :func:`simulated_sealing_key`:
``HKDF-SHA256(ikm = the platform key's private bytes, salt = measurement)``. Whoever can
read the platform key file can therefore unseal; the simulated backend protects nothing
against the machine's owner (see :mod:`accord.tee.core.backend`), but every check below still
runs.

**File layout**::

    header  = "ACCSEAL1" | version u8 | kind u8 | 0 u16 | bucket u32 | generation u32
              | run id (32) | salt (16)
    record  = index u64 | flags u8 | plaintext length u32 | AES-256-GCM ciphertext ‖ tag
    key     = HKDF-SHA256(ikm = sealing key, salt = salt, info = label ‖ header minus salt)
    nonce   = 0^4 ‖ index (u64, big-endian);  associated data = header ‖ record header

Records are numbered from 0; the last one carries the ``FINAL`` flag and, as plaintext, the
number of records before it, their total plaintext length and an optional trailer. The
reader is told which file it expects (:class:`SealedFile`: run, kind, bucket, generation)
and fails closed — :class:`~accord.errors.ChannelError`, one opaque message, the precise
reason in ``detail`` — when any byte was altered (the tag fails), a record is missing,
repeated or out of order (its index is in the nonce and the associated data), the file was
cut short (no ``FINAL`` record) or extended, or it is another file: another bucket, kind,
run or spill generation (its identity is in the key derivation, and checked in the header).
A fresh random salt per file gives every file its own key, so record indices never repeat
a nonce under one key even when a file is written again.

What is *not* detected: the host rolling the whole run directory back to an earlier,
consistent state (no monotonic counter is used). The enclave then redoes work it had done,
on the same inputs with the same session secret, and reaches the same result.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from accord.errors import ChannelError, ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "FILE_HEADER",
    "RECORD_HEADER",
    "SEALING_KEY_BYTES",
    "FileKind",
    "SealedContents",
    "SealedFile",
    "SealedWriter",
    "open_sealed",
    "seal_blob",
    "sealed_size",
    "simulated_sealing_key",
]

#: Bytes of a sealing key.
SEALING_KEY_BYTES = 32
#: ``magic, version, kind, reserved, bucket, generation, run id, salt``.
FILE_HEADER = struct.Struct("!8sBBHII32s16s")
#: ``index, flags, plaintext length``.
RECORD_HEADER = struct.Struct("!QBI")

_MAGIC = b"ACCSEAL1"
_VERSION = 1
_TAG = 16
_SALT = 16
_FINAL = 0x01
_FINAL_BODY = struct.Struct("!QQ")
_KEY_LABEL = b"accord/sealed-file/v1"
_SIMULATED_LABEL = b"accord/sealing-key/simulated/v1"
_MAX_RECORD = (1 << 32) - 1


class FileKind(IntEnum):
    """What a sealed file holds."""

    SPILL = 1  # one bucket's (sort key, row) pairs as they streamed in, unsorted
    SORTED = 2  # one bucket sorted by sort key, duplicates handled
    RESULT = 3  # one bucket's slice of the row map, in the shared order
    STATE = 4  # the enclave's run state (session secret, progress)


@dataclass(frozen=True)
class SealedFile:
    """The identity of a sealed file: which run, what, which bucket, which spill attempt."""

    run_id: bytes
    kind: FileKind
    bucket: int = 0
    generation: int = 0

    def __post_init__(self) -> None:
        if len(self.run_id) != 32:
            raise ConfigurationError(f"run id: expected 32 bytes, got {len(self.run_id)}")
        for name in ("bucket", "generation"):
            value = getattr(self, name)
            if not 0 <= value < 1 << 32:
                raise ConfigurationError(f"sealed file {name}: expected 0..2^32-1, got {value}")

    def describe(self) -> str:
        """``sealed <kind> file of bucket <b>`` for messages."""
        if self.kind is FileKind.STATE:
            return "sealed run state"
        return f"sealed {self.kind.name.lower()} file of bucket {self.bucket}"


def simulated_sealing_key(platform_private_key: bytes, measurement: bytes) -> bytes:
    """The ``simulated`` backend's sealing key: bound to its platform key and measurement."""
    if len(platform_private_key) < 32 or len(measurement) != 32:
        raise ConfigurationError("sealing key: expected a 32-byte key and a 32-byte measurement")
    return HKDF(
        algorithm=hashes.SHA256(), length=SEALING_KEY_BYTES, salt=measurement, info=_SIMULATED_LABEL
    ).derive(platform_private_key)


def _file_key(sealing_key: bytes, header: bytes) -> AESGCM:
    if len(sealing_key) != SEALING_KEY_BYTES:
        raise ConfigurationError(f"sealing key: expected {SEALING_KEY_BYTES} bytes")
    identity, salt = header[:-_SALT], header[-_SALT:]
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_KEY_LABEL + identity).derive(
        sealing_key
    )
    return AESGCM(key)


def _nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")


def sealed_size(payload: int, records: int, trailer: int = 0) -> int:
    """Bytes of a sealed file holding ``payload`` plaintext bytes in ``records`` records."""
    per_record = RECORD_HEADER.size + _TAG
    return FILE_HEADER.size + payload + records * per_record + per_record + 16 + trailer


class SealedWriter:
    """Seals one file record by record: :attr:`header`, then :meth:`record`s, then :meth:`finish`.

    The caller writes the returned bytes to the file in that order (possibly over many
    calls, as a spill file grows batch by batch).
    """

    def __init__(
        self, sealing_key: bytes, identity: SealedFile, random_bytes: Callable[[int], bytes]
    ) -> None:
        salt = random_bytes(_SALT)
        if len(salt) != _SALT:
            raise ConfigurationError("random_bytes returned the wrong number of bytes")
        self.identity = identity
        self.header = FILE_HEADER.pack(
            _MAGIC,
            _VERSION,
            identity.kind,
            0,
            identity.bucket,
            identity.generation,
            identity.run_id,
            salt,
        )
        self._aead = _file_key(sealing_key, self.header)
        self.records = 0
        self.payload = 0
        self.finished = False

    def record(self, *parts: Buffer) -> bytearray:
        """One sealed record whose plaintext is ``parts`` back to back."""
        if self.finished:
            raise ChannelError(f"{self.identity.describe()}: record after the final record")
        views = [memoryview(part).cast("B") for part in parts]
        length = sum(view.nbytes for view in views)
        if length > _MAX_RECORD - _TAG:
            raise ConfigurationError(f"sealed record of {length} bytes is too large")
        plaintext: bytes | bytearray | memoryview
        if len(views) == 1:
            plaintext = views[0]
        else:
            plaintext = bytearray(length)
            at = 0
            for view in views:
                plaintext[at : at + view.nbytes] = view
                at += view.nbytes
        sealed = self._seal(plaintext, length, 0)
        self.payload += length
        return sealed

    def finish(self, trailer: bytes = b"") -> bytearray:
        """The final record (counts and ``trailer``); the file is complete after it."""
        body = _FINAL_BODY.pack(self.records, self.payload) + trailer
        sealed = self._seal(body, len(body), _FINAL)
        self.finished = True
        return sealed

    def _seal(
        self, plaintext: bytes | bytearray | memoryview, length: int, flags: int
    ) -> bytearray:
        head = RECORD_HEADER.pack(self.records, flags, length)
        out = bytearray(len(head) + length + _TAG)
        out[: len(head)] = head
        self._aead.encrypt_into(
            _nonce(self.records),
            plaintext,
            self.header + head,
            memoryview(out)[len(head) :],
        )
        self.records += 1
        return out


def seal_blob(
    sealing_key: bytes,
    identity: SealedFile,
    random_bytes: Callable[[int], bytes],
    payload: Buffer,
) -> bytes:
    """A whole sealed file of one record (e.g. the run state)."""
    writer = SealedWriter(sealing_key, identity, random_bytes)
    return bytes(writer.header + writer.record(payload) + writer.finish())


@dataclass(frozen=True, eq=False)
class SealedContents:
    """The verified plaintext of a sealed file.

    ``payload`` holds every record's plaintext back to back; ``records`` are views of it,
    one per record, in order; ``trailer`` is what :meth:`SealedWriter.finish` was given.
    """

    payload: memoryview
    records: list[memoryview]
    trailer: bytes


def _fail(identity: SealedFile, reason: str) -> ChannelError:
    return ChannelError(
        f"{identity.describe()} failed verification (altered, truncated, reordered or "
        "swapped); refusing to use it",
        detail=reason,
    )


def open_sealed(
    sealing_key: bytes,
    identity: SealedFile,
    data: bytes | bytearray | memoryview,
    *,
    out: bytearray | memoryview | None = None,
) -> SealedContents:
    """Verify and decrypt a whole sealed file that should be ``identity``.

    The plaintext goes into ``out`` when given (it must be exactly the payload's size,
    e.g. a numpy array's memory), else into a new buffer.
    """
    view = memoryview(data).cast("B")
    header = _checked_header(identity, view)
    aead = _file_key(sealing_key, header)
    spans, payload_size, final_at = _record_spans(identity, view)
    if out is None:
        target = memoryview(bytearray(payload_size))
    else:
        target = memoryview(out).cast("B")
        if target.nbytes != payload_size:
            raise _fail(identity, f"payload of {payload_size} bytes, expected {target.nbytes}")
    records: list[memoryview] = []
    at = 0
    trailer = b""
    for index, (offset, length, flags) in enumerate(spans):
        head = view[offset : offset + RECORD_HEADER.size]
        body = view[offset + RECORD_HEADER.size : offset + RECORD_HEADER.size + length + _TAG]
        associated = header + bytes(head)
        try:
            if flags & _FINAL:
                final = aead.decrypt(_nonce(index), body, associated)
            else:
                aead.decrypt_into(_nonce(index), body, associated, target[at : at + length])
        except InvalidTag as error:
            raise _fail(identity, f"record {index} failed authentication") from error
        if flags & _FINAL:
            trailer = _final_trailer(identity, final, final_at, payload_size)
        else:
            records.append(target[at : at + length])
            at += length
    return SealedContents(payload=target, records=records, trailer=trailer)


def _checked_header(identity: SealedFile, view: memoryview) -> bytes:
    """The file header, refused unless it is this version's and names ``identity``."""
    if view.nbytes < FILE_HEADER.size:
        raise _fail(identity, f"{view.nbytes} bytes, shorter than the header")
    header = bytes(view[: FILE_HEADER.size])
    magic, version, kind, _, bucket, generation, run_id, _ = FILE_HEADER.unpack(header)
    if magic != _MAGIC or version != _VERSION:
        raise _fail(identity, "not a sealed file of this version")
    found = (kind, bucket, generation, run_id)
    wanted = (int(identity.kind), identity.bucket, identity.generation, identity.run_id)
    if found != wanted:
        raise _fail(
            identity,
            f"header names kind {kind}, bucket {bucket}, generation {generation}; expected "
            f"kind {int(identity.kind)}, bucket {identity.bucket}, generation "
            f"{identity.generation} of this run",
        )
    return header


def _record_spans(
    identity: SealedFile, view: memoryview
) -> tuple[list[tuple[int, int, int]], int, int]:
    """Walk the record headers (no decryption yet): each record's (offset, plaintext
    length, flags), the payload's size and the final record's index. Refused unless the
    indices run in order, the lengths fit and exactly one final record ends the file."""
    spans: list[tuple[int, int, int]] = []
    position = FILE_HEADER.size
    payload_size = 0
    final_at = -1
    while position < view.nbytes:
        if final_at >= 0:
            raise _fail(identity, "data after the final record")
        if position + RECORD_HEADER.size > view.nbytes:
            raise _fail(identity, f"record {len(spans)} header cut short")
        index, flags, length = RECORD_HEADER.unpack_from(view, position)
        end = position + RECORD_HEADER.size + length + _TAG
        if index != len(spans) or flags & ~_FINAL or end > view.nbytes:
            raise _fail(identity, f"record {len(spans)}: bad index {index}, flags or length")
        if flags & _FINAL:
            final_at = len(spans)
        else:
            payload_size += length
        spans.append((position, length, flags))
        position = end
    if final_at < 0:
        raise _fail(identity, "no final record (the file was cut short)")
    return spans, payload_size, final_at


def _final_trailer(identity: SealedFile, final: bytes, final_at: int, payload_size: int) -> bytes:
    """The trailer of the decrypted final record, refused unless it counts exactly the
    records and bytes before it."""
    if len(final) < _FINAL_BODY.size:
        raise _fail(identity, "final record too short")
    count, total = _FINAL_BODY.unpack_from(final)
    if count != final_at or total != payload_size:
        raise _fail(identity, f"final record counts {count} records, {total} bytes")
    return bytes(final[_FINAL_BODY.size :])
