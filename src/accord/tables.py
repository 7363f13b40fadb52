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
    line's bytes verbatim (:mod:`accord.csv_lines`: lines are located with a vectorised,
    quote-aware scan and gathered with ``pyarrow``'s ``take``); other combinations gather a
    pyarrow table chunk by chunk.
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
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from accord.atomic_files import atomic_output
from accord.csv_lines import copy_lines
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
    path: StrPath,
    columns: Sequence[str],
    *,
    mapped: bool = True,
    block_bytes: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream the key column(s) of ``path`` as record batches, in row order.

    ``mapped``: an uncompressed CSV is read through a memory map (no copy); its pages then
    count in the process's resident size up to the file's size, so an input larger than
    memory is read with plain reads instead (``mapped=False``). ``block_bytes``: the CSV
    reader's block (one batch each; 16 MiB by default); its working memory is a few blocks.

    Raises :class:`InputDataError` (naming the file) for a missing key column, an empty
    file, a file without data rows, or an unreadable or malformed file — the last possibly
    only while iterating.
    """
    wanted = _check_key_names(path, columns)
    fmt = file_format(path)
    batches = (
        _iter_csv_keys(path, wanted, mapped, block_bytes)
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
        import pyarrow.parquet as pq  # loaded only for Parquet files (~10 ms)

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
        names = list(reader.schema.names)
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"{path}: cannot read CSV: {_describe(exc)}") from exc
    except UnicodeDecodeError as exc:  # pyarrow decodes the header's names as UTF-8
        raise InputDataError(
            f"{path}: cannot read CSV: the header is not UTF-8 text ({exc.reason} at byte "
            f"{exc.start})"
        ) from exc
    reader.close()
    return names


def _iter_csv_keys(
    path: StrPath, columns: list[str], mapped: bool = True, block_bytes: int | None = None
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
            read_options=pcsv.ReadOptions(block_size=block_bytes or _CSV_BLOCK_BYTES),
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
    import pyarrow.parquet as pq

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
            import pyarrow.parquet as pq

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
        return copy_lines(
            path,
            mapped,
            ord(_delimiter(source)),
            rows,
            source_rows,
            progress,
            bounded,
            output=atomic_output,
        )
    finally:
        with contextlib.suppress(BufferError):
            mapped.close()
