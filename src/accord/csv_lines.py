"""Copying a CSV's data lines verbatim in a new order (the aligned table's fast path).

:func:`copy_lines` locates every line of a memory-mapped CSV with a vectorised,
quote-aware scan (a line break inside a quoted field does not end a row) and writes the
header and the chosen data lines, byte for byte, in the order asked. For an input larger
than memory (``bounded``) it reads the input once in file order, releasing the pages it
has read, and gathers the output through partition files next to the destination, so
neither its resident pages nor the page cache it needs grow with the input. The caller
(:func:`accord.tables.write_aligned_table`) falls back to a table copy when the file is
not plain RFC 4180 CSV.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from accord.errors import ProtocolError

__all__ = ["copy_lines"]

StrPath = str | os.PathLike[str]
Progress = Callable[[int], None]
#: Opens an atomic output: yields a temporary path, renamed over the destination on success.
Output = Callable[[StrPath], AbstractContextManager[Path]]

_WRITE_CHUNK_ROWS = 1 << 20
#: Lines gathered per write: the gathered copy is a reused few MiB, not the whole output.
_GATHER_ROWS = 1 << 16
_SCAN_BYTES = 4 << 20
_NEWLINE_SCAN_BYTES = 256 << 10
#: A bounded-memory copy keeps at most this many bytes of the mapped input resident.
_RESIDENT_BYTES = 64 << 20
#: ... and gathers the output through partition files of about this size.
_PARTITION_BYTES = 64 << 20
#: ... of at most this many rows (putting one in order costs ~60 B a row besides its bytes).
_PARTITION_ROWS = 1 << 20
_MAX_PARTITIONS = 512


def copy_lines(
    path: StrPath,
    mapped: mmap.mmap,
    delimiter: int,
    rows: np.ndarray,
    source_rows: int,
    progress: Progress | None,
    bounded: bool = False,
    *,
    output: Output,
) -> bool:
    """Write the header and the data lines ``rows`` of the mapped CSV ``mapped`` to
    ``path``, in that order, through ``output`` (an atomic writer: it yields a temporary
    path and renames it over ``path`` on success). False, with nothing written, when the
    lines found are not ``source_rows + 1`` or the quoting is not plain RFC 4180.
    """
    raw = np.frombuffer(mapped, dtype=np.uint8)
    if bounded:
        return _copy_lines_bounded(
            path, raw, delimiter, rows, source_rows, _PageRelease(mapped), progress, output
        )
    lines = _csv_lines(raw, delimiter, plain=_is_plain(mapped, raw, delimiter))
    if lines is None:
        return False
    offsets, nonempty = lines
    line_count = len(offsets) - 1
    if (line_count if nonempty is None else len(nonempty)) != source_rows + 1:
        return False
    # The last line may lack a terminator: it gets a "\n" when written.
    unterminated = line_count - 1 if raw[-1] not in (_NEWLINE, _RETURN) else -1
    values = pa.Array.from_buffers(
        pa.large_binary(), line_count, [None, pa.py_buffer(offsets), pa.py_buffer(raw)]
    )
    header = 0 if nonempty is None else int(nonempty[0])
    with output(path) as temporary, open(temporary, "wb") as sink:
        sink.write(values[header].as_py())
        if header == unterminated:  # pragma: no cover - a header-only file has no rows
            sink.write(b"\n")
        for start in range(0, len(rows), _GATHER_ROWS):
            chosen = _lines_of(rows[start : start + _GATHER_ROWS], nonempty)
            _write_lines(sink, values, chosen, unterminated)
            done = min(start + _GATHER_ROWS, len(rows))
            if progress is not None and (done % _WRITE_CHUNK_ROWS == 0 or done == len(rows)):
                progress(done)
    return True


def _is_plain(mapped: mmap.mmap, raw: np.ndarray, delimiter: int) -> bool:
    """Whether every ``"\\n"`` of the file ends a line: no carriage return, and no quote
    after the first line (memchr-fast to rule out). Quotes in the first line (a header
    written with quoted names, as pyarrow's CSV writer does) are allowed when the
    quote-aware scan of that line alone finds it well quoted and ending at its first
    ``"\\n"``."""
    if mapped.find(b"\r") >= 0:
        return False
    first = mapped.find(b"\n")
    if first < 0 or mapped.find(b'"', first + 1) >= 0:
        return False
    if mapped.find(b'"', 0, first) < 0:
        return True
    try:
        ends = [end for piece in _line_ends(raw[: first + 1], delimiter) for end in piece]
    except _NotPlainCsvError:
        return False
    return [int(end) for end in ends] == [first + 1]


def _lines_of(rows: np.ndarray, nonempty: np.ndarray | None) -> np.ndarray:
    """The line numbers (header = 0) of the data rows ``rows``."""
    chosen = rows + 1
    return chosen if nonempty is None else np.take(nonempty, chosen)


def _write_lines(sink: BinaryIO, values: pa.Array, chosen: np.ndarray, unterminated: int) -> None:
    """Write the lines ``chosen`` of ``values`` in that order (a ``"\\n"`` after the last
    line of a file that lacks one)."""
    # The indices as an Arrow array without a copy (pa.array would first import numpy.ma).
    indices = np.ascontiguousarray(chosen, dtype=np.int64)
    taken = _take(
        values, pa.Array.from_buffers(pa.int64(), len(indices), [None, pa.py_buffer(indices)])
    )
    bounds = np.frombuffer(taken.buffers()[1], dtype=np.int64, count=len(taken) + 1)
    data = memoryview(taken.buffers()[2])
    cut = int(bounds[0])
    for at in np.flatnonzero(chosen == unterminated).tolist():
        sink.write(data[cut : int(bounds[at + 1])])
        sink.write(b"\n")
        cut = int(bounds[at + 1])
    sink.write(data[cut : int(bounds[-1])])


def _take(values: pa.Array, indices: pa.Array) -> pa.Array:
    """``values.take(indices)`` (bounds checked) through Arrow's compiled function registry:
    ``Array.take`` first imports ``pyarrow.compute``, whose Python wrappers (a signature and
    a docstring for each of ~300 functions) cost a process ~30 ms of CPU, the last step of
    an alignment's writing on its critical path."""
    try:
        from pyarrow._compute import call_function
    except ImportError:  # pragma: no cover - a pyarrow without the compiled module's name
        from pyarrow.compute import call_function
    taken: pa.Array = call_function("take", [values, indices])
    return taken


class _PageRelease:
    """Unmaps the pages of a read-only file mapping behind a reader that goes in file order.

    The pages stay in the page cache (clean, so reclaimable); only this process's mapping of
    them goes, so its resident size stays near ``_RESIDENT_BYTES`` however large the file.
    """

    def __init__(self, mapped: mmap.mmap) -> None:
        self._mapped = mapped
        self._released = 0

    def before(self, offset: int) -> None:
        """Nothing before byte ``offset`` is read again in this sweep."""
        end = max(offset, 0) // mmap.PAGESIZE * mmap.PAGESIZE
        if end - self._released >= _RESIDENT_BYTES:
            self._drop(self._released, end - self._released)
            self._released = end

    def _drop(self, start: int, length: int) -> None:
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is not None and length > 0:
            self._mapped.madvise(advice, start, length)


class _NotPlainCsvError(Exception):
    """The quick line scan cannot be sure of the rows: the table path is used instead."""


def _copy_lines_bounded(
    path: StrPath,
    raw: np.ndarray,
    delimiter: int,
    rows: np.ndarray,
    source_rows: int,
    release: _PageRelease,
    progress: Progress | None,
    output: Output,
) -> bool:
    """:func:`copy_lines` for an input larger than memory: one pass in file order.

    The output positions are cut into windows of about ``_PARTITION_BYTES``. One sweep over
    the input appends each wanted line to its window's partition file (so a partition holds
    its lines in file order, with their lengths beside them), unmapping the pages behind it;
    then each partition is read back, put in output order and appended to the output.
    Memory: one ``int16`` per input row, the row map, and one partition.
    """
    total = len(rows)
    mean_line = max(1.0, raw.size / max(source_rows + 1, 1))
    window = max(
        1,
        min(int(_PARTITION_BYTES / mean_line), _PARTITION_ROWS),
        -(-total // _partition_limit()),
    )
    partitions = max(1, -(-total // window))
    owner: np.ndarray = np.full(source_rows, -1, dtype=np.int16)
    for k in range(partitions):
        owner[rows[k * window : (k + 1) * window]] = k
    owned = sum(
        int(np.count_nonzero(owner[i : i + _WRITE_CHUNK_ROWS] >= 0))  # no input-sized temporary
        for i in range(0, source_rows, _WRITE_CHUNK_ROWS)
    )
    if owned != total:
        raise ProtocolError(f"{path}: row map: expected distinct rows, found a row repeated")
    try:
        with (
            output(path) as temporary,
            open(temporary, "wb") as sink,
            tempfile.TemporaryDirectory(
                dir=temporary.parent, prefix=f"{temporary.name}."
            ) as folder,
        ):
            names = [Path(folder) / f"{k:05d}" for k in range(partitions)]
            _sweep_into_partitions(sink, raw, delimiter, owner, source_rows, names, release)
            del owner
            done = 0
            for k, name in enumerate(names):
                wanted = rows[k * window : (k + 1) * window]
                _append_partition(sink, temporary, name, wanted)
                done += len(wanted)
                if progress is not None:
                    progress(done)
    except _NotPlainCsvError:
        return False
    return True


def _partition_limit() -> int:
    """How many partitions the sweep may hold open (two files each), at most 512.

    Raises this process's soft limit on open files toward its hard limit first: 1024, a
    common default, would otherwise cap an output near 32 GiB.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 2 * _MAX_PARTITIONS + 256
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    except (ImportError, OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY:
        return _MAX_PARTITIONS
    return max(1, min(_MAX_PARTITIONS, (soft - in_use - 32) // 2))


def _sweep_into_partitions(
    sink: BinaryIO,
    raw: np.ndarray,
    delimiter: int,
    owner: np.ndarray,
    source_rows: int,
    names: list[Path],
    release: _PageRelease,
) -> None:
    """Write the header to ``sink`` and every wanted data row to its partition."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(name, "wb")) for name in names]
        lengths = [stack.enter_context(open(name.with_suffix(".len"), "wb")) for name in names]
        row = -1  # the header comes first
        for bounds, lines_here, unterminated in _iter_lines(raw, delimiter, release):
            data_lines = lines_here
            values = pa.Array.from_buffers(
                pa.large_binary(), len(bounds) - 1, [None, pa.py_buffer(bounds), pa.py_buffer(raw)]
            )
            if row < 0 and data_lines.size:
                _write_lines(sink, values, data_lines[:1], unterminated)
                data_lines = data_lines[1:]
                row = 0
            if row + data_lines.size > source_rows:
                raise _NotPlainCsvError
            keys = owner[row : row + data_lines.size]
            picked = np.flatnonzero(keys >= 0)
            if picked.size:
                picked = picked[np.argsort(keys[picked], kind="stable")]  # file order per key
                picked_keys = keys[picked]
                cuts = np.flatnonzero(np.diff(picked_keys)) + 1
                for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), picked.size], strict=True):
                    k = int(picked_keys[a])
                    chosen = data_lines[picked[a:b]]
                    _write_lines(files[k], values, chosen, unterminated)
                    sizes = bounds[chosen + 1] - bounds[chosen]
                    sizes[chosen == unterminated] += 1
                    lengths[k].write(sizes.astype(np.int64).tobytes())
            row += data_lines.size
        if row != source_rows:
            raise _NotPlainCsvError


def _append_partition(sink: BinaryIO, temporary: Path, name: Path, wanted: np.ndarray) -> None:
    """Append the rows ``wanted`` (in that order) from partition ``name`` to ``sink``."""
    sizes = np.fromfile(name.with_suffix(".len"), dtype=np.int64)
    data = name.read_bytes()
    name.unlink()
    name.with_suffix(".len").unlink()
    if len(sizes) != len(wanted):  # pragma: no cover - repeated rows are refused up front
        raise ProtocolError(f"{name}: holds {len(sizes)} rows, expected {len(wanted)}")
    bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    if int(bounds[-1]) != len(data):  # pragma: no cover - our own file, just written
        raise ProtocolError(f"{name}: holds {len(data)} bytes, expected {int(bounds[-1])}")
    lines = pa.Array.from_buffers(
        pa.large_binary(), len(sizes), [None, pa.py_buffer(bounds), pa.py_buffer(data)]
    )
    # The partition holds its rows in file order, i.e. in increasing row number: the row at
    # output slot j is the rank of wanted[j] (a scatter; searchsorted was 4x slower here).
    rank = np.empty(len(wanted), dtype=np.int64)
    rank[np.argsort(wanted)] = np.arange(len(wanted), dtype=np.int64)
    _write_lines(sink, lines, rank, -1)


def _iter_lines(
    raw: np.ndarray, delimiter: int, release: _PageRelease | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """The lines of ``raw`` piece by piece, for a reader that goes once in file order.

    Yields ``(bounds, data_lines, unterminated)``: the piece's lines are
    ``raw[bounds[i]:bounds[i + 1]]`` (terminator included), ``data_lines`` the indices of
    the non-empty ones, ``unterminated`` the index of a last line without terminator (else
    -1). Raises :class:`_NotPlainCsvError` where :func:`_csv_lines` returns None — possibly only
    at the end, so a caller must be able to discard what it did.
    """
    size = raw.size
    previous = 0
    for ends in _line_ends(raw, delimiter):
        if not ends.size:
            continue
        if release is not None:
            release.before(previous)  # every line before it was consumed
        bounds = np.empty(len(ends) + 1, dtype=np.int64)
        bounds[0] = previous
        bounds[1:] = ends
        previous = int(ends[-1])
        yield bounds, np.flatnonzero(~_empty_lines(raw, bounds)), -1
    if previous < size:  # a last line without terminator (never empty)
        yield np.array([previous, size], dtype=np.int64), np.zeros(1, dtype=np.int64), 0


def _empty_lines(raw: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Which lines ``raw[bounds[i]:bounds[i + 1]]`` are only a terminator."""
    lo = bounds[:-1]
    lengths = bounds[1:] - lo
    # An empty line is just its terminator: "\n", "\r" or "\r\n".
    empty: np.ndarray = lengths == 2
    empty[empty] = (raw[lo[empty]] == _RETURN) & (raw[lo[empty] + 1] == _NEWLINE)
    single = lengths == 1
    single[single] = (raw[lo[single]] == _NEWLINE) | (raw[lo[single]] == _RETURN)
    empty |= single
    return empty


_QUOTE, _NEWLINE, _RETURN = 0x22, 0x0A, 0x0D


def _csv_lines(
    raw: np.ndarray, delimiter: int, *, plain: bool = False
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Split ``raw`` into rows the way pyarrow's CSV reader does, or None if unsure.

    A row ends at ``\\n``, ``\\r\\n`` or a lone ``\\r`` outside double quotes; empty lines
    are skipped. Returns ``(offsets, nonempty)``: line ``i`` (terminator included) is
    ``raw[offsets[i]:offsets[i + 1]]``, and ``nonempty`` lists the non-empty lines (None when
    all are). Returns None where :func:`_line_ends` cannot be sure of the rows (a quote
    pyarrow reads literally, or quotes that do not balance). The result is one int64 per
    line. ``plain``: the caller found no quote and no ``\\r`` in ``raw``, so the lines end
    exactly after each ``\\n`` (one pass instead of the quote-aware scan's three).
    """
    size = raw.size
    try:
        pieces = list(_newline_ends(raw) if plain else _line_ends(raw, delimiter))
    except _NotPlainCsvError:
        return None
    count = sum(len(piece) for piece in pieces)
    unterminated = size > 0 and raw[-1] not in (_NEWLINE, _RETURN)
    offsets = np.empty(count + 1 + int(unterminated), dtype=np.int64)
    offsets[0] = 0
    position = 1
    for piece in pieces:
        offsets[position : position + len(piece)] = piece
        position += len(piece)
    del pieces
    if unterminated:
        offsets[-1] = size
    empty_chunks = []
    line_count = len(offsets) - 1
    for first in range(0, line_count, _GATHER_ROWS):
        last = min(first + _GATHER_ROWS, line_count)
        empty = _empty_lines(raw, offsets[first : last + 1])
        if empty.any():
            empty_chunks.append(np.flatnonzero(empty) + first)
    if not empty_chunks:
        return offsets, None
    keep = np.ones(line_count, dtype=bool)
    keep[np.concatenate(empty_chunks)] = False
    return offsets, np.flatnonzero(keep)


def _newline_ends(raw: np.ndarray) -> Iterator[np.ndarray]:
    """The end offsets of ``raw``'s lines when every ``"\\n"`` ends one, one array per
    256 KiB piece: the comparison goes through one small scratch array, where a whole-file
    one (44 MB for a 1M-row input) would first-touch fresh memory, the costliest part of
    the scan on a virtual machine."""
    scratch = np.empty(_NEWLINE_SCAN_BYTES, dtype=bool)
    for start in range(0, raw.size, _NEWLINE_SCAN_BYTES):
        segment = raw[start : start + _NEWLINE_SCAN_BYTES]
        is_newline = scratch[: segment.size]
        np.equal(segment, _NEWLINE, out=is_newline)
        ends = np.flatnonzero(is_newline)
        ends += start + 1
        yield ends


def _line_ends(raw: np.ndarray, delimiter: int) -> Iterator[np.ndarray]:
    """The end offsets of ``raw``'s terminated lines, one array per 4 MiB piece.

    Raises :class:`_NotPlainCsvError` for a quote that pyarrow would read literally — an
    opening quote (even count so far) not at the start of a field, or a closing quote not at
    its end (``""`` inside a quoted field passes both) — or quotes that do not balance (found
    at the end): counting such quotes would cut the rows in the wrong places.
    """
    size = raw.size
    quotes_before = 0
    scratch = np.empty((3, _SCAN_BYTES), dtype=bool)
    edge_byte = np.zeros(256, dtype=bool)
    edge_byte[[delimiter, _NEWLINE, _RETURN, _QUOTE]] = True
    for start in range(0, size, _SCAN_BYTES):
        segment = raw[start : start + _SCAN_BYTES]
        width = segment.size
        is_quote, is_newline, is_return = (row[:width] for row in scratch)
        np.equal(segment, _QUOTE, out=is_quote)
        np.equal(segment, _NEWLINE, out=is_newline)
        np.equal(segment, _RETURN, out=is_return)
        quotes = np.flatnonzero(is_quote)
        if quotes.size:
            at = quotes + start
            opening = ((np.arange(quotes.size) + quotes_before) & 1) == 0
            before = at[opening] - 1
            after = at[~opening] + 1
            # The start and the end of the file count as field edges.
            if not edge_byte[raw[before[before >= 0]]].all():
                raise _NotPlainCsvError
            if not edge_byte[raw[after[after < size]]].all():
                raise _NotPlainCsvError
        newlines = np.flatnonzero(is_newline)
        returns = np.flatnonzero(is_return)
        if quotes.size or quotes_before & 1:
            # A terminator is inside quotes when an odd number of quotes precede it.
            parity = quotes_before & 1
            newlines = newlines[((np.searchsorted(quotes, newlines) + parity) & 1) == 0]
            returns = returns[((np.searchsorted(quotes, returns) + parity) & 1) == 0]
            quotes_before += quotes.size
        ends = newlines + (start + 1)
        if returns.size:
            following = returns + (start + 1)
            lone = following >= size
            lone[~lone] = raw[following[~lone]] != _NEWLINE
            ends = np.sort(np.concatenate((ends, following[lone])))
        yield ends
    if quotes_before % 2:
        raise _NotPlainCsvError
