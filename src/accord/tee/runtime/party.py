"""One party's alignment run: init → attest → exchange → intersect → report.

:func:`run_party` (or :func:`align_party` outside asyncio) starts this party's enclave
process and checks its own input before any network: the files, the key columns and their
types, and — in memory — every ID, streamed into the enclave, which refuses empty,
undecodable and (under the ``error`` policy) duplicated IDs before the session exists.
Only then does it listen and dial (:mod:`accord.tee.runtime.transport`); it relays the attested
handshake, relays sealed records both ways until the enclaves have intersected and
confirmed, then writes the outputs. A bucketed run checks the files, columns and types up
front; its IDs are checked while they are spilled, after the peers agreed the bucket count
(reading a larger-than-memory input twice to check it first would double its cost).

What each output reveals, and to whom
-------------------------------------
* **Row map** (``--output-map``): for each shared position ``j``, this party's own local row
  index (and, with ``--include-ids``, its own ID). It tells this host which of *its own* rows
  are shared with every other party, and nothing else: the positions follow a keyed
  pseudo-random order agreed inside the enclaves, unrelated to any party's row order.
  Every party's row map has the same length and lines up position by position.
* **Aligned table** (``--output-table``): this party's own rows, every column, in the shared
  order — the same information as the row map.
* **Summary** (returned, printed by the CLI, ``--summary``): ``|own set|`` (distinct usable
  IDs), ``|I|``, problems found in the own input, the attested identities of the peers'
  enclaves, and each peer's set size — unless that peer padded its digest stream
  (``pad_to``), in which case it is ``None``. Without padding the sizes are revealed anyway:
  the relayed ciphertext is 16 bytes per distinct ID.
* **To the peers' hosts**: only ciphertext, the cleartext hello (party name, session name,
  party count) and the handshake (nonces, public keys, quotes naming this enclave's
  measurement and platform key). Nothing about this party's IDs.
* **To the peers' enclaves**: this party's keyed digests (hence which of the peer's own IDs
  are shared, i.e. the intersection) and its set size. Never the digest key's input IDs that
  do not match.

Failures are fail-closed: any error stops the run, every peer gets one opaque ``ABORT``
word, the enclave is killed, and no output file is written (outputs are staged next to
their destination and renamed into place only when all of them are complete).

Inputs larger than memory
-------------------------
With ``memory_limit`` or ``buckets`` (on every party) the enclaves agree a bucket count;
when it is more than one, or set by hand, the run is bucketed (:mod:`accord.tee.core.bucketed`,
driven by :mod:`accord.tee.runtime.bucketed_host`): the input is spilled to sealed bucket files in
``run_dir``, buckets are sorted, exchanged and intersected one at a time, and the progress
is recorded so that ``resume`` continues after a crash. The outputs are the same as in
memory. What a host additionally sees: how many of its own rows fell into each bucket and
the size of each bucket's messages (counts of a keyed pseudo-random split). The run
directory is removed once the outputs are written; after a failure it is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accord._validation import require_int, require_number
from accord.errors import (
    AccordError,
    ConfigurationError,
    InputDataError,
    PeerError,
    ProtocolError,
)
from accord.tee.core.attestation import parse_policy
from accord.tee.core.channel import validate_party_name
from accord.tee.core.wire import SESSION_ALREADY_FAILED, Call, PeerFrame, encode_columns
from accord.tee.runtime.host import EnclaveProcess
from accord.tee.runtime.progress import ProgressEvent, ProgressTracker
from accord.tee.runtime.runstate import RunDirectory, RunManifest
from accord.tee.runtime.transport import Endpoint, Hello, PeerLink, abort_category, connect_links

__all__ = [
    "DUPLICATE_POLICIES",
    "PartySettings",
    "PartySummary",
    "Progress",
    "ProgressEvents",
    "align_party",
    "run_party",
]

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

#: Called with a stage name and, for ``load`` and ``write``, the rows done so far.
Progress = Callable[[str, int | None], None]
#: Called with the stages of a bucketed run (per bucket, with an estimate of time left).
ProgressEvents = Callable[[ProgressEvent], None]

DUPLICATE_POLICIES = ("error", "first", "drop-all")

_READ_AHEAD_BATCHES = 4


@dataclass(frozen=True)
class PartySettings:
    """Everything one party's run needs; the ``accord align`` flags map onto it one to one."""

    #: The party's table (CSV/TSV, optionally compressed, or Parquet).
    input: Path
    #: Key column(s); a key of several columns is joined unambiguously.
    key_columns: tuple[str, ...]
    #: Attestation policy (TOML) the peers' enclaves must satisfy.
    policy: Path
    #: This party's name, unique in the session.
    party_name: str
    #: Address to accept peers on (``None``: dial only).
    listen: Endpoint | None = None
    #: Peers to dial.
    peers: tuple[Endpoint, ...] = ()
    #: Number of parties in the session (this one included).
    parties: int = 2
    #: Session name; every party must use the same.
    session: str = "accord-align"
    #: Row map output (position, row [, key columns]); ``None``: not written.
    output_map: Path | None = None
    #: Aligned table output (own rows in the shared order); ``None``: not written.
    output_table: Path | None = None
    #: Also write the ID column(s) into the row map.
    include_ids: bool = False
    #: What to do with an ID on several rows: ``error``, ``first`` or ``drop-all``.
    duplicates: str = "error"
    #: Drop (and count) empty and undecodable IDs instead of refusing the input.
    skip_invalid: bool = False
    #: Pad this party's digest stream to this many IDs, hiding its set size (``None``: no).
    pad_to: int | None = None
    #: Where to write the summary JSON (``None``: only returned).
    summary: Path | None = None
    #: The simulated platform key (``None``: the default path).
    platform_key: Path | None = None
    #: Run the enclave in debug mode (peers refuse it unless their policy allows debug).
    debug_enclave: bool = False
    #: Seconds to reach every peer.
    connect_timeout: float = 60.0
    #: Seconds a peer may stay silent during the run.
    idle_timeout: float = 300.0
    #: Memory budget of this party, host and enclave together (bytes). The run is bucketed
    #: when the agreed plan needs more than one bucket (``None``: no limit).
    memory_limit: int | None = None
    #: Bucket count set by hand (the parties use the largest asked for); ``None``: planned.
    buckets: int | None = None
    #: Directory of a bucketed run's sealed files and manifest (``None``: next to the first
    #: output, ``accord-run-<session>-<party>``).
    run_dir: Path | None = None

    def __post_init__(self) -> None:
        validate_party_name(self.party_name, "party_name")
        validate_party_name(self.session, "session")
        require_int("parties", self.parties, minimum=2)
        if not self.key_columns:
            raise ConfigurationError("key_columns: expected at least one key column")
        if len(set(self.key_columns)) != len(self.key_columns):
            raise ConfigurationError(f"key_columns: a column is named twice in {self.key_columns}")
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ConfigurationError(
                f"duplicates: expected one of {', '.join(DUPLICATE_POLICIES)}; "
                f"got {self.duplicates!r}"
            )
        if self.listen is None and not self.peers:
            raise ConfigurationError("give --listen, --peer, or both: a party needs its peers")
        if len(self.peers) > self.parties - 1:
            raise ConfigurationError(
                f"peers: {len(self.peers)} given, but {self.parties} parties have "
                f"{self.parties - 1} peers"
            )
        if self.listen is None and len(self.peers) < self.parties - 1:
            raise ConfigurationError(
                f"peers: {self.parties} parties need {self.parties - 1} peer links; give "
                "--listen or more --peer"
            )
        if self.pad_to is not None:
            require_int("pad_to", self.pad_to, minimum=1)
        require_number("connect_timeout", self.connect_timeout, minimum=0, exclusive_minimum=True)
        require_number("idle_timeout", self.idle_timeout, minimum=0, exclusive_minimum=True)
        outputs = [p for p in (self.output_map, self.output_table, self.summary) if p is not None]
        resolved = [p.resolve() for p in outputs]
        if len(set(resolved)) != len(resolved):
            raise ConfigurationError("outputs: two outputs name the same file")
        if self.input.resolve() in resolved:
            raise ConfigurationError(
                f"outputs: {self.input} is the input; refusing to overwrite it"
            )
        if self.include_ids and self.output_map is None:
            raise ConfigurationError("include_ids needs an output_map to write the IDs into")
        if self.memory_limit is not None:
            require_int("memory_limit", self.memory_limit, minimum=1 << 20)
        if self.buckets is not None:
            # Here only: the host of an in-memory run never loads the alignment core.
            from accord.alignment.buckets import MAX_BUCKETS

            require_int("buckets", self.buckets, minimum=1)
            if self.buckets > MAX_BUCKETS:
                raise ConfigurationError(
                    f"buckets: expected 1 to {MAX_BUCKETS}, got {self.buckets}"
                )
        if self.bucketed and self.pad_to is not None:
            raise ConfigurationError(
                "pad_to: cannot hide the set size in a bucketed run (each bucket's size shows); "
                "drop --pad-to or --memory-limit/--buckets"
            )

    @property
    def bucketed(self) -> bool:
        """Whether this party asks for (and accepts) a bucketed run."""
        return self.memory_limit is not None or self.buckets is not None


