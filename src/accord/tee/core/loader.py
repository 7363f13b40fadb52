"""This party's IDs inside the enclave: key columns off the wire, normalised and digested.

:func:`decode_columns` rebuilds the Arrow arrays the host sent with ``LOAD_IDS``
(:func:`accord.tee.core.wire.encode_columns`), validating every offset; :class:`IdLoader`
normalises each batch as it arrives, digests it once the session's digest key exists, and
hands :class:`~accord.tee.core.session.EnclaveSession` the sorted, deduplicated digest set.
Pure: no file, socket or clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from accord._lazy import lazy_module
from accord.alignment import (
    DigestSet,
    DuplicatePolicy,
    IdReport,
    check_words,
    keyed_digests,
    prepare_ids,
)
from accord.alignment.buckets import IdTally, duplicate_error, sort_bucket
from accord.alignment.normalise import ByteColumn, plain_ids
from accord.errors import InputDataError, ProtocolError
from accord.tee.core.bucket_plan import Proposal

if TYPE_CHECKING:
    from typing import TypeAlias

    import pyarrow as pa

    #: A key column off the wire: a plain one as a :class:`ByteColumn`, any other as Arrow.
    KeyColumn: TypeAlias = ByteColumn | pa.Array
else:
    pa = lazy_module("pyarrow")  # plain key columns (ByteColumn) need no pyarrow

__all__ = ["IdLoader", "SessionConfig", "decode_columns"]

_COLUMN_TYPES = (
    "binary",
    "large_binary",
    "string",
    "large_string",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
)


def decode_columns(
    meta: Mapping[str, Any], body: bytes | bytearray | memoryview
) -> list[KeyColumn]:
    """Rebuild the arrays described by :func:`accord.tee.core.wire.encode_columns` over ``body``
    (zero copy), validating every offset against the buffers.

    A ``binary`` column without nulls (what a host reads from a CSV), or a ``string`` one of
    ASCII bytes, comes back as a :class:`ByteColumn` once its offsets are checked as Arrow's
    full validation checks them; any other column, or one that fails a check, is rebuilt and
    validated by Arrow (which then names what is wrong).
    """
    try:
        columns = meta["columns"]
        source = memoryview(body).cast("B")
        position = 0
        arrays: list[KeyColumn] = []
        for column in columns:
            if column["type"] not in _COLUMN_TYPES:
                raise ProtocolError(f"LOAD_IDS: unsupported key column type {column['type']!r}")
            spans: list[tuple[int, int] | None] = []
            for size in column["buffers"]:
                if size is None:
                    spans.append(None)
                    continue
                if not isinstance(size, int) or size < 0 or position + size > len(source):
                    raise ProtocolError("LOAD_IDS: buffer sizes exceed the body")
                spans.append((position, size))
                position += size
            plain = _byte_column(column, spans, source)
            arrays.append(plain if plain is not None else _arrow_column(column, spans, source))
        if position != len(source):
            raise ProtocolError("LOAD_IDS: trailing bytes after the key columns")
        return arrays
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"LOAD_IDS: malformed key columns ({error})") from error


def _byte_column(
    column: Mapping[str, Any], spans: list[tuple[int, int] | None], source: memoryview
) -> ByteColumn | None:
    """The column as a :class:`ByteColumn` if it is plain and its offsets check out, else
    None: ``binary`` (or ASCII ``string``), no validity buffer, no nulls, int32 offsets that
    start at or after 0, never decrease and end within the data (Arrow's full validation of
    a binary array)."""
    kind, length = column["type"], column["length"]
    nulls, offset = column["null_count"], column["offset"]
    if kind not in ("binary", "string") or nulls != 0 or len(spans) != 3:
        return None
    if not isinstance(length, int) or not isinstance(offset, int) or length < 0 or offset < 0:
        return None
    validity, offset_span, data_span = spans
    if validity is not None or offset_span is None or data_span is None:
        return None
    start, size = offset_span
    if size < 4 * (offset + length + 1):
        return None
    offsets = np.frombuffer(source, dtype=np.int32, count=length + 1, offset=start + 4 * offset)
    data = np.frombuffer(source, dtype=np.uint8, count=data_span[1], offset=data_span[0])
    if int(offsets[0]) < 0 or int(offsets[-1]) > data.size:
        return None
    if length and not bool(np.all(offsets[1:] >= offsets[:-1])):
        return None
    plain = ByteColumn(offsets, data)
    if kind == "string":  # Arrow validates text as UTF-8: ASCII is, else let Arrow check
        values = plain.value_bytes()
        if values.size and int(values.max()) >= 0x80:
            return None
    return plain


def _arrow_column(
    column: Mapping[str, Any], spans: list[tuple[int, int] | None], source: memoryview
) -> pa.Array:
    """The column rebuilt by Arrow over ``source`` and fully validated."""
    try:
        whole = pa.py_buffer(source)
        buffers = [None if span is None else whole.slice(*span) for span in spans]
        array = pa.Array.from_buffers(
            getattr(pa, column["type"])(),
            column["length"],
            buffers,
            column["null_count"],
            column["offset"],
        )
        array.validate(full=True)
    except pa.ArrowException as error:
        raise ProtocolError(f"LOAD_IDS: malformed key columns ({error})") from error
    return array


@dataclass(frozen=True)
class SessionConfig:
    """The session parameters ``INIT`` gives the enclave."""

    party_name: str
    session: str
    parties: int
    key_columns: tuple[str, ...]
    duplicates: DuplicatePolicy
    skip_invalid: bool
    pad_to: int | None
    #: This party's bucket proposal (``None``: an in-memory run).
    proposal: Proposal | None = None


class IdLoader:
    """This party's IDs, normalised and digested batch by batch as they arrive.

    Each ``LOAD_IDS`` batch is normalised at once (invalid IDs are counted, and refused at
    the end unless skipped, with the message :func:`accord.alignment.prepare_ids` gives on
    the whole input); once the session's digest key is known each batch is digested and its
    key bytes dropped, so the enclave keeps 24 bytes per row (digest and row index), not the
    IDs. The finished set is sorted and deduplicated as :func:`accord.alignment.digest_ids`
    does.
    """

    def __init__(
        self,
        config: SessionConfig,
        rows_hint: int | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        self._config = config
        self._random_bytes = random_bytes
        self._tally = IdTally()
        self._key: bytes | None = None
        self._waiting: list[tuple[pa.ChunkedArray | ByteColumn, np.ndarray]] = []  # no key yet
        capacity = 0 if rows_hint is None else min(rows_hint + rows_hint // 8 + 4096, 1 << 31)
        self._digests = _Gathered(capacity, (2,), np.uint64)
        self._rows = _Gathered(capacity, (), np.int64)
        #: The duplicate check before the session key (``error`` policy): a one-off seed of
        #: this enclave, drawn at the first batch, and each row's check word under it.
        self._check_seed: int | None = None
        self._check_words = _Gathered(capacity, (), np.uint64)
        self.finished = False

    @property
    def rows(self) -> int:
        """Data rows loaded so far."""
        return self._tally.rows

    def add(self, columns: list[KeyColumn]) -> None:
        first_row = self._tally.rows
        keys: pa.ChunkedArray | ByteColumn
        only = columns[0] if len(columns) == 1 else None
        report = plain_ids(only) if isinstance(only, ByteColumn) else None
        if isinstance(only, ByteColumn) and report is not None:
            # The rule leaves every value as it is (prepare_ids would return the same keys).
            keys = only
            rows = np.arange(first_row, first_row + len(only), dtype=np.int64)
        else:
            prepared = prepare_ids(columns, names=list(self._config.key_columns), skip_invalid=True)
            keys, report = prepared.keys, prepared.report
            rows = np.asarray(prepared.row_index, dtype=np.int64) + first_row
        self._tally.add(report)
        if self._key is None:
            self._waiting.append((keys, rows))
            self._check_batch(keys)
        else:
            self._digest(keys, rows)

    def _check_batch(self, keys: pa.ChunkedArray | ByteColumn) -> None:
        """Hash a batch that waits for the session key under the one-off check seed (as it
        arrives, while the host reads the next one), keeping one word a row."""
        if self._config.duplicates is not DuplicatePolicy.ERROR or self._random_bytes is None:
            return
        if self._check_seed is None:
            self._check_seed = int.from_bytes(self._random_bytes(8), "little")
        self._check_words.append(check_words(keys, self._check_seed))

    def _digest(self, keys: pa.ChunkedArray | ByteColumn, rows: np.ndarray) -> None:
        assert self._key is not None
        columns = len(self._config.key_columns)
        self._digests.append(keyed_digests(keys, self._key, key_columns=columns))
        self._rows.append(rows)

    def set_key(self, key: bytes) -> None:
        """The session's digest key: digest every batch that waited for it."""
        if self._key is None:
            self._key = key
            self._check_words.take()  # the keyed set finds duplicates itself
            waiting, self._waiting = self._waiting, []
            waiting.reverse()
            while waiting:  # each batch's key bytes are freed as soon as it is digested
                keys, rows = waiting.pop()
                self._digest(keys, rows)
                del keys, rows

    def finish(self) -> IdReport:
        """No more batches: refuse invalid IDs (unless skipped); return the input report."""
        self.finished = True
        if self._tally.rows == 0:
            raise InputDataError("no IDs were loaded (the input has no data rows)")
        if not self._config.skip_invalid:
            error = self._tally.error(list(self._config.key_columns))
            if error is not None:
                raise error
        if self._tally.kept_rows == 0:
            raise InputDataError("no usable IDs remain after dropping empty and undecodable ones")
        if self._key is None and self._config.duplicates is DuplicatePolicy.ERROR:
            self._refuse_duplicates()
        return self._tally.report()

    def _refuse_duplicates(self) -> None:
        """Refuse duplicated IDs before the session exists (so before any peer is contacted).

        The IDs wait for the session's digest key. Each batch was hashed on arrival
        (:func:`~accord.alignment.check_words`, under a one-off seed of this enclave, never
        used again), one 64-bit word a row; here the words are sorted in place (8 bytes a
        row): distinct words mean distinct IDs. Only when two words are equal (a duplicate,
        or about once in 2**64 two IDs sharing a word) are the IDs digested under a one-off
        key and sorted, to give the exact error, rows and examples the keyed set would give.
        """
        words = self._check_words.take()
        if self._check_seed is None or self._random_bytes is None or len(self._waiting) == 0:
            return
        words.sort()
        suspect = bool(np.any(words[1:] == words[:-1]))
        del words
        if not suspect:
            return
        key = self._random_bytes(32)
        columns = len(self._config.key_columns)
        digests = np.concatenate(
            [keyed_digests(keys, key, key_columns=columns) for keys, _ in self._waiting]
        )
        rows = np.concatenate([rows for _, rows in self._waiting])
        error = duplicate_error(sort_bucket(digests, rows, DuplicatePolicy.ERROR).duplicates)
        del digests, rows
        if error is not None:
            raise error

    def digest_set(self) -> DigestSet:
        """The canonical digest set (sorted, duplicates handled) once finished and keyed."""
        assert self.finished and self._key is not None and not self._waiting
        digests, rows = self._digests.take(), self._rows.take()
        ordered = sort_bucket(digests, rows, self._config.duplicates)
        del digests, rows  # freed memory is reused for the peers' digests
        if self._config.duplicates is DuplicatePolicy.ERROR:
            error = duplicate_error(ordered.duplicates)
            if error is not None:
                raise error
        ordered.keys.flags.writeable = False
        ordered.rows.flags.writeable = False
        return DigestSet(
            digests=ordered.keys, row_index=ordered.rows, duplicates=ordered.duplicates
        )


