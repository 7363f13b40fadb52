"""Reading key columns and writing alignment outputs: CSV and Parquet through pyarrow.

This is the host side of alignment (files only; the pure core is :mod:`accord.alignment`).

Formats are chosen by suffix: ``.csv`` (comma) and ``.tsv`` (tab), optionally compressed
(``.gz``, ``.bz2``, ``.zst``, ``.lz4``: read and written through pyarrow's codecs), and
``.parquet`` / ``.pq``. A CSV file has a header row; rows are numbered from 0 after it (the
*local row index* used everywhere in alignment); empty lines are skipped, as pyarrow does.

Reading
    :func:`iter_key_batches` streams only the key column(s) in record batches (CSV blocks of
    16 MiB, Parquet batches of 1M rows), so the peak stays near one batch plus the result.
    CSV key columns are read as raw ``binary`` so that undecodable bytes reach
    :func:`accord.alignment.prepare_ids`, which reports them by row; Parquet keeps its types.
    :func:`read_table` reads a whole table; CSV columns are read as text, exactly as written.

Writing
    :func:`write_row_map` writes ``position,row`` (shared position → local row index) and,
    if asked, the ID column(s). :func:`write_aligned_table` writes that party's rows in the
    shared order with every column kept. CSV → CSV with the same delimiter copies each data
    line's bytes verbatim (lines are located with a vectorised, quote-aware scan and gathered
    with ``pyarrow``'s ``take``); other combinations gather a pyarrow table chunk by chunk.
    Every write goes to a temporary file in the destination directory, is flushed to disk
    and then renamed over the destination (:func:`accord.atomic_files.atomic_output`): a
    failure leaves no file and no partial file behind, and an existing destination is
    untouched until the rename.

Errors are :class:`~accord.errors.InputDataError` naming the file and, where it applies, the
column: a missing key column (listing the columns the file has), an empty file, a file with
a header but no rows, a malformed or unreadable file, an unsupported suffix. Failures to
write are :class:`~accord.errors.ConfigurationError` naming the output path. Messages never
quote row contents.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from accord.atomic_files import atomic_output
from accord.errors import ConfigurationError, InputDataError, ProtocolError

__all__ = [
    "TableFormat",
    "file_format",
    "iter_key_batches",
    "read_key_columns",
    "read_table",
    "write_aligned_table",
    "write_row_map",
]

StrPath = str | os.PathLike[str]
Progress = Callable[[int], None]

_CSV_BLOCK_BYTES = 16 << 20
_PARQUET_BATCH_ROWS = 1 << 20
_WRITE_CHUNK_ROWS = 1 << 20
_SCAN_BYTES = 4 << 20
#: A bounded-memory copy keeps at most this many bytes of the mapped input resident.
_RESIDENT_BYTES = 64 << 20
#: ... and gathers the output through partition files of about this size.
_PARTITION_BYTES = 64 << 20
#: ... of at most this many rows (putting one in order costs ~60 B a row besides its bytes).
_PARTITION_ROWS = 1 << 20
_MAX_PARTITIONS = 512
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_ROW_MAP_COLUMNS = ("position", "row")


class TableFormat(StrEnum):
    """A table file's format, from its suffix."""

    CSV = "csv"
    PARQUET = "parquet"


def file_format(path: StrPath) -> TableFormat:
    """The format of ``path`` from its suffix, or :class:`InputDataError`."""
    name = Path(path).name.lower()
    for suffix in _COMPRESSIONS:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            if name.endswith((".csv", ".tsv")):
                return TableFormat.CSV
            break
    else:
        if name.endswith((".csv", ".tsv")):
            return TableFormat.CSV
        if name.endswith((".parquet", ".pq")):
            return TableFormat.PARQUET
    raise InputDataError(
        f"{path}: expected a .csv, .tsv (optionally .gz, .bz2, .zst, .lz4), .parquet or .pq file"
    )


def _compression(path: StrPath) -> str | None:
    name = Path(path).name.lower()
    return next((codec for suffix, codec in _COMPRESSIONS.items() if name.endswith(suffix)), None)


def _delimiter(path: StrPath) -> str:
    name = Path(path).name.lower()
    for suffix in _COMPRESSIONS:
        name = name.removesuffix(suffix)
    return "\t" if name.endswith(".tsv") else ","