@dataclass(frozen=True)
class PartySummary:
    """What this party learned (see the module docstring for who learns what)."""

    party: str
    session: str
    #: Every party's name, sorted.
    parties: tuple[str, ...]
    #: Data rows in the input.
    input_rows: int
    #: Distinct usable IDs of this party (after the duplicate policy).
    own_ids: int
    #: Each peer's number of distinct IDs, ``None`` when that peer hid it.
    peer_ids: dict[str, int | None]
    #: Size of the intersection of every party's IDs.
    intersection: int
    #: Empty, undecodable and duplicate IDs found in this party's input; ``dropped_rows``
    #: counts every row left out (skipped invalid IDs and the duplicate policy's drops).
    input_report: dict[str, Any]
    #: This party's enclave identity, and each peer's as verified.
    enclave: dict[str, Any]
    peer_enclaves: dict[str, dict[str, Any]]
    #: Output files written.
    outputs: dict[str, str]
    #: Wall seconds per stage.
    seconds: dict[str, float] = field(default_factory=dict)
    #: Buckets of a bucketed run (``None``: in memory).
    buckets: int | None = None
    #: The bucket a resumed run continued from (``None``: not resumed).
    resumed_from_bucket: int | None = None
    #: Peak bytes of the run directory (bucketed runs).
    disk_peak_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def _read_policy(path: Path) -> str:
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


