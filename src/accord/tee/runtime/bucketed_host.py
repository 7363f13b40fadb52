"""The host's side of a bucketed alignment run (``accord align --memory-limit / --buckets``).

:func:`drive_buckets` is what :func:`accord.tee.runtime.party.run_party` runs instead of
the in-memory exchange when the run is bucketed: it streams the key columns into the enclave
and appends the sealed spill records it gets back to the bucket files, hands every bucket
back for sorting, then exchanges and intersects bucket by bucket while the peer loops relay
the channel records, and finally collects this party's rows of every bucket once every
peer confirmed. After every step it stores the enclave's sealed state in the run manifest
(:mod:`accord.tee.runtime.runstate`), so ``--resume`` continues from the last finished step.

The rest of this module maps settings to and from the manifest, parses ``--memory-limit``,
estimates an input's rows, and says how much memory the outputs need.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import mmap
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from accord.errors import ConfigurationError, ProtocolError
from accord.failpoints import ALIGN_ACTIONS, failpoints_for
from accord.tee.core.allocator import release_memory
from accord.tee.core.wire import Call, encode_columns
from accord.tee.runtime.progress import ProgressTracker
from accord.tee.runtime.relay import PartyRun
from accord.tee.runtime.runstate import InputDigest, RunDirectory, RunManifest, digest_file
from accord.tee.runtime.settings import PartySettings
from accord.tee.runtime.transport import Endpoint

__all__ = [
    "ENCLAVE_RESERVED_BYTES",
    "HOST_RESERVED_BYTES",
    "BucketOutcome",
    "check_memory_limit",
    "default_run_dir",
    "drive_buckets",
    "estimate_rows",
    "input_digests",
    "larger_than_memory",
    "output_bytes",
    "parse_size",
    "proposal",
    "settings_from_json",
    "settings_to_json",
]

logger = logging.getLogger(__name__)

#: Memory a host process needs besides bucket data: interpreter, libraries, read-ahead of
#: the key columns, a bucket file being relayed, channel batches (measured, rounded up).
HOST_RESERVED_BYTES = 260 << 20
#: The same for the enclave process: interpreter, libraries, one spill batch in flight.
ENCLAVE_RESERVED_BYTES = 160 << 20

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)
_SCALE = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
_SAMPLE_BYTES = 16 << 20


def parse_size(text: str, field: str = "--memory-limit") -> int:
    """``"2GiB"``, ``"512MiB"``, ``"1.5G"`` (binary units; ``GB`` is decimal), or bytes."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigurationError(
            f"{field}: expected a size like 2GiB, 512MiB or 1000000000, got {text!r}"
        )
    number, unit, binary = match.groups()
    unit = unit.upper()
    base = 1024 if binary or (unit and not str(text).strip().upper().endswith("B")) else 1000
    if not unit:
        base = 1
    value = float(number) * base ** _SCALE[unit]
    if value < 1:
        raise ConfigurationError(f"{field}: expected a positive size, got {text!r}")
    return int(value)


def estimate_rows(path: Path) -> int:
    """Data rows of ``path``, estimated from its first 16 MiB (exact for Parquet).

    Errs high for compressed files (it assumes up to 8× compression), which at worst plans
    more buckets than needed.
    """
    from accord.tables import TableFormat, file_format

    if file_format(path) is TableFormat.PARQUET:
        import pyarrow.parquet as pq

        rows: int = pq.ParquetFile(path).metadata.num_rows
        return rows
    size = path.stat().st_size
    if size == 0:
        return 0
    lower = path.name.lower()
    compressed = lower.endswith((".gz", ".bz2", ".zst", ".lz4"))
    if compressed:
        import pyarrow as pa

        with pa.input_stream(str(path), compression="detect") as stream:
            sample = bytes(stream.read(_SAMPLE_BYTES))
        lines = sample.count(b"\n")
        return math.ceil(lines * max(1.0, 8 * size / max(len(sample), 1)))
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        sample_size = min(size, _SAMPLE_BYTES)
        lines = m[:sample_size].count(b"\n")
    return math.ceil(lines * size / sample_size)