# ----------------------------------------------------------------------------- reading


def iter_key_batches(
    path: StrPath, columns: Sequence[str], *, mapped: bool = True
) -> Iterator[pa.RecordBatch]:
    """Stream the key column(s) of ``path`` as record batches, in row order.

    ``mapped``: an uncompressed CSV is read through a memory map (no copy); its pages then
    count in the process's resident size up to the file's size, so an input larger than
    memory is read with plain reads instead (``mapped=False``).

    Raises :class:`InputDataError` (naming the file) for a missing key column, an empty
    file, a file without data rows, or an unreadable or malformed file — the last possibly
    only while iterating.
    """
    wanted = _check_key_names(path, columns)
    fmt = file_format(path)
    batches = (
        _iter_csv_keys(path, wanted, mapped)
        if fmt is TableFormat.CSV
        else _iter_parquet_keys(path, wanted)
    )
    rows = 0
    for batch in batches:
        rows += batch.num_rows
        if batch.num_rows:
            yield batch
    if rows == 0:
        raise InputDataError(f"{path}: no data rows (the file has only a header)")


def read_key_columns(path: StrPath, columns: Sequence[str], *, mapped: bool = True) -> pa.Table:
    """All of ``path``'s key column(s) as one table (read by streaming; see above)."""
    batches = list(iter_key_batches(path, columns, mapped=mapped))
    return pa.Table.from_batches(batches)


def read_table(path: StrPath) -> pa.Table:
    """The whole table in ``path``. CSV columns are read as text, exactly as written."""
    fmt = file_format(path)
    _check_readable(path)
    if fmt is TableFormat.PARQUET:
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputDataError(f"{path}: not a readable Parquet file: {_describe(exc)}") from exc
        if table.num_rows == 0:
            raise InputDataError(f"{path}: no data rows")
        return table
    names = _csv_header(path)
    convert = pcsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pcsv.read_csv(
            _csv_source(path), parse_options=_parse_options(path), convert_options=convert
        )
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"{path}: cannot read CSV: {_describe(exc, names)}") from exc
    if table.num_rows == 0:
        raise InputDataError(f"{path}: no data rows (the file has only a header)")
    return table


def _check_key_names(path: StrPath, columns: Sequence[str]) -> list[str]:
    wanted = list(columns)
    if not wanted:
        raise ConfigurationError(f"{path}: key columns: expected at least one name, got none")
    if len(set(wanted)) != len(wanted):
        raise ConfigurationError(f"{path}: key columns: expected distinct names, got {wanted}")
    return wanted


def _check_readable(path: StrPath) -> None:
    target = Path(path)
    if not target.exists():
        raise InputDataError(f"{path}: no such file")
    if not target.is_file():
        raise InputDataError(f"{path}: not a regular file")
    if target.stat().st_size == 0:
        raise InputDataError(f"{path}: the file is empty")
    if not os.access(target, os.R_OK):
        raise InputDataError(f"{path}: permission denied")


def _parse_options(path: StrPath) -> pcsv.ParseOptions:
    # Quoted values may span lines; without this pyarrow's block chunker loses sync on them.
    return pcsv.ParseOptions(delimiter=_delimiter(path), newlines_in_values=True)


def _csv_header(path: StrPath) -> list[str]:
    """Column names of a CSV file (parses the first block only)."""
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=1 << 20),
            parse_options=_parse_options(path),
            convert_options=pcsv.ConvertOptions(include_columns=[]),
        )
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"{path}: cannot read CSV: {_describe(exc)}") from exc
    names = list(reader.schema.names)
    reader.close()
    return names


def _iter_csv_keys(
    path: StrPath, columns: list[str], mapped: bool = True
) -> Iterator[pa.RecordBatch]:
    _check_readable(path)
    convert = pcsv.ConvertOptions(
        include_columns=columns,
        column_types={name: pa.binary() for name in columns},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        reader = pcsv.open_csv(
            _csv_source(path, mapped),
            read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            parse_options=_parse_options(path),
            convert_options=convert,
        )
    except KeyError as exc:  # pyarrow.lib.ArrowKeyError: an include_columns name is absent
        available = _csv_header(path)
        raise _missing_columns(path, columns, available) from exc
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"{path}: cannot read CSV: {_describe(exc)}") from exc
    with contextlib.closing(reader):
        rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                raise InputDataError(
                    f"{path}: malformed CSV after data row {rows}: {_describe(exc)}"
                ) from exc
            rows += batch.num_rows
            yield batch