def _check_paths(settings: PartySettings) -> None:
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


def _estimate_rows(path: Path) -> int | None:
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


def _first_error(error: BaseException) -> BaseException:
    """The most telling error inside an exception group (local errors before peer errors)."""
    if not isinstance(error, BaseExceptionGroup):
        return error
    leaves: list[BaseException] = []

    def collect(group: BaseExceptionGroup[BaseException]) -> None:
        for item in group.exceptions:
            if isinstance(item, BaseExceptionGroup):
                collect(item)
            else:
                leaves.append(item)

    collect(error)
    preferences: tuple[Callable[[BaseException], bool], ...] = (
        # A concurrent call refused by the already-failed enclave only echoes the real error.
        lambda e: (
            isinstance(e, AccordError)
            and not isinstance(e, PeerError)
            and not str(e).startswith(SESSION_ALREADY_FAILED)
        ),
        lambda e: isinstance(e, AccordError) and not isinstance(e, PeerError),
        lambda e: isinstance(e, AccordError),
        lambda e: not isinstance(e, asyncio.CancelledError),
    )
    for wanted in preferences:
        for leaf in leaves:
            if wanted(leaf):
                return leaf
    return leaves[0] if leaves else error


def _plain_batches(path: Path, columns: Sequence[str], batches: Iterator[Any]) -> Iterator[Any]:
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