def output_bytes(settings: PartySettings, rows: int) -> int:
    """Memory the host needs at the end to write the outputs of an input of ``rows`` rows.

    The row map (8 B per shared row, at most ``rows``); for the aligned table's verbatim
    copy, the CSV line offsets (8 B per input row) or, for an input larger than memory
    (:func:`larger_than_memory`), one partition number per input row (2 B) and two
    partitions; the IDs for ``--include-ids`` (read back: about their bytes plus offsets);
    or the whole table when the aligned table cannot be copied line by line (Parquet,
    compressed or re-delimited CSV).
    """
    from accord.tables import TableFormat, file_format

    need = 8 * rows
    if settings.include_ids:
        need += 48 * rows
    if settings.output_table is not None:
        verbatim = (
            file_format(settings.input) is TableFormat.CSV
            and file_format(settings.output_table) is TableFormat.CSV
            and not settings.input.name.lower().endswith((".gz", ".bz2", ".zst", ".lz4"))
            and settings.input.suffix.lower() == settings.output_table.suffix.lower()
        )
        if not verbatim:
            need += 4 * settings.input.stat().st_size
        elif larger_than_memory(settings):
            # A partition back in order: its bytes twice, ~60 B a row (sizes, ranks, take).
            need += 2 * rows + (256 << 20)
        else:
            need += 8 * rows + (64 << 20)
    return need


def larger_than_memory(settings: PartySettings) -> bool:
    """Whether the input is read without a memory map and the aligned table gathered in
    file order (``accord.tables.write_aligned_table(bounded=True)``).

    A mapped file's pages count in the process's resident size up to the file's size, and
    gathering the aligned table in the shared order touches them at random, which thrashes
    when the page cache is smaller than the file. Bucketed runs whose input is above a
    quarter of the memory limit (or that set ``--buckets`` without a limit) avoid both.
    """
    if not settings.bucketed:
        return False
    if settings.memory_limit is None:
        return True
    try:
        return bool(settings.input.stat().st_size > settings.memory_limit // 4)
    except OSError:
        return True


def default_run_dir(settings: PartySettings) -> Path:
    """``accord-run-<session>-<party>`` next to the first output (else next to the input)."""
    anchor = next(
        (p for p in (settings.output_map, settings.output_table, settings.summary) if p),
        settings.input,
    )
    return Path(anchor).parent / f"accord-run-{settings.session}-{settings.party_name}"


# ----------------------------------------------------------------------------- settings JSON


def settings_to_json(settings: PartySettings) -> dict[str, Any]:
    """The run's settings as JSON values (paths and addresses as text)."""
    out: dict[str, Any] = {}
    for item in fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, Path):
            value = str(value.resolve())
        elif isinstance(value, tuple):
            value = [str(v) if not isinstance(v, str) else v for v in value]
        elif value is not None and not isinstance(value, str | int | float | bool):
            value = str(value)
        out[item.name] = value
    return out


def settings_from_json(data: dict[str, Any], overrides: dict[str, Any]) -> PartySettings:
    """The run's :class:`~accord.tee.runtime.party.PartySettings`, ``overrides`` on top."""
    paths = {"input", "policy", "output_map", "output_table", "summary", "platform_key", "run_dir"}
    values: dict[str, Any] = {}
    known = {item.name for item in fields(PartySettings)}
    for name, raw in data.items():
        if name not in known:
            continue
        value: Any = raw
        if raw is not None and name in paths:
            value = Path(raw)
        elif name == "listen" and raw is not None:
            value = Endpoint.parse(raw, "listen")
        elif name == "peers":
            value = tuple(Endpoint.parse(v, "peer") for v in raw)
        elif name == "key_columns":
            value = tuple(raw)
        values[name] = value
    values.update({k: v for k, v in overrides.items() if k in known})
    try:
        return PartySettings(**values)
    except TypeError as error:
        raise ConfigurationError(f"run manifest: settings do not fit ({error})") from error


# ----------------------------------------------------------------------------- the flow


@dataclass
class BucketOutcome:
    """What a bucketed run returns to the party run (as the in-memory exchange does)."""

    report: dict[str, Any]
    counts: dict[str, Any]
    row_map: np.ndarray
    buckets: int
    resumed_from_bucket: int | None
    disk_peak_bytes: int


def _failpoint() -> str | None:
    """``ACCORD_FAILPOINT=align-pause@K``: the host stops (sleeps) after bucket ``K`` of the
    exchange is stored (``align-pause@done``: once every peer confirmed), for tests that kill
    a run mid-way (see :mod:`accord.failpoints`)."""
    for point in failpoints_for(ALIGN_ACTIONS):
        return "done" if point.step is None else str(point.step)
    return None


async def _pause(where: str) -> None:
    logger.warning("failpoint align-pause@%s: pausing until killed", where)
    await asyncio.sleep(3600)