def _csv_source(path: StrPath, mapped: bool = True) -> str | pa.NativeFile:
    """A memory map for an uncompressed file (no copy into fresh memory), else the path."""
    if _compression(path) is not None or not mapped:
        return str(path)
    try:
        return pa.memory_map(str(path))
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"{path}: cannot read: {_describe(exc)}") from exc


def _iter_parquet_keys(path: StrPath, columns: list[str]) -> Iterator[pa.RecordBatch]:
    _check_readable(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"{path}: not a readable Parquet file: {_describe(exc)}") from exc
    with contextlib.closing(parquet):
        available = list(parquet.schema_arrow.names)
        if any(name not in available for name in columns):
            raise _missing_columns(path, columns, available)
        try:
            yield from parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise InputDataError(f"{path}: cannot read Parquet data: {_describe(exc)}") from exc


def _missing_columns(path: StrPath, wanted: list[str], available: list[str]) -> InputDataError:
    missing = [name for name in wanted if name not in available]
    shown = ", ".join(repr(name) for name in available) or "none"
    noun = "key column" if len(missing) == 1 else "key columns"
    listed = ", ".join(repr(name) for name in missing)
    return InputDataError(f"{path}: {noun} {listed} not found; the file has columns {shown}")


_ROW_TEXT = re.compile(r"(Expected \d+ columns, got \d+):.*", re.DOTALL)