class _KeyReader:
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
    ) -> None:
        from accord.tables import iter_key_batches

        self._iterator: Iterator[Any] = _plain_batches(
            path, columns, iter_key_batches(path, columns, mapped=mapped)
        )
        # A few batches of read-ahead (each ~13 MB at 32-byte IDs) bound the host's memory.
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=read_ahead)
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

    def __aiter__(self) -> _KeyReader:
        return self

    async def __anext__(self) -> Any:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class _Run:
    """The state of one run: the enclave, the links and the enclave's last status."""

    def __init__(
        self,
        settings: PartySettings,
        enclave: EnclaveProcess,
        links: Sequence[PeerLink],
        keys: _KeyReader,
        progress: Progress,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.enclave = enclave
        self.links = list(links)
        self.progress = progress
        self.status: dict[str, Any] = {"outbound": [], "done": False}
        self._changed = asyncio.Event()
        self.peer_enclaves: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, float] = {}
        #: The input report and the kept ID batches once :meth:`load` is done.
        self.loaded: tuple[dict[str, Any], list[Any]] | None = None

    async def call(
        self, call: Call, meta: dict[str, Any] | None = None, body: Sequence[Any] = ()
    ) -> tuple[dict[str, Any], bytearray]:
        try:
            reply, reply_body = await self.enclave.call(call, meta, body)
        except InputDataError as error:
            raise InputDataError(f"{self.settings.input}: {error}", detail=error.detail) from error
        status = reply.get("status")
        if isinstance(status, dict):
            self.status = status
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        return reply, reply_body

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        while not predicate(self.status):
            await self._changed.wait()

    async def handshake(self, slot: int, link: PeerLink) -> None:
        async def expect_handshake() -> bytes | bytearray:
            kind, body = await link.receive()
            if kind is not PeerFrame.HANDSHAKE:
                raise ProtocolError(f"peer {link.name!r} sent {kind.name} during the handshake")
            return body

        reply = await self._handshake_steps(slot, link, expect_handshake)
        if reply.get("peer") != link.name:
            raise ProtocolError(
                f"the host at {link.address} announced party {link.name!r}, but its enclave "
                f"attests party {reply.get('peer')!r}"
            )
        self.peer_enclaves[link.name] = dict(reply["peer_identity"])
        logger.info("attested channel to %r open", link.name)

    async def _handshake_steps(
        self,
        slot: int,
        link: PeerLink,
        expect_handshake: Callable[[], Awaitable[bytes | bytearray]],
    ) -> dict[str, Any]:
        if link.initiator:
            _, hello = await self.call(Call.HANDSHAKE, {"link": slot, "step": "hello"})
            await link.send(PeerFrame.HANDSHAKE, hello)
            reply, finish = await self.call(
                Call.HANDSHAKE, {"link": slot, "step": "finish"}, [await expect_handshake()]
            )
            await link.send(PeerFrame.HANDSHAKE, finish)
        else:
            _, response = await self.call(
                Call.HANDSHAKE, {"link": slot, "step": "respond"}, [await expect_handshake()]
            )
            await link.send(PeerFrame.HANDSHAKE, response)
            reply, _ = await self.call(
                Call.HANDSHAKE, {"link": slot, "step": "complete"}, [await expect_handshake()]
            )
        return reply

    async def send_loop(self, slot: int, link: PeerLink) -> None:
        while True:
            await self.wait_for(lambda status: slot in status["outbound"])
            reply, batch = await self.call(Call.SEAL, {"link": slot})
            if batch:
                await link.send(PeerFrame.RECORDS, batch)
            if reply.get("closed"):
                return

    async def receive_loop(self, slot: int, link: PeerLink) -> None:
        while True:
            kind, body = await link.receive()
            if kind is not PeerFrame.RECORDS:
                raise ProtocolError(f"peer {link.name!r} sent {kind.name} after the handshake")
            reply, _ = await self.call(Call.UNSEAL, {"link": slot}, [body])
            if reply.get("ended"):
                return

    def _timed(self, stage: str, start: float) -> None:
        self.seconds[stage] = round(time.perf_counter() - start, 4)

    async def load(self, keep_ids: bool) -> None:
        """Stream this party's IDs into the enclave (``LOAD_IDS``, ``LOAD_DONE``).

        In memory this runs before any peer is contacted: the enclave refuses empty,
        undecodable and (under the ``error`` policy) duplicated IDs at ``LOAD_DONE``.
        """
        start = time.perf_counter()
        self.progress("load", 0)
        kept: list[Any] = []
        rows = 0
        async for batch in self.keys:
            meta, buffers = encode_columns(list(batch.columns))
            await self.call(Call.LOAD_IDS, meta, buffers)
            rows += batch.num_rows
            if keep_ids:
                kept.append(batch)
            self.progress("load", rows)
        self._timed("read_ids", start)
        start = time.perf_counter()
        reply, _ = await self.call(Call.LOAD_DONE)
        self._timed("check_ids", start)
        self.loaded = (dict(reply["ids"]), kept)

    async def exchange(
        self, keep_ids: bool
    ) -> tuple[dict[str, Any], dict[str, Any], np.ndarray, Any]:
        """Load the IDs (unless loaded), relay until the enclaves agree; return
        (report, counts, row map, ids)."""
        if self.loaded is None:
            await self.load(keep_ids)
        assert self.loaded is not None
        report, kept = self.loaded
        start = time.perf_counter()
        self.progress("exchange", None)
        await self.wait_for(lambda status: bool(status["digests_received"]))
        self._timed("digest_exchange", start)
        start = time.perf_counter()
        self.progress("intersect", None)
        reply, _ = await self.call(Call.INTERSECT)
        counts = dict(reply["counts"])
        await self.wait_for(lambda status: bool(status["done"]))
        reply, body = await self.call(Call.RESULT)
        import numpy

        row_map = numpy.frombuffer(body, dtype=numpy.int64)
        if len(row_map) != counts["intersection_size"]:
            raise ProtocolError("the enclave's row map does not match its counts")
        self._timed("intersect_confirm", start)
        ids = None
        if keep_ids:
            import pyarrow as pa

            ids = pa.Table.from_batches(kept)
        return report, counts, row_map, ids