class _Gathered:
    """Arrays appended batch by batch into one array allocated up front.

    With a good estimate of the row count the values land in place, with no final
    concatenation; pages of the allocation are touched only as they fill. Beyond the
    estimate the batches are kept apart and joined at the end.
    """

    def __init__(self, capacity: int, tail: tuple[int, ...], dtype: type[np.generic]) -> None:
        self._tail = tail
        self._dtype = dtype
        self._array: np.ndarray | None = None
        if capacity:
            with contextlib.suppress(MemoryError):  # an estimate too big: no head start
                self._array = np.empty((capacity, *tail), dtype=dtype)
        self._filled = 0
        self._parts: list[np.ndarray] = []

    def append(self, values: np.ndarray) -> None:
        count = len(values)
        array = self._array
        if array is not None and not self._parts and self._filled + count <= len(array):
            array[self._filled : self._filled + count] = values
            self._filled += count
        else:
            self._parts.append(values)

    def take(self) -> np.ndarray:
        """Everything appended, as one array (the storage is handed over)."""
        pieces = [] if self._array is None else [self._array[: self._filled]]
        pieces += self._parts
        self._array, self._parts = None, []
        pieces = [piece for piece in pieces if len(piece)]
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return np.empty((0, *self._tail), dtype=self._dtype)
        return np.concatenate(pieces)