class _Checkpoints:
    """Stores the enclave's sealed state in the manifest after every step."""

    def __init__(
        self,
        run: PartyRun,
        directory: RunDirectory,
        manifest: RunManifest,
        inputs: asyncio.Future[dict[str, InputDigest]] | None,
    ) -> None:
        self.run = run
        self.directory = directory
        self.manifest = manifest
        self.inputs = inputs
        self.progress: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}
        self.disk_peak = 0

    async def save(self) -> dict[str, Any]:
        reply, blob = await self.run.call(Call.CHECKPOINT)
        self.progress = dict(reply["progress"])
        self.counts = dict(reply["counts"])
        manifest = self.manifest
        manifest.set_sealed(bytes(blob))
        manifest.stage = self.progress["stage"]
        manifest.buckets = int(self.progress["buckets"])
        manifest.sorted = int(self.progress["sorted"])
        manifest.exchanged = int(self.progress["exchanged"])
        manifest.run_id = str(self.progress["run_id"])
        if self.inputs is not None:
            # A run is resumable only once its inputs' digests are recorded (hashed while
            # the run starts, in a thread).
            manifest.inputs = await self.inputs
            self.inputs = None
        await asyncio.to_thread(self.directory.save, manifest)
        self.disk_peak = max(self.disk_peak, await asyncio.to_thread(self.directory.disk_usage))
        return self.progress


async def drive_buckets(
    run: PartyRun,
    directory: RunDirectory,
    manifest: RunManifest,
    tracker: ProgressTracker,
    estimated_rows: int,
    inputs: asyncio.Future[dict[str, InputDigest]] | None = None,
) -> BucketOutcome:
    """Spill, sort, exchange and collect (see the module docstring); ``run`` is the party's
    run, already attested, its relay loops running, the
    run mode agreed as bucketed. ``inputs``: the input digests still being computed."""
    checkpoints = _Checkpoints(run, directory, manifest, inputs)
    progress = await checkpoints.save()
    buckets = int(progress["buckets"])
    resumed = manifest.notes.get("resumes", 0) > 0
    logger.info(
        "bucketed run %s: %d buckets, stage %s", progress["run_id"][:12], buckets, progress["stage"]
    )
    report: dict[str, Any] = dict(manifest.notes.get("id_report") or {})
    started = time.perf_counter()
    if progress["stage"] == "spill":
        report = await _spill(run, directory, tracker, estimated_rows)
        manifest.notes["id_report"] = report
        progress = await checkpoints.save()
    run.seconds["spill"] = round(time.perf_counter() - started, 4)
    started = time.perf_counter()
    if progress["stage"] == "sort":
        progress = await _sort(run, directory, tracker, checkpoints, progress)
    run.seconds["sort"] = round(time.perf_counter() - started, 4)
    started = time.perf_counter()
    start = int(progress["start"])
    pause = _failpoint()
    if progress["stage"] == "exchange":
        progress = await _exchange(run, directory, tracker, checkpoints, progress, pause)
    run.seconds["exchange"] = round(time.perf_counter() - started, 4)
    started = time.perf_counter()
    tracker.stage("confirm")
    await run.wait_for(lambda status: bool(status.get("done")))
    await checkpoints.save()  # stage "done": a crash from here on needs no peer to finish
    if pause == "done":
        await _pause(pause)
    row_map = await _collect(run, directory, buckets, int(checkpoints.counts["intersection_size"]))
    run.seconds["confirm_collect"] = round(time.perf_counter() - started, 4)
    if not report:
        raise ProtocolError("the run manifest lost the input report")
    return BucketOutcome(
        report=report,
        counts=checkpoints.counts,
        row_map=row_map,
        buckets=buckets,
        resumed_from_bucket=start if resumed else None,
        disk_peak_bytes=checkpoints.disk_peak,
    )


async def _spill(
    run: PartyRun, directory: RunDirectory, tracker: ProgressTracker, estimated_rows: int
) -> dict[str, Any]:
    """Stage "spill": every key batch through the enclave into the sealed spill files;
    the enclave's report on the IDs."""
    directory.remove_all("spill")
    directory.remove_all("sorted")
    directory.remove_all("result")
    tracker.stage("spill", total=estimated_rows or None, unit="rows")
    rows = 0
    try:
        async for batch in run.keys:
            meta, buffers = encode_columns(list(batch.columns))
            reply, body = await run.call(Call.LOAD_IDS, meta, buffers)
            await asyncio.to_thread(_append, directory, reply["pieces"], body)
            rows += batch.num_rows
            tracker.advance(rows)
        reply, body = await run.call(Call.LOAD_DONE)
        await asyncio.to_thread(_append, directory, reply["pieces"], body)
    finally:
        directory.close_appends()
    release_memory()  # the key reader's batches
    tracker.advance(rows, force=True)
    return dict(reply["ids"])