def _larger_than_memory(settings: PartySettings) -> bool:
    if not settings.bucketed:
        return False
    from accord.tee.runtime.bucketed_host import larger_than_memory

    return larger_than_memory(settings)


def _staging_path(final: Path) -> Path:
    return final.parent / f".accord-{secrets.token_hex(6)}-{final.name}"


def _write_outputs(
    settings: PartySettings,
    row_map: np.ndarray,
    source_rows: int,
    ids: Any,
    summary_of: Callable[[dict[str, str]], PartySummary],
    progress: Progress,
) -> PartySummary:
    """Write every output next to its destination, then rename them all into place."""
    from accord.tables import write_aligned_table, write_row_map

    outputs: dict[str, str] = {}
    staged: list[tuple[Path, Path]] = []
    try:
        if settings.output_map is not None:
            temporary = _staging_path(settings.output_map)
            staged.append((temporary, settings.output_map))
            write_row_map(temporary, row_map, ids=ids, source_rows=source_rows)
            outputs["row_map"] = str(settings.output_map)
        if settings.output_table is not None:
            temporary = _staging_path(settings.output_table)
            staged.append((temporary, settings.output_table))
            progress("write", 0)
            write_aligned_table(
                temporary,
                settings.input,
                row_map,
                source_rows=source_rows,
                progress=lambda rows: progress("write", rows),
                bounded=_larger_than_memory(settings),
            )
            outputs["aligned_table"] = str(settings.output_table)
        if settings.summary is not None:
            outputs["summary"] = str(settings.summary)
        summary = summary_of(outputs)
        if settings.summary is not None:
            temporary = _staging_path(settings.summary)
            staged.append((temporary, settings.summary))
            temporary.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
        for temporary, final in staged:
            os.replace(temporary, final)
        return summary
    except OSError as error:
        raise ConfigurationError(f"cannot write the outputs: {error}") from error
    finally:
        for temporary, _ in staged:
            with contextlib.suppress(OSError):
                temporary.unlink()


@dataclass
class _Bucketing:
    """A party's bucketed run on the host: run directory, manifest, estimates, progress."""

    directory: RunDirectory
    manifest: RunManifest
    rows: int
    resumed: bool
    tracker: ProgressTracker
    #: The input digests being computed (a new run), ``None`` once recorded.
    inputs: asyncio.Future[Any] | None = None
    outcome: Any = None

    def close(self, *, remove: bool) -> None:
        self.directory.close()
        if remove:
            shutil.rmtree(self.directory.path, ignore_errors=True)


#: Shares of a bucketed run's time per stage, for the first estimates of time left.
_BUCKETED_PLAN = (("spill", 0.4), ("sort", 0.2), ("exchange", 0.25), ("confirm", 0.05))


