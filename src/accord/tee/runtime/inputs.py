"""One party's own input, checked before any network and streamed to its enclave.

:func:`read_policy` and :func:`check_paths` fail early, naming the file;
:func:`estimate_rows` gives the enclave a row hint; :class:`KeyReader` reads the key
column(s) in a worker thread, ahead of the enclave's need for them, in a type the enclave
takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from accord.errors import ConfigurationError, InputDataError
from accord.tee.core.attestation import parse_policy
from accord.tee.runtime.settings import PartySettings

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["KEY_BLOCK_BYTES", "KeyReader", "check_paths", "estimate_rows", "read_policy"]

_READ_AHEAD_BATCHES = 4
#: The CSV reader's block, in memory and bucketed (one ``LOAD_IDS`` batch each, ~45k rows of
#: 32-byte IDs). The reader's working memory is a few blocks: with 16 MiB ones a 1M-row host
#: first-touched ~100 MB to read 44 MB (25k page faults, 90 ms of CPU), with 2 MiB ones ~30 MB
#: (8k, 58 ms). Arrow parses blocks ahead on its own threads whatever the read-ahead below,
#: and the blocks it frees stay in those threads' malloc arenas (freed memory is kept, see
#: :mod:`accord.tee.core.allocator`): bucketed 5M-row runs, which read 16 MiB blocks, held
#: 170-240 MB of freed memory in the host during the spill, as much as scheduling left there;
#: host and enclave peaked at 0.37-0.45 GB (8 buckets; 64: 0.52-0.59 GB) against 0.21-0.25
#: GB (0.22-0.27) with 2 MiB blocks, which cost the spill and sort ~0.1 s more at 64 buckets.
KEY_BLOCK_BYTES = 2 << 20


def read_policy(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ConfigurationError(
            f"policy {path}: no such file (see `accord align identity` for a ready policy)"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"policy {path}: cannot read: {error}") from error
    parse_policy(text, str(path))  # fail early, naming the file
    return text


def check_paths(settings: PartySettings) -> None:
    from accord.tables import file_format

    if not settings.input.is_file():
        raise InputDataError(f"{settings.input}: no such input file")
    file_format(settings.input)
    for output in (settings.output_map, settings.output_table):
        if output is not None:
            try:
                file_format(output)
            except InputDataError as error:
                raise ConfigurationError(f"output {error}") from error
    for output in (settings.output_map, settings.output_table, settings.summary):
        if output is not None and not output.parent.is_dir():
            raise ConfigurationError(
                f"{output}: the output directory {output.parent} does not exist"
            )


def estimate_rows(path: Path) -> int | None:
    """A cheap estimate of the input's data rows (the enclave sizes its arrays by it)."""
    from accord.tables import TableFormat, file_format

    try:
        if file_format(path) is TableFormat.PARQUET:
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if path.suffix.lower() in (".gz", ".bz2", ".zst", ".lz4"):
            return None
        size = path.stat().st_size
        with path.open("rb") as handle:
            sample = handle.read(1 << 20)
    except Exception:  # only a hint: the real read reports any problem
        return None
    lines = sample.count(b"\n")
    return None if lines < 2 else int(size * lines / len(sample))


def _plain_batches(
    path: Path, columns: Sequence[str], batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """The batches with their key columns in a type the enclave takes (dictionaries decoded);
    a key column of another type (a float, a date) is refused naming the file and column."""
    import pyarrow as pa

    from accord.alignment.normalise import plain_key_column

    for batch in batches:
        try:
            arrays = [
                plain_key_column(batch.column(index), name) for index, name in enumerate(columns)
            ]
        except InputDataError as error:
            raise InputDataError(f"{path}: {error}") from error
        yield pa.RecordBatch.from_arrays(arrays, names=list(columns))


class KeyReader:
    """Reads the key column(s) in a worker thread, ahead of the enclave's need for them.

    The first batch is read before any peer is contacted, so a missing column, an empty or
    unreadable file fails at once; the rest is read while the enclave starts and attests.
    """

    def __init__(
        self,
        path: Path,
        columns: Sequence[str],
        read_ahead: int = _READ_AHEAD_BATCHES,
        *,
        mapped: bool = True,
        block_bytes: int | None = None,
    ) -> None:
        from accord.tables import iter_key_batches

        self._iterator: Iterator[pa.RecordBatch] = _plain_batches(
            path, columns, iter_key_batches(path, columns, mapped=mapped, block_bytes=block_bytes)
        )
        # A few batches of read-ahead (a block's IDs each) bound the host's memory.
        self._queue: asyncio.Queue[pa.RecordBatch | BaseException | None] = asyncio.Queue(
            maxsize=read_ahead
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the first batch (raising input errors now), then read on in the background."""
        first = await asyncio.to_thread(next, self._iterator, None)
        self._queue.put_nowait(first)
        self._task = asyncio.create_task(self._read_rest())

    async def _read_rest(self) -> None:
        while True:
            try:
                batch = await asyncio.to_thread(next, self._iterator, None)
            except Exception as error:  # handed to the consumer, raised there
                await self._queue.put(error)
                return
            await self._queue.put(batch)
            if batch is None:
                return

    def __aiter__(self) -> KeyReader:
        return self

    async def __anext__(self) -> pa.RecordBatch:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
