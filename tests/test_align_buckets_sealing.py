"""Sealed spill files: round trip, and every attack on them fails closed."""

from __future__ import annotations

import os

import numpy as np
import pytest

from accord.errors import ChannelError
from accord.tee.core.sealing import (
    FILE_HEADER,
    RECORD_HEADER,
    FileKind,
    SealedFile,
    SealedWriter,
    open_sealed,
    seal_blob,
    sealed_size,
    simulated_sealing_key,
)

KEY = bytes(range(32))
RUN = b"r" * 32


def _file(identity: SealedFile, parts: list[bytes], trailer: bytes = b"") -> bytes:
    writer = SealedWriter(KEY, identity, os.urandom)
    data = bytearray(writer.header)
    for part in parts:
        data += writer.record(part)
    data += writer.finish(trailer)
    return bytes(data)


def _records(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each record in a sealed file."""
    spans = []
    position = FILE_HEADER.size
    while position < len(data):
        _, _, length = RECORD_HEADER.unpack_from(data, position)
        end = position + RECORD_HEADER.size + length + 16
        spans.append((position, end))
        position = end
    return spans


IDENTITY = SealedFile(RUN, FileKind.SPILL, bucket=3, generation=1)
PARTS = [b"alpha" * 10, b"", b"beta" * 100, b"gamma"]


def test_round_trip_with_trailer_and_into_a_numpy_buffer() -> None:
    data = _file(IDENTITY, PARTS, trailer=b"meta")
    assert len(data) == sealed_size(sum(map(len, PARTS)), len(PARTS), trailer=4)
    contents = open_sealed(KEY, IDENTITY, data)
    assert [bytes(r) for r in contents.records] == PARTS
    assert bytes(contents.payload) == b"".join(PARTS)
    assert contents.trailer == b"meta"
    out = np.empty(sum(map(len, PARTS)), dtype=np.uint8)
    open_sealed(KEY, IDENTITY, data, out=out.data)
    assert out.tobytes() == b"".join(PARTS)


def test_multi_part_records_and_blobs() -> None:
    writer = SealedWriter(KEY, IDENTITY, os.urandom)
    keys = np.arange(6, dtype=np.uint64)
    rows = np.arange(3, dtype=np.int64)
    data = writer.header + writer.record(keys, rows) + writer.finish()
    assert bytes(open_sealed(KEY, IDENTITY, data).payload) == keys.tobytes() + rows.tobytes()
    state = SealedFile(RUN, FileKind.STATE)
    blob = seal_blob(KEY, state, os.urandom, b"{}")
    assert bytes(open_sealed(KEY, state, blob).payload) == b"{}"


def test_same_content_seals_differently_each_time() -> None:
    assert _file(IDENTITY, PARTS) != _file(IDENTITY, PARTS)


def _refused(data: bytes, identity: SealedFile = IDENTITY, key: bytes = KEY) -> str:
    with pytest.raises(ChannelError) as caught:
        open_sealed(key, identity, data)
    assert "refusing to use it" in str(caught.value)
    return str(caught.value.detail)


def test_an_altered_byte_anywhere_fails_closed() -> None:
    data = _file(IDENTITY, PARTS, trailer=b"t")
    for position in range(0, len(data), 7):
        altered = bytearray(data)
        altered[position] ^= 0x01
        _refused(bytes(altered))


def test_truncation_fails_closed() -> None:
    data = _file(IDENTITY, PARTS)
    spans = _records(data)
    assert "cut short" in _refused(data[: spans[-1][0]])  # final record dropped
    _refused(data[: spans[-1][1] - 1])  # final record cut
    _refused(data[: spans[1][0] + 3])  # a record header cut
    _refused(data[:10])  # header cut
    # Dropping a middle record renumbers nothing: the next index is wrong.
    dropped = data[: spans[1][0]] + data[spans[1][1] :]
    assert "bad index" in _refused(dropped)


def test_reordered_and_repeated_records_fail_closed() -> None:
    data = _file(IDENTITY, PARTS)
    spans = _records(data)
    (a0, a1), (b0, b1) = spans[0], spans[2]
    swapped = data[:a0] + data[b0:b1] + data[a1:b0] + data[a0:a1] + data[b1:]
    _refused(swapped)
    repeated = data[: spans[-1][0]] + data[spans[0][0] : spans[0][1]] + data[spans[-1][0] :]
    _refused(repeated)
    extended = data + data[spans[0][0] : spans[0][1]]
    assert "after the final" in _refused(extended)


def test_swapped_files_fail_closed() -> None:
    other_bucket = SealedFile(RUN, FileKind.SPILL, bucket=4, generation=1)
    other_kind = SealedFile(RUN, FileKind.SORTED, bucket=3, generation=1)
    older = SealedFile(RUN, FileKind.SPILL, bucket=3, generation=0)
    other_run = SealedFile(b"x" * 32, FileKind.SPILL, bucket=3, generation=1)
    for identity in (other_bucket, other_kind, older, other_run):
        assert "expected kind" in _refused(_file(identity, PARTS))
    # The host rewrites the header of bucket 4's file to claim bucket 3: the key differs.
    forged = bytearray(_file(other_bucket, PARTS))
    forged[: FILE_HEADER.size] = FILE_HEADER.pack(
        b"ACCSEAL1",
        1,
        FileKind.SPILL,
        0,
        3,
        1,
        RUN,
        bytes(forged[FILE_HEADER.size - 16 : FILE_HEADER.size]),
    )
    assert "authentication" in _refused(bytes(forged))


def test_another_sealing_key_cannot_open() -> None:
    data = _file(IDENTITY, PARTS)
    assert "authentication" in _refused(data, key=bytes(32))


def test_simulated_sealing_key_binds_platform_key_and_measurement() -> None:
    private, measurement = b"p" * 32, b"m" * 32
    key = simulated_sealing_key(private, measurement)
    assert len(key) == 32
    assert key == simulated_sealing_key(private, measurement)
    assert key != simulated_sealing_key(private, b"n" * 32)
    assert key != simulated_sealing_key(b"q" * 32, measurement)