async def _prepare_bucketing(
    settings: PartySettings,
    resume: tuple[RunDirectory, RunManifest] | None,
    events: ProgressEvents | None,
) -> _Bucketing:
    """Check a resumed run's inputs, or create a new run's directory; plan the run."""
    from accord.tee.runtime import bucketed_host

    if resume is not None:
        directory, manifest = resume
        current = await asyncio.to_thread(bucketed_host.input_digests, settings)
        manifest.check_inputs(current)
        manifest.notes["resumes"] = int(manifest.notes.get("resumes", 0)) + 1
        inputs = None
    else:
        directory = RunDirectory.create(settings.run_dir or bucketed_host.default_run_dir(settings))
        manifest = RunManifest(
            party=settings.party_name,
            session=settings.session,
            settings=bucketed_host.settings_to_json(settings),
            inputs={},
        )
        # Hashing a large input takes seconds: it runs while the session starts.
        inputs = asyncio.ensure_future(asyncio.to_thread(bucketed_host.input_digests, settings))
    try:
        rows = await asyncio.to_thread(bucketed_host.estimate_rows, settings.input)
        bucketed_host.check_memory_limit(settings, rows)
    except BaseException:
        if inputs is not None:
            inputs.cancel()
        directory.close()
        if resume is None:
            shutil.rmtree(directory.path, ignore_errors=True)
        raise
    tracker = ProgressTracker(events or (lambda event: None), plan=_BUCKETED_PLAN)
    return _Bucketing(directory, manifest, rows, resume is not None, tracker, inputs)


def _with_resume_hint(error: BaseException, bucketing: _Bucketing | None) -> BaseException:
    """The error, telling how to continue when the run directory holds a resumable state."""
    if (
        bucketing is None
        or bucketing.manifest.sealed_state is None
        or not isinstance(error, AccordError)
    ):
        return error
    path = bucketing.directory.path
    hint = type(error)(
        f"{error} (progress is kept: continue with `accord align --resume {path}` on this "
        "party and --resume on every other party)",
        detail=error.detail,
    )
    return hint