def _describe(exc: BaseException, names: Sequence[str] | None = None) -> str:
    """A one-line description of a pyarrow/OS error without quoting row contents."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _ROW_TEXT.sub(r"\1", text)
    column = re.search(r"In CSV column #(\d+)", text)
    if column and names is not None and int(column.group(1)) < len(names):
        text += f" (column {names[int(column.group(1))]!r})"
    return text


# ----------------------------------------------------------------------------- writing


def write_row_map(
    path: StrPath,
    row_map: np.ndarray,
    *,
    ids: pa.Table | None = None,
    source_rows: int | None = None,
) -> None:
    """Write ``position,row`` (and the ID columns of ``ids`` if given) to ``path``, atomically.

    ``row_map[j]`` is the local row index at shared position ``j``. ``ids`` is the table of
    key columns as read by :func:`read_key_columns` (one row per local row); its columns are
    written after ``row`` under their own names.
    """
    rows = _check_row_map(path, row_map, ids.num_rows if ids is not None else source_rows)
    columns: dict[str, Any] = {
        "position": pa.array(np.arange(len(rows), dtype=np.int64)),
        "row": pa.array(rows),
    }
    if ids is not None:
        taken = ids.take(pa.array(rows))
        for name, column in zip(taken.column_names, taken.columns, strict=True):
            if name in _ROW_MAP_COLUMNS:
                raise ConfigurationError(
                    f"{path}: a key column is named {name!r}, which the row map uses itself"
                )
            binary = pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)
            columns[name] = _binary_to_text(path, name, column) if binary else column
    _write_arrow(path, pa.table(columns), chunk_rows=_WRITE_CHUNK_ROWS)


def write_aligned_table(
    path: StrPath,
    source: StrPath | pa.Table,
    row_map: np.ndarray,
    *,
    source_rows: int | None = None,
    progress: Progress | None = None,
    bounded: bool = False,
) -> None:
    """Write ``source``'s rows in the order of ``row_map`` to ``path``, every column kept.

    ``source`` is the party's input file (or a table already read). ``source_rows`` — the
    number of data rows found when the key columns were read — lets a CSV → CSV copy take
    the verbatim-lines path safely (the scan must find exactly that many rows, else the
    table path is used). ``progress`` is called with the number of rows written so far.
    ``bounded`` (an input larger than memory): the CSV copy reads the input once in file
    order and gathers the lines through partition files next to ``path``, so that neither
    its resident pages nor the page cache it needs grow with the input (random reads of a
    mapped file larger than memory would thrash).
    """
    out_format = file_format(path)
    if isinstance(source, pa.Table):
        rows = _check_row_map(path, row_map, source.num_rows)
        _write_arrow(path, source, rows, progress=progress)
        return
    in_format = file_format(source)
    if (
        in_format is TableFormat.CSV
        and out_format is TableFormat.CSV
        and source_rows is not None
        and _delimiter(source) == _delimiter(path)
        and _compression(source) is None
        and _compression(path) is None
    ):
        rows = _check_row_map(path, row_map, source_rows)
        if _write_csv_lines(path, source, rows, source_rows, progress, bounded):
            return
    table = read_table(source)
    rows = _check_row_map(path, row_map, table.num_rows)
    _write_arrow(path, table, rows, progress=progress)


def _check_row_map(path: StrPath, row_map: Any, source_rows: int | None) -> np.ndarray:
    rows = np.asarray(row_map)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise ProtocolError(
            f"{path}: row map: expected a 1-D integer array, got shape {rows.shape} "
            f"dtype {rows.dtype}"
        )
    rows = rows.astype(np.int64, copy=False)
    if rows.size and (
        int(rows.min()) < 0 or (source_rows is not None and int(rows.max()) >= source_rows)
    ):
        raise ProtocolError(
            f"{path}: row map: expected row indices in [0, {source_rows}), got "
            f"[{int(rows.min())}, {int(rows.max())}]"
        )
    return rows


def _binary_to_text(path: StrPath, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    target = pa.large_string() if pa.types.is_large_binary(column.type) else pa.string()
    try:
        return column.cast(target)
    except pa.ArrowInvalid:
        return column  # Parquet keeps bytes; CSV writing will report the column.
    except pa.ArrowException as exc:  # pragma: no cover - defensive
        raise InputDataError(f"{path}: column {name!r}: {_describe(exc)}") from exc


def _open_sink(temporary: Path, final: StrPath) -> pa.NativeFile:
    codec = _compression(final)
    if codec is None:
        return pa.OSFile(str(temporary), "wb")
    return pa.CompressedOutputStream(str(temporary), codec)


def _csv_header_line(names: Sequence[str], delimiter: str) -> bytes:
    """A CSV header line; a name is quoted only if it holds a quote, the delimiter or a
    line break (a quote doubled inside), as pyarrow quotes values."""

    def field(name: str) -> str:
        if any(mark in name for mark in ('"', delimiter, "\n", "\r")):
            return '"' + name.replace('"', '""') + '"'
        return name

    return (delimiter.join(field(name) for name in names) + "\n").encode()


def _write_arrow(
    path: StrPath,
    table: pa.Table,
    rows: np.ndarray | None = None,
    *,
    chunk_rows: int = _WRITE_CHUNK_ROWS,
    progress: Progress | None = None,
) -> None:
    """Write ``table`` (its rows ``rows`` in that order, if given) chunk by chunk."""
    fmt = file_format(path)
    total = table.num_rows if rows is None else len(rows)
    with atomic_output(path) as temporary, _open_sink(temporary, path) as sink:
        writer: Any
        if fmt is TableFormat.CSV:
            delimiter = _delimiter(path)
            # pyarrow quotes every column name; the header is written here instead, quoted
            # only where needed, like the values (and like a verbatim copy of the input's).
            sink.write(_csv_header_line(table.column_names, delimiter))
            writer = pcsv.CSVWriter(
                sink,
                table.schema,
                write_options=pcsv.WriteOptions(include_header=False, delimiter=delimiter),
            )
        else:
            writer = pq.ParquetWriter(sink, table.schema)
        try:
            for start in range(0, max(total, 1), chunk_rows):
                if rows is None:
                    piece = table.slice(start, chunk_rows)
                else:
                    piece = table.take(pa.array(rows[start : start + chunk_rows]))
                try:
                    writer.write_table(piece)
                except (pa.ArrowException, OSError) as exc:
                    raise InputDataError(
                        f"{path}: cannot write the table: {_describe(exc, table.column_names)}"
                    ) from exc
                if progress is not None:
                    progress(min(start + chunk_rows, total))
        finally:
            writer.close()


def _write_csv_lines(
    path: StrPath,
    source: StrPath,
    rows: np.ndarray,
    source_rows: int,
    progress: Progress | None,
    bounded: bool = False,
) -> bool:
    """Copy ``source``'s header and the data lines ``rows`` verbatim; False if not possible.

    The file is memory-mapped (its pages come from the page cache, no copy). The row
    structure is recomputed from the bytes (quote-aware); if it does not give exactly
    ``source_rows`` data rows, or the quoting is not plain RFC 4180, nothing is written and
    the caller falls back to the table path.
    """
    _check_readable(source)
    try:
        with open(source, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{source}: cannot read: {exc}") from exc
    try:
        return _copy_lines(
            path, mapped, ord(_delimiter(source)), rows, source_rows, progress, bounded
        )
    finally:
        with contextlib.suppress(BufferError):
            mapped.close()


def _copy_lines(
    path: StrPath,
    mapped: mmap.mmap,
    delimiter: int,
    rows: np.ndarray,
    source_rows: int,
    progress: Progress | None,
    bounded: bool = False,
) -> bool:
    raw = np.frombuffer(mapped, dtype=np.uint8)
    if bounded:
        return _copy_lines_bounded(
            path, raw, delimiter, rows, source_rows, _PageRelease(mapped), progress
        )
    lines = _csv_lines(raw, delimiter)
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
    with atomic_output(path) as temporary, open(temporary, "wb") as sink:
        sink.write(values[header].as_py())
        if header == unterminated:  # pragma: no cover - a header-only file has no rows
            sink.write(b"\n")
        for start in range(0, len(rows), _WRITE_CHUNK_ROWS):
            chosen = _lines_of(rows[start : start + _WRITE_CHUNK_ROWS], nonempty)
            _write_lines(sink, values, chosen, unterminated)
            if progress is not None:
                progress(min(start + _WRITE_CHUNK_ROWS, len(rows)))
    return True


def _lines_of(rows: np.ndarray, nonempty: np.ndarray | None) -> np.ndarray:
    """The line numbers (header = 0) of the data rows ``rows``."""
    chosen = rows + 1
    return chosen if nonempty is None else np.take(nonempty, chosen)


def _write_lines(sink: BinaryIO, values: pa.Array, chosen: np.ndarray, unterminated: int) -> None:
    """Write the lines ``chosen`` of ``values`` in that order (a ``"\\n"`` after the last
    line of a file that lacks one)."""
    taken = values.take(pa.array(chosen))
    bounds = np.frombuffer(taken.buffers()[1], dtype=np.int64, count=len(taken) + 1)
    data = memoryview(taken.buffers()[2])
    cut = int(bounds[0])
    for at in np.flatnonzero(chosen == unterminated).tolist():
        sink.write(data[cut : int(bounds[at + 1])])
        sink.write(b"\n")
        cut = int(bounds[at + 1])
    sink.write(data[cut : int(bounds[-1])])


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
) -> bool:
    """:func:`_copy_lines` for an input larger than memory: one pass in file order.

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
            atomic_output(path) as temporary,
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


def _csv_lines(raw: np.ndarray, delimiter: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Split ``raw`` into rows the way pyarrow's CSV reader does, or None if unsure.

    A row ends at ``\\n``, ``\\r\\n`` or a lone ``\\r`` outside double quotes; empty lines
    are skipped. Returns ``(offsets, nonempty)``: line ``i`` (terminator included) is
    ``raw[offsets[i]:offsets[i + 1]]``, and ``nonempty`` lists the non-empty lines (None when
    all are). Returns None where :func:`_line_ends` cannot be sure of the rows (a quote
    pyarrow reads literally, or quotes that do not balance). The result is one int64 per
    line.
    """
    size = raw.size
    try:
        pieces = list(_line_ends(raw, delimiter))
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
    for first in range(0, line_count, _WRITE_CHUNK_ROWS):
        last = min(first + _WRITE_CHUNK_ROWS, line_count)
        empty = _empty_lines(raw, offsets[first : last + 1])
        if empty.any():
            empty_chunks.append(np.flatnonzero(empty) + first)
    if not empty_chunks:
        return offsets, None
    keep = np.ones(line_count, dtype=bool)
    keep[np.concatenate(empty_chunks)] = False
    return offsets, np.flatnonzero(keep)


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
