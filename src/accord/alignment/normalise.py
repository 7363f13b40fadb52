"""ID normalisation: the ONE rule every party applies before its IDs are digested.

The rule
--------
For every row, each key column's value is turned into a text string as follows:

1. **Type.** Text (``string``/``large_string``) and bytes (``binary``/``large_binary``/
   ``fixed_size_binary``) columns are taken as bytes. Integer columns become their decimal
   text (``7`` → ``"7"``, ``-12`` → ``"-12"``). Dictionary columns are decoded first. Any
   other type (floats, dates, ...) is refused: their text form is not canonical. A null is an
   empty ID.
2. **Decode** the bytes as UTF-8, strictly (as Python's ``bytes.decode("utf-8")`` with
   ``errors="strict"``: no overlong forms, no surrogates, nothing above U+10FFFF). A value
   that does not decode is an *undecodable* ID.
3. **Unicode NFC** (canonical composition): ``"e\\u0301"`` and ``"\\u00e9"`` are the same ID.
   (NFC only, not NFKC, and no case folding: ``"ID1"`` and ``"id1"`` stay different IDs.)
4. **Strip** surrounding whitespace, with the whitespace set of Python's ``str.strip()``
   (Unicode ``White_Space`` plus the ASCII separators U+001C..U+001F). Inner whitespace is kept.
5. A value that is now empty (or was null) is an *empty* ID.

A key of several columns is the concatenation of its normalised parts, each escaped
(``\\`` → ``\\\\``, U+001F → ``\\u``) and joined with U+001F. The escaping makes the join
injective: ``("a", "b c")`` and ``("a b", "c")`` never meet. A multi-column key with any
empty part is an empty ID. All parties must use the same number of key columns, in the same
order (the runtime checks this before exchanging digests).

The normalised key is handed on as UTF-8 bytes.

Empty and undecodable IDs are errors (:class:`~accord.errors.InputDataError` with counts
and the first few row indices) unless the caller asks to skip them, in which case they are
dropped and reported in :class:`IdReport`. Duplicates are handled later, on the keyed
digests (:func:`accord.alignment.digest_ids`). Rows are 0-based data rows (a header is not
a row). Messages never contain ID text.

Everything is vectorised with ``pyarrow.compute``: ASCII data (checked on the whole byte
buffer) is valid UTF-8 and its own NFC form, so it skips the UTF-8 cast and the NFC pass;
other data's UTF-8 validity is checked by one bulk cast, and only when it fails are the
offending rows located, by bisection. ``pyarrow.compute`` is imported only when a value
needs it (non-ASCII, whitespace at an end, several key columns, integer keys): importing it
costs a process about 30 ms, which the common case (ASCII IDs) does not pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from accord._lazy import lazy_module
from accord.errors import InputDataError

if TYPE_CHECKING:
    from types import ModuleType

    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

__all__ = [
    "EXAMPLE_ROWS",
    "ByteColumn",
    "IdReport",
    "PreparedIds",
    "plain_ids",
    "plain_key_column",
    "prepare_ids",
]

#: How many example row indices a report or an error message carries.
EXAMPLE_ROWS = 5

# Rows normalised per step: bounds the temporaries (a few times the chunk's bytes).
_CHUNK_ROWS = 1 << 20
# Below this many rows a failing UTF-8 cast is resolved row by row.
_BISECT_LEAF_ROWS = 256

_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class IdReport:
    """What :func:`prepare_ids` found in one party's key column(s).

    ``*_examples`` hold the first few 0-based data-row indices of each problem, in row order.
    """

    rows: int
    kept_rows: int
    empty_rows: int
    empty_examples: tuple[int, ...]
    undecodable_rows: int
    undecodable_examples: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class PreparedIds:
    """One party's IDs after normalisation.

    ``keys[i]`` is the normalised key (UTF-8 bytes) of local row ``row_index[i]``; rows
    dropped by ``skip_invalid`` are absent. ``row_index`` is strictly increasing.
    """

    keys: pa.ChunkedArray
    row_index: np.ndarray
    report: IdReport
    key_columns: int

    def __len__(self) -> int:
        return len(self.row_index)


@dataclass(frozen=True, eq=False)
class ByteColumn:
    """A column of byte strings held in numpy arrays, as Arrow lays out a ``binary`` array:
    value ``i`` is ``data[offsets[i]:offsets[i + 1]]``, and there are no nulls.

    The enclave keeps a key column in this form when it is plain (:func:`plain_ids`), so its
    common path never imports pyarrow (about 30 ms of a process's CPU). Whoever builds one
    checks the offsets (:func:`accord.tee.core.loader.decode_columns` does): ``offsets`` is
    non-decreasing, ``offsets[0] >= 0`` and ``offsets[-1] <= len(data)``.
    """

    offsets: np.ndarray
    data: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def slice(self, start: int, length: int) -> ByteColumn:
        """Values ``start`` to ``start + length`` (fewer at the end), sharing the buffers."""
        stop = min(start + length, len(self))
        return ByteColumn(self.offsets[start : stop + 1], self.data)

    def value_bytes(self) -> np.ndarray:
        """The bytes the values cover, ``data[offsets[0]:offsets[-1]]``."""
        return self.data[int(self.offsets[0]) : int(self.offsets[-1])]

    def to_arrow(self) -> pa.Array:
        """The same values as an Arrow ``binary`` array (over the same buffers)."""
        offsets = np.ascontiguousarray(self.offsets, dtype=np.int32)
        return pa.Array.from_buffers(
            pa.binary(), len(self), [None, pa.py_buffer(offsets), pa.py_buffer(self.data)]
        )


def plain_ids(column: ByteColumn) -> IdReport | None:
    """The report :func:`prepare_ids` gives for the one key column ``column`` when its rule
    leaves every value as it is: every byte ASCII (valid UTF-8, its own NFC form), no value
    empty, none beginning or ending with a byte that could be whitespace. The normalised keys
    are then ``column``'s bytes, every row kept. None when any value needs the rule's work
    (give the column to :func:`prepare_ids`)."""
    rows = len(column)
    if rows == 0:
        return None
    offsets = column.offsets
    data = column.value_bytes()
    if data.size == 0 or int(data.max()) >= 0x80:
        return None
    if bool(np.any(offsets[1:] == offsets[:-1])):  # an empty value
        return None
    if _may_need_trim_values(offsets, column.data):
        return None
    return IdReport(
        rows=rows,
        kept_rows=rows,
        empty_rows=0,
        empty_examples=(),
        undecodable_rows=0,
        undecodable_examples=(),
    )


def prepare_ids(
    columns: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    skip_invalid: bool = False,
) -> PreparedIds:
    """Normalise one party's key column(s) by the module's rule.

    ``columns`` holds one array per key column (``pyarrow`` arrays or chunked arrays; numpy
    arrays and lists are converted), all of the same length. ``names`` label the columns in
    messages. Raises :class:`InputDataError` for empty or undecodable IDs unless
    ``skip_invalid``; then those rows are dropped and counted in the report.
    """
    if len(columns) == 0:
        raise InputDataError("no key column given: expected at least one")
    labels = list(names) if names is not None else [f"#{i}" for i in range(len(columns))]
    if len(labels) != len(columns):
        raise InputDataError(f"key column names: expected {len(columns)} names, got {len(labels)}")
    arrays = [
        _as_chunked(column.to_arrow() if isinstance(column, ByteColumn) else column, label)
        for column, label in zip(columns, labels, strict=True)
    ]
    rows = len(arrays[0])
    for array, label in zip(arrays, labels, strict=True):
        if len(array) != rows:
            raise InputDataError(
                f"key column {label!r}: expected {rows} rows like {labels[0]!r}, got {len(array)}"
            )
    large = any(pa.types.is_large_binary(a.type) for a in arrays)
    if large:
        arrays = [a.cast(pa.large_binary()) for a in arrays]

    table = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
    key_chunks: list[pa.Array] = []
    index_chunks: list[np.ndarray] = []
    empty = _Tally()
    undecodable = _Tally()
    start = 0
    for batch in table.to_batches(max_chunksize=_CHUNK_ROWS):
        n = batch.num_rows
        if n == 0:
            continue
        parts: list[pa.Array] = []
        empty_mask = np.zeros(n, dtype=bool)
        bad_mask = np.zeros(n, dtype=bool)
        for column in batch.columns:
            text, column_empty, column_bad = _normalise_column(column)
            empty_mask |= column_empty
            bad_mask |= column_bad
            parts.append(text)
        empty_mask &= ~bad_mask
        undecodable.add(start, bad_mask)
        empty.add(start, empty_mask)
        key = parts[0] if len(parts) == 1 else _join(parts)
        key = key.view(pa.large_binary() if large else pa.binary())
        invalid = empty_mask | bad_mask
        if invalid.any():
            keep = ~invalid
            key = key.filter(pa.array(keep))
            index_chunks.append(start + np.flatnonzero(keep))
        else:
            index_chunks.append(np.arange(start, start + n, dtype=np.int64))
        key_chunks.append(key)
        start += n

    if (empty.count or undecodable.count) and not skip_invalid:
        raise InputDataError(_invalid_message(labels, empty, undecodable))
    row_index = (
        np.concatenate(index_chunks).astype(np.int64, copy=False)
        if index_chunks
        else np.zeros(0, dtype=np.int64)
    )
    row_index.flags.writeable = False
    key_type = pa.large_binary() if large else pa.binary()
    report = IdReport(
        rows=rows,
        kept_rows=len(row_index),
        empty_rows=empty.count,
        empty_examples=tuple(empty.examples),
        undecodable_rows=undecodable.count,
        undecodable_examples=tuple(undecodable.examples),
    )
    return PreparedIds(
        keys=pa.chunked_array(key_chunks, type=key_type),
        row_index=row_index,
        report=report,
        key_columns=len(arrays),
    )


class _Tally:
    """Counts rows flagged by a boolean mask and keeps the first few row indices."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[int] = []

    def add(self, start: int, mask: np.ndarray) -> None:
        hits = int(np.count_nonzero(mask))
        if hits == 0:
            return
        self.count += hits
        room = EXAMPLE_ROWS - len(self.examples)
        if room > 0:
            self.examples.extend(int(i) + start for i in np.flatnonzero(mask)[:room])


def _rows_text(count: int, examples: list[int]) -> str:
    shown = ", ".join(str(i) for i in examples)
    more = ", ..." if count > len(examples) else ""
    return f"rows {shown}{more}"


def _invalid_message(labels: list[str], empty: _Tally, undecodable: _Tally) -> str:
    what = ", ".join(repr(label) for label in labels)
    noun = "key column" if len(labels) == 1 else "key columns"
    problems = []
    if undecodable.count:
        problems.append(
            f"{undecodable.count} undecodable ID(s) (not valid UTF-8) at "
            f"{_rows_text(undecodable.count, undecodable.examples)}"
        )
    if empty.count:
        problems.append(
            f"{empty.count} empty ID(s) (empty, null or whitespace only) at "
            f"{_rows_text(empty.count, empty.examples)}"
        )
    return (
        f"{noun} {what}: " + "; ".join(problems) + " (0-based data rows; fix the input or "
        "skip invalid IDs with --skip-invalid)"
    )


def plain_key_column(column: pa.Array, label: str) -> pa.Array:
    """A key column as read from a file, in a type the rule of step 1 takes as it is.

    Dictionary columns are decoded (Parquet often stores text that way); text, bytes and
    integer columns are returned unchanged, fixed-size bytes become bytes, an all-null
    column becomes a null bytes column. Any other type (floats, dates, ...) is refused with
    an :class:`InputDataError` naming ``label``: a host checks its key columns with this
    before contacting any peer.
    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        try:
            column = column.dictionary_decode()
        except pa.ArrowException as error:  # an index past the dictionary: a corrupt file
            raise InputDataError(
                f"key column {label!r}: its dictionary encoding is corrupt ({error})"
            ) from error
        kind = column.type
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_integer(kind)
    ):
        return column
    if pa.types.is_fixed_size_binary(kind):
        return column.cast(pa.binary())
    if pa.types.is_null(kind):
        return pa.nulls(len(column), type=pa.binary())
    raise InputDataError(
        f"key column {label!r}: expected text, bytes or integer IDs, got type {kind} "
        "(its text form is not canonical)"
    )


def _as_chunked(column: Any, label: str) -> pa.ChunkedArray:
    """Bring one key column to a chunked array of binary or large_binary bytes."""
    if isinstance(column, pa.ChunkedArray):
        chunked = column
    elif isinstance(column, pa.Array):
        chunked = pa.chunked_array([column], type=column.type)
    else:
        try:
            array = pa.array(column)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise InputDataError(f"key column {label!r}: cannot read as an array: {exc}") from exc
        chunked = pa.chunked_array([array], type=array.type)
    kind = chunked.type
    if pa.types.is_dictionary(kind):
        chunked = pa.chunked_array(
            [c.dictionary_decode() for c in chunked.chunks], type=kind.value_type
        )
        kind = chunked.type
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        # Zero-copy: strings are validated again below, like bytes.
        return pa.chunked_array([c.view(pa.binary()) for c in chunked.chunks], type=pa.binary())
    if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        return pa.chunked_array(
            [c.view(pa.large_binary()) for c in chunked.chunks], type=pa.large_binary()
        )
    if pa.types.is_fixed_size_binary(kind):
        return chunked.cast(pa.binary())
    if pa.types.is_integer(kind):
        return chunked.cast(pa.string()).cast(pa.binary())
    if pa.types.is_null(kind):
        return pa.chunked_array([pa.nulls(len(chunked), type=pa.binary())], type=pa.binary())
    raise InputDataError(
        f"key column {label!r}: expected text, bytes or integer IDs, got type {kind}"
    )


def _compute() -> ModuleType:
    """``pyarrow.compute``, imported on first use (see the module docstring)."""
    import importlib

    return importlib.import_module("pyarrow.compute")


def _normalise_column(column: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Normalise one chunk of one key column.

    Returns the normalised text (undecodable rows blanked), the empty mask and the
    undecodable mask.
    """
    string_type = pa.large_string() if pa.types.is_large_binary(column.type) else pa.string()
    n = len(column)
    bad = np.zeros(n, dtype=bool)
    if _is_ascii(column):
        # ASCII is valid UTF-8 and its own NFC form: the cast's check and the NFC pass are
        # the identity, and the same buffers are viewed as text.
        text = column.view(string_type)
    else:
        try:
            text = column.cast(string_type)
        except pa.ArrowInvalid:
            bad = _undecodable_mask(column, string_type)
            blank = pa.scalar(b"", type=column.type)
            text = _compute().if_else(pa.array(bad), blank, column).cast(string_type)
        text = _compute().utf8_normalize(text, form="NFC")
    if _may_need_trim(text):
        text = _compute().utf8_trim_whitespace(text)
    empty = np.diff(value_offsets(text)) == 0
    if text.null_count:
        empty |= np.asarray(text.is_null(), dtype=bool)
    return text, empty, bad


# First or last bytes that may belong to whitespace: the ASCII whitespace of str.strip()
# (\t \n \v \f \r space and U+001C..U+001F) and any non-ASCII byte (U+0085, U+00A0,
# U+3000, ...). When no value starts or ends with one, trimming is the identity: skip it.
# The test takes every byte below 0x21 (a superset: a value starting with another control
# byte is only trimmed, to no effect) and every byte from 0x80, in one comparison:
# (b - 0x21) mod 256 >= 0x5F.
_PRINTABLE_FIRST = np.uint8(0x21)
_PRINTABLE_COUNT = np.uint8(0x80 - 0x21)


def _maybe_whitespace(values: np.ndarray) -> bool:
    """Whether any of the bytes ``values`` may begin or end a whitespace run."""
    return bool(np.any((values - _PRINTABLE_FIRST) >= _PRINTABLE_COUNT))


def _may_need_trim(text: pa.Array) -> bool:
    """False when no value begins or ends with a byte that could be whitespace."""
    buffer = text.buffers()[2]
    if buffer is None or len(text) == 0:
        return False
    return _may_need_trim_values(value_offsets(text), np.frombuffer(buffer, dtype=np.uint8))


def _may_need_trim_values(offsets: np.ndarray, data: np.ndarray) -> bool:
    """:func:`_may_need_trim` of the values ``data[offsets[i]:offsets[i + 1]]``."""
    first, last = int(offsets[0]), int(offsets[-1])
    count = len(offsets) - 1
    width, remainder = divmod(last - first, count)
    # Values of one width (IDs usually are): the data is an (n, width) matrix, and the first
    # and last bytes are two of its columns.
    if (
        width
        and not remainder
        and int(offsets[1]) - first == width
        and bool(np.all(np.diff(offsets) == width))
    ):
        matrix = data[first:last].reshape(count, width)
        return _maybe_whitespace(matrix[:, 0]) or _maybe_whitespace(matrix[:, -1])
    starts = offsets[:-1]
    ends = offsets[1:]
    nonempty = ends > starts
    if not nonempty.all():
        starts = starts[nonempty]
        ends = ends[nonempty]
    if starts.size == 0:
        return False
    return _maybe_whitespace(data[starts]) or _maybe_whitespace(data[ends - 1])


def _is_ascii(column: pa.Array) -> bool:
    """True when every byte the chunk's values use is below 0x80 (checked in bulk)."""
    data = _value_bytes(column)
    return data.size == 0 or int(data.max()) < 0x80


def _value_bytes(column: pa.Array) -> np.ndarray:
    """The byte range of the data buffer that this (possibly sliced) chunk's values cover."""
    offsets = value_offsets(column)
    buffer = column.buffers()[2]
    if buffer is None or offsets[-1] == offsets[0]:
        return np.zeros(0, dtype=np.uint8)
    return np.frombuffer(buffer, dtype=np.uint8)[int(offsets[0]) : int(offsets[-1])]


def value_offsets(column: pa.Array) -> np.ndarray:
    """The ``len + 1`` value offsets of a binary-like chunk, as a read-only numpy view."""
    large = pa.types.is_large_binary(column.type) or pa.types.is_large_string(column.type)
    dtype = np.int64 if large else np.int32
    buffer = column.buffers()[1]
    if buffer is None:
        return np.zeros(len(column) + 1, dtype=dtype)
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(
        buffer, dtype=dtype, count=len(column) + 1, offset=column.offset * itemsize
    )


def _undecodable_mask(column: pa.Array, string_type: pa.DataType) -> np.ndarray:
    """Rows whose bytes are not valid UTF-8, found by bisecting failing casts."""
    mask = np.zeros(len(column), dtype=bool)
    pending = [(0, len(column))]
    while pending:
        lo, hi = pending.pop()
        piece = column.slice(lo, hi - lo)
        try:
            piece.cast(string_type)
            continue
        except pa.ArrowInvalid:
            pass
        if hi - lo <= _BISECT_LEAF_ROWS:
            for offset, value in enumerate(piece.to_pylist()):
                if value is None:
                    continue
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    mask[lo + offset] = True
            continue
        middle = (lo + hi) // 2
        pending.extend(((middle, hi), (lo, middle)))
    return mask


def _join(parts: list[pa.Array]) -> pa.Array:
    """Escape each normalised part and join them with U+001F (injective)."""
    pc = _compute()
    escaped = [
        pc.replace_substring(pc.replace_substring(part, "\\", "\\\\"), _SEPARATOR, "\\u")
        for part in parts
    ]
    separator = pa.scalar(_SEPARATOR, type=escaped[0].type)
    return pc.binary_join_element_wise(*escaped, separator)