async def run_party(
    settings: PartySettings,
    *,
    enclave: EnclaveProcess | None = None,
    progress: Progress | None = None,
    on_listening: Callable[[Endpoint], None] | None = None,
    resume: tuple[RunDirectory, RunManifest] | None = None,
    events: ProgressEvents | None = None,
) -> PartySummary:
    """Run one party's side of an alignment session; see the module docstring.

    ``enclave`` is an enclave process already spawned for this run (the CLI spawns it first
    thing, so it loads while the host starts); by default one is spawned here. Either way it
    is stopped when the run ends. ``resume``: the run directory and manifest of a bucketed
    run to continue (its inputs must be unchanged). ``events``: progress of a bucketed run.
    """
    report_progress: Progress = progress or (lambda stage, rows: None)
    started = time.perf_counter()
    if enclave is None:
        enclave = EnclaveProcess.spawn(
            platform_key=settings.platform_key, debug=settings.debug_enclave
        )
    keys: _KeyReader | None = None
    links: list[PeerLink] = []
    link_start: asyncio.Future[list[PeerLink]] | None = None
    enclave_ready = asyncio.ensure_future(enclave.ready())
    bucketing: _Bucketing | None = None
    try:
        if resume is not None and not settings.bucketed:
            raise ConfigurationError("resume: the run directory is not of a bucketed run")
        # Everything about this party's own input is checked before any network: the files,
        # the key columns and their types, and (in memory) every ID: empty, undecodable and
        # duplicated IDs are refused before the listening socket opens or a peer is dialled.
        policy_text = _read_policy(settings.policy)
        _check_paths(settings)
        if settings.bucketed:
            bucketing = await _prepare_bucketing(settings, resume, events)
        # A resumed run whose peers all confirmed before the stop (stage "done"): the enclave
        # releases the sealed result without them (they may have removed their run
        # directories), so no key is read and no peer is contacted.
        done_before = (
            bucketing is not None and bucketing.resumed and bucketing.manifest.stage == "done"
        )
        # A memory-limited run reads less ahead (its spill is bound by disk, not the read).
        keys = _KeyReader(
            settings.input,
            settings.key_columns,
            1 if settings.bucketed else 4,
            mapped=not _larger_than_memory(settings),
        )
        if not done_before:
            await keys.start()  # a missing column, a refused type or an empty file fail here
        run = _Run(settings, enclave, [], keys, report_progress)
        await enclave_ready
        await _init(run, policy_text, bucketing)
        if not settings.bucketed:
            await run.load(keep_ids=settings.include_ids)
        if not done_before:
            # Listen and dial only now: a party that dials every peer needs no listener.
            report_progress("connect", None)
            connecting = time.perf_counter()
            link_start = asyncio.ensure_future(
                connect_links(
                    Hello(settings.party_name, settings.session, settings.parties),
                    listen=settings.listen,
                    peers=settings.peers,
                    connect_timeout=settings.connect_timeout,
                    idle_timeout=settings.idle_timeout,
                    on_listening=on_listening,
                )
            )
            links = await link_start
            run.links = links
            run.seconds["connect"] = round(time.perf_counter() - connecting, 4)
        result = await _drive(run, bucketing)
        keys.cancel()  # a resumed run past its spill reads no keys
    except BaseException as error:
        if keys is not None:
            keys.cancel()
        enclave_ready.cancel()
        if enclave_ready.done() and not enclave_ready.cancelled():
            enclave_ready.exception()  # reported through `error` if it matters
        await _cleanup(enclave, link_start, links, error)
        if bucketing is not None:
            if bucketing.inputs is not None:
                bucketing.inputs.cancel()
            # Nothing to resume before the first checkpoint: no directory is left behind.
            bucketing.close(
                remove=not bucketing.resumed and bucketing.manifest.sealed_state is None
            )
        leaf = _with_resume_hint(_first_error(error), bucketing)
        if leaf is error:
            raise
        raise leaf from None
    report, counts, row_map, ids = result
    start = time.perf_counter()
    outcome = None if bucketing is None else bucketing.outcome
    if outcome is not None:
        from accord.tee.core.allocator import release_memory

        release_memory()  # what the spill and relaying held: the outputs need their own
    if outcome is not None and settings.include_ids:
        from accord.tables import read_key_columns

        # A bucketed run keeps no IDs on the host: read the key columns again for the map.
        ids = await asyncio.to_thread(
            functools.partial(
                read_key_columns,
                settings.input,
                settings.key_columns,
                mapped=not _larger_than_memory(settings),
            )
        )

    def summary_of(outputs: dict[str, str]) -> PartySummary:
        duplicates = counts.get("duplicates", {})
        return PartySummary(
            party=settings.party_name,
            session=settings.session,
            parties=tuple(
                sorted(
                    [settings.party_name, *(link.name for link in links)]
                    if links
                    else [settings.party_name, *counts["peer_sizes"]]
                )
            ),
            input_rows=int(report["rows"]),
            own_ids=int(counts["own_size"]),
            peer_ids=dict(counts["peer_sizes"]),
            intersection=int(counts["intersection_size"]),
            input_report={
                "empty_rows": report["empty_rows"],
                "empty_examples": list(report["empty_examples"]),
                "undecodable_rows": report["undecodable_rows"],
                "undecodable_examples": list(report["undecodable_examples"]),
                "duplicate_policy": duplicates.get("policy"),
                "duplicated_ids": duplicates.get("duplicated_ids"),
                "duplicate_rows": duplicates.get("duplicate_rows"),
                # Every row left out: empty and undecodable IDs (--skip-invalid) and the
                # duplicate policy's drops.
                "dropped_rows": int(report["empty_rows"])
                + int(report["undecodable_rows"])
                + int(duplicates.get("dropped_rows") or 0),
            },
            enclave=asdict(enclave.identity),
            peer_enclaves=dict(run.peer_enclaves),
            outputs=outputs,
            seconds={
                **run.seconds,
                "write": round(time.perf_counter() - start, 4),
                "total": round(time.perf_counter() - started, 4),
            },
            buckets=None if outcome is None else outcome.buckets,
            resumed_from_bucket=None if outcome is None else outcome.resumed_from_bucket,
            disk_peak_bytes=None if outcome is None else outcome.disk_peak_bytes,
        )

    # The enclave and the links have done their part: release them (and the enclave's
    # memory) before the outputs are written.
    await asyncio.gather(enclave.close(), *(link.close() for link in links))
    try:
        summary = await asyncio.to_thread(
            _write_outputs, settings, row_map, int(report["rows"]), ids, summary_of, report_progress
        )
    except BaseException as error:
        if bucketing is not None:
            bucketing.close(remove=False)  # stage "done": a resume needs no peer
        raise _with_resume_hint(error, bucketing) from error
    if bucketing is not None:
        bucketing.close(remove=True)  # the run is complete: its sealed files are not needed
    report_progress("done", None)
    return summary