async def _sort(
    run: PartyRun,
    directory: RunDirectory,
    tracker: ProgressTracker,
    checkpoints: _Checkpoints,
    progress: dict[str, Any],
) -> dict[str, Any]:
    """Stage "sort": each spilled bucket sorted by the enclave, from where a resumed run
    stopped; the progress after the last bucket."""
    buckets = int(progress["buckets"])
    tracker.stage("sort", total=buckets, unit="buckets", done=int(progress["sorted"]))
    for bucket in range(int(progress["sorted"]), buckets):
        spill = await asyncio.to_thread(directory.read, "spill", bucket)
        _, sorted_file = await run.call(Call.SORT_BUCKET, {"bucket": bucket}, [spill])
        del spill
        await asyncio.to_thread(directory.write, "sorted", bucket, sorted_file)
        del sorted_file
        progress = await checkpoints.save()
        directory.remove("spill", bucket)
        tracker.advance(bucket + 1)
    return progress


async def _exchange(
    run: PartyRun,
    directory: RunDirectory,
    tracker: ProgressTracker,
    checkpoints: _Checkpoints,
    progress: dict[str, Any],
    pause: str | None,
) -> dict[str, Any]:
    """Stage "exchange": bucket by bucket, the enclaves exchange and intersect; the
    progress after the last bucket (``pause``: a failpoint's bucket, for tests)."""
    buckets = int(progress["buckets"])
    start = int(progress["start"])
    tracker.stage("exchange", total=buckets, unit="buckets", done=start)
    for bucket in range(start, buckets):
        sorted_file = await asyncio.to_thread(directory.read, "sorted", bucket)
        await run.call(Call.LOAD_BUCKET, {"bucket": bucket}, [sorted_file])
        del sorted_file
        await run.wait_for(functools.partial(_bucket_ready, bucket))
        _, result = await run.call(Call.INTERSECT, {"bucket": bucket})
        await asyncio.to_thread(directory.write, "result", bucket, result)
        del result
        progress = await checkpoints.save()
        tracker.advance(bucket + 1)
        if pause == str(bucket):
            await _pause(pause)
    return progress


async def _collect(
    run: PartyRun, directory: RunDirectory, buckets: int, intersection: int
) -> np.ndarray:
    """The row map, bucket by bucket from the sealed results (filled in place: the pieces
    and a concatenation would hold it twice); refused unless it has ``intersection`` rows."""
    row_map = np.empty(intersection, dtype=np.int64)
    filled = 0
    for bucket in range(buckets):
        result = await asyncio.to_thread(directory.read, "result", bucket)
        _, rows_body = await run.call(Call.RESULT, {"bucket": bucket}, [result])
        piece = np.frombuffer(rows_body, dtype=np.int64)
        if filled + len(piece) > len(row_map):
            raise ProtocolError("the enclave's row map does not match its counts")
        row_map[filled : filled + len(piece)] = piece
        filled += len(piece)
        del result, rows_body, piece
    if filled != len(row_map):
        raise ProtocolError("the enclave's row map does not match its counts")
    return row_map


def _bucket_ready(bucket: int, status: dict[str, Any]) -> bool:
    return bool(status.get("bucket_ready") == bucket)


def _append(directory: RunDirectory, pieces: list[list[int]], body: bytes | bytearray) -> None:
    view = memoryview(body)
    at = 0
    for bucket, length in pieces:
        directory.append_spill(int(bucket), view[at : at + int(length)])
        at += int(length)
    if at != len(view):
        raise ProtocolError("the enclave's spill pieces do not match its reply")


def proposal(settings: PartySettings, rows: int) -> dict[str, Any]:
    """What this party brings to the bucket-count agreement (a ``Proposal``)."""
    return {
        "rows": rows,
        "memory_limit": settings.memory_limit,
        "reserved": HOST_RESERVED_BYTES + ENCLAVE_RESERVED_BYTES,
        "buckets": settings.buckets,
    }


def input_digests(settings: PartySettings) -> dict[str, InputDigest]:
    """SHA-256 and size of the run's input table and policy."""
    return {"input": digest_file(settings.input), "policy": digest_file(settings.policy)}


def check_memory_limit(settings: PartySettings, rows: int) -> None:
    """Refuse a memory limit the outputs alone would exceed (before contacting any peer)."""
    limit = settings.memory_limit
    if limit is None:
        return
    need = output_bytes(settings, rows) + HOST_RESERVED_BYTES
    if need > limit:
        raise ConfigurationError(
            f"--memory-limit {limit / (1 << 20):.0f} MiB is too small: writing this party's "
            f"outputs for ~{rows:,} rows needs about {need / (1 << 20):.0f} MiB"
            + (" (drop --include-ids, or raise the limit)" if settings.include_ids else "")
        )