async def _init(run: _Run, policy_text: str, bucketing: _Bucketing | None) -> None:
    """``INIT``: the session's parameters (and a resumed run's sealed state)."""
    settings = run.settings
    body: list[bytes] = []
    bucket_proposal = None
    if bucketing is not None:
        from accord.tee.runtime.bucketed_host import proposal

        bucket_proposal = proposal(settings, bucketing.rows)
        sealed = bucketing.manifest.sealed_bytes()
        if bucketing.resumed:
            if sealed is None:
                raise ConfigurationError(
                    f"--resume {bucketing.directory.path}: the run stopped before it had "
                    "anything to resume; start it anew"
                )
            body.append(sealed)
    await run.call(
        Call.INIT,
        {
            "party_name": settings.party_name,
            "session": settings.session,
            "parties": settings.parties,
            "policy": policy_text,
            "policy_source": str(settings.policy),
            "key_columns": list(settings.key_columns),
            "duplicates": settings.duplicates,
            "skip_invalid": settings.skip_invalid,
            "pad_to": settings.pad_to,
            "rows_hint": _estimate_rows(settings.input),
            "bucketed": bucket_proposal,
            "resume": bool(bucketing is not None and bucketing.resumed),
        },
        body,
    )


async def _drive(run: _Run, bucketing: _Bucketing | None) -> tuple[Any, Any, np.ndarray, Any]:
    settings = run.settings
    run.progress("attest", None)
    start = time.perf_counter()
    await asyncio.gather(*(run.handshake(slot, link) for slot, link in enumerate(run.links)))
    run.seconds["attest"] = round(time.perf_counter() - start, 4)
    async with asyncio.TaskGroup() as group:
        for slot, link in enumerate(run.links):
            group.create_task(run.send_loop(slot, link))
            group.create_task(run.receive_loop(slot, link))
        if bucketing is None:
            result = await run.exchange(keep_ids=settings.include_ids)
        else:
            # The run mode is agreed inside the enclaves once every roster is in.
            await run.wait_for(lambda status: bool(status.get("keys_ready")))
            if run.status.get("mode") == "memory":
                result = await run.exchange(keep_ids=settings.include_ids)
            else:
                result = await _drive_buckets(run, bucketing)
    return result


async def _drive_buckets(run: _Run, bucketing: _Bucketing) -> tuple[Any, Any, np.ndarray, Any]:
    from accord.tee.runtime.bucketed_host import drive_buckets

    outcome = await drive_buckets(
        run,
        bucketing.directory,
        bucketing.manifest,
        bucketing.tracker,
        bucketing.rows,
        bucketing.inputs,
    )
    bucketing.inputs = None
    bucketing.outcome = outcome
    bucketing.tracker.finish()
    return outcome.report, outcome.counts, outcome.row_map, None


async def _cleanup(
    enclave: EnclaveProcess,
    link_start: asyncio.Future[list[PeerLink]] | None,
    links: list[PeerLink],
    error: BaseException,
) -> None:
    """After a failure: one opaque word to every peer, kill the enclave, close everything."""
    category = abort_category(_first_error(error))
    if link_start is not None:
        link_start.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(link_start, return_exceptions=True)
        if not links and _succeeded(link_start):
            links = link_start.result()
    waits: list[Awaitable[Any]] = [link.abort(category) for link in links]
    waits.append(enclave.kill())
    with contextlib.suppress(BaseException):
        await asyncio.gather(*waits, return_exceptions=True)


def _succeeded(task: asyncio.Future[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def align_party(
    settings: PartySettings,
    *,
    enclave: EnclaveProcess | None = None,
    progress: Progress | None = None,
    on_listening: Callable[[Endpoint], None] | None = None,
    resume: tuple[RunDirectory, RunManifest] | None = None,
    events: ProgressEvents | None = None,
) -> PartySummary:
    """:func:`run_party` in a fresh event loop."""
    return asyncio.run(
        run_party(
            settings,
            enclave=enclave,
            progress=progress,
            on_listening=on_listening,
            resume=resume,
            events=events,
        )
    )
