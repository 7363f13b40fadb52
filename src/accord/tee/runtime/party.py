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
  IDs), ``|I|``, the alignment's ``fingerprint`` (the hash every enclave confirmed; equal on
  every party of one alignment, a hash of keyed digests that reveals no ID), problems
  found in the own input, the attested identities of the peers' enclaves, and each peer's
  set size — unless that peer padded its digest stream (``pad_to``), in which case it is
  ``None``. Without padding the sizes are revealed anyway:
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
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from accord.errors import (
    AccordError,
    ConfigurationError,
    PeerError,
)
from accord.rate_limits import RateLimitSettings
from accord.tee.core.wire import SESSION_ALREADY_FAILED, Call
from accord.tee.runtime import bucketed_host
from accord.tee.runtime.bucketed_host import BucketOutcome, larger_than_memory
from accord.tee.runtime.host import EnclaveHandle, EnclaveProcess
from accord.tee.runtime.inputs import (
    KEY_BLOCK_BYTES,
    KeyReader,
    check_paths,
    estimate_rows,
    read_policy,
)
from accord.tee.runtime.links import PeerLink
from accord.tee.runtime.outputs import write_outputs
from accord.tee.runtime.progress import ProgressTracker
from accord.tee.runtime.relay import Exchanged, PartyRun
from accord.tee.runtime.runstate import InputDigest, RunDirectory, RunManifest
from accord.tee.runtime.settings import (
    DUPLICATE_POLICIES,
    PartySettings,
    PartySummary,
    Progress,
    ProgressEvents,
)
from accord.tee.runtime.transport import Endpoint, Hello, abort_category, connect_links

__all__ = [
    "DUPLICATE_POLICIES",
    "Connect",
    "PartySettings",
    "PartySummary",
    "Progress",
    "ProgressEvents",
    "align_party",
    "run_party",
]

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

#: Opens this party's links to every peer (called once its own input is checked).
Connect = Callable[[], Awaitable[Sequence[PeerLink]]]


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


@dataclass
class _Bucketing:
    """A party's bucketed run on the host: run directory, manifest, estimates, progress."""

    directory: RunDirectory
    manifest: RunManifest
    rows: int
    resumed: bool
    tracker: ProgressTracker
    #: The input digests being computed (a new run), ``None`` once recorded.
    inputs: asyncio.Future[dict[str, InputDigest]] | None = None
    outcome: BucketOutcome | None = None

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
    enclave: EnclaveHandle | None = None,
    progress: Progress | None = None,
    on_listening: Callable[[Endpoint], None] | None = None,
    resume: tuple[RunDirectory, RunManifest] | None = None,
    events: ProgressEvents | None = None,
    connect: Connect | None = None,
) -> PartySummary:
    """Run one party's side of an alignment session; see the module docstring.

    ``enclave`` is an enclave process already spawned for this run (the CLI spawns it first
    thing, so it loads while the host starts); by default one is spawned here. Either way it
    is stopped when the run ends (a test may pass an
    :class:`~accord.tee.runtime.host.InProcessEnclave`). ``connect`` opens the links to the
    peers once this party's own input is checked (by default: TCP, listening on
    ``settings.listen`` and dialling ``settings.peers``; a test may return in-memory links,
    :func:`~accord.tee.runtime.links.memory_link_pair`). ``resume``: the run directory and
    manifest of a bucketed run to continue (its inputs must be unchanged). ``events``:
    progress of a bucketed run.
    """
    report_progress: Progress = progress or (lambda stage, rows: None)
    started = time.perf_counter()
    if enclave is None:
        enclave = EnclaveProcess.spawn(
            platform_key=settings.platform_key, debug=settings.debug_enclave
        )
    opened = _Opened(enclave, asyncio.ensure_future(enclave.ready()))
    try:
        run, result = await _align(
            settings, opened, report_progress, resume, events, connect, on_listening
        )
    except BaseException as error:
        leaf = await opened.abandon(error)
        if leaf is error:
            raise
        raise leaf from None
    return await _write(settings, run, opened, result, started, report_progress)


@dataclass
class _Opened:
    """What a party's run has opened so far: what a failed run must close."""

    enclave: EnclaveHandle
    enclave_ready: asyncio.Future[Any]
    keys: KeyReader | None = None
    links: list[PeerLink] = field(default_factory=list)
    link_start: asyncio.Future[Sequence[PeerLink]] | None = None
    bucketing: _Bucketing | None = None

    async def abandon(self, error: BaseException) -> BaseException:
        """Close what was opened, after ``error``; the error to raise (the first one, with
        how to continue when the run directory holds a resumable state)."""
        if self.keys is not None:
            self.keys.cancel()
        self.enclave_ready.cancel()
        if self.enclave_ready.done() and not self.enclave_ready.cancelled():
            self.enclave_ready.exception()  # reported through `error` if it matters
        await _cleanup(self.enclave, self.link_start, self.links, error)
        bucketing = self.bucketing
        if bucketing is not None:
            if bucketing.inputs is not None:
                bucketing.inputs.cancel()
            # Nothing to resume before the first checkpoint: no directory is left behind.
            bucketing.close(
                remove=not bucketing.resumed and bucketing.manifest.sealed_state is None
            )
        return _with_resume_hint(_first_error(error), bucketing)


async def _align(
    settings: PartySettings,
    opened: _Opened,
    report_progress: Progress,
    resume: tuple[RunDirectory, RunManifest] | None,
    events: ProgressEvents | None,
    connect: Connect | None,
    on_listening: Callable[[Endpoint], None] | None,
) -> tuple[PartyRun, Exchanged]:
    """Check this party's input, start its enclave's session, connect to the peers and
    exchange: the run and what the enclave released. Everything it opens is in
    ``opened``."""
    if resume is not None and not settings.bucketed:
        raise ConfigurationError("resume: the run directory is not of a bucketed run")
    # Everything about this party's own input is checked before any network: the files,
    # the key columns and their types, and (in memory) every ID: empty, undecodable and
    # duplicated IDs are refused before the listening socket opens or a peer is dialled.
    policy_text = read_policy(settings.policy)
    check_paths(settings)
    if settings.bucketed:
        opened.bucketing = await _prepare_bucketing(settings, resume, events)
    bucketing = opened.bucketing
    # A resumed run whose peers all confirmed before the stop (stage "done"): the enclave
    # releases the sealed result without them (they may have removed their run
    # directories), so no key is read and no peer is contacted.
    done_before = bucketing is not None and bucketing.resumed and bucketing.manifest.stage == "done"
    # A memory-limited run reads less ahead (its spill is bound by disk, not the read).
    keys = opened.keys = KeyReader(
        settings.input,
        settings.key_columns,
        1 if settings.bucketed else 4,
        mapped=not larger_than_memory(settings),
        block_bytes=KEY_BLOCK_BYTES,
    )
    if not done_before:
        await keys.start()  # a missing column, a refused type or an empty file fail here
    run = PartyRun(settings, opened.enclave, [], keys, report_progress)
    await opened.enclave_ready
    await _init(run, policy_text, bucketing)
    if not settings.bucketed:
        await run.load(keep_ids=settings.include_ids)
    if not done_before:
        # Listen and dial only now: a party that dials every peer needs no listener.
        report_progress("connect", None)
        connecting = time.perf_counter()
        opening = connect() if connect is not None else _open_links(settings, on_listening)
        opened.link_start = asyncio.ensure_future(opening)
        opened.links = list(await opened.link_start)
        run.links = opened.links
        run.seconds["connect"] = round(time.perf_counter() - connecting, 4)
    result = await _drive(run, bucketing)
    keys.cancel()  # a resumed run past its spill reads no keys
    return run, result


async def _write(
    settings: PartySettings,
    run: PartyRun,
    opened: _Opened,
    result: Exchanged,
    started: float,
    report_progress: Progress,
) -> PartySummary:
    """Release the enclave and the links and write this party's outputs; its summary."""
    enclave, links, bucketing = opened.enclave, opened.links, opened.bucketing
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
                mapped=not larger_than_memory(settings),
            )
        )
    summary_of = functools.partial(
        _summary, settings, run, enclave, links, report, counts, outcome, (started, start)
    )
    # The enclave and the links have done their part: release them. A bucketed run waits
    # until the enclave has exited (its memory is then free for the outputs); in memory the
    # enclave exits while the outputs are written (its exit took a 1M-row run ~60 ms).
    releasing = asyncio.gather(enclave.close(), *(link.close() for link in links))
    if settings.bucketed:
        await releasing
    try:
        summary = await asyncio.to_thread(
            write_outputs, settings, row_map, int(report["rows"]), ids, summary_of, report_progress
        )
    except BaseException as error:
        if bucketing is not None:
            bucketing.close(remove=False)  # stage "done": a resume needs no peer
        raise _with_resume_hint(error, bucketing) from error
    finally:
        await releasing
    if bucketing is not None:
        bucketing.close(remove=True)  # the run is complete: its sealed files are not needed
    report_progress("done", None)
    return summary


def _open_links(
    settings: PartySettings, on_listening: Callable[[Endpoint], None] | None
) -> Coroutine[Any, Any, Sequence[PeerLink]]:
    """The TCP links to the peers: listening on ``settings.listen``, dialling
    ``settings.peers``, with the listener's rate limits."""
    return connect_links(
        Hello(settings.party_name, settings.session, settings.parties),
        listen=settings.listen,
        peers=settings.peers,
        connect_timeout=settings.connect_timeout,
        idle_timeout=settings.idle_timeout,
        on_listening=on_listening,
        limits=RateLimitSettings(
            max_pending=8 * settings.max_pending_connections,
            max_pending_per_source=settings.max_pending_connections,
        ),
    )


def _summary(
    settings: PartySettings,
    run: PartyRun,
    enclave: EnclaveHandle,
    links: Sequence[PeerLink],
    report: dict[str, Any],
    counts: dict[str, Any],
    outcome: BucketOutcome | None,
    clocks: tuple[float, float],
    outputs: dict[str, str],
) -> PartySummary:
    """The party's summary once its ``outputs`` are written; ``clocks``: when the run and
    when the writing started (``time.perf_counter``)."""
    started, start = clocks
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
        fingerprint=counts.get("fingerprint"),
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


async def _init(run: PartyRun, policy_text: str, bucketing: _Bucketing | None) -> None:
    """``INIT``: the session's parameters (and a resumed run's sealed state)."""
    settings = run.settings
    body: list[bytes] = []
    bucket_proposal = None
    if bucketing is not None:
        bucket_proposal = bucketed_host.proposal(settings, bucketing.rows)
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
            "rows_hint": estimate_rows(settings.input),
            "bucketed": bucket_proposal,
            "resume": bool(bucketing is not None and bucketing.resumed),
        },
        body,
    )


async def _drive(run: PartyRun, bucketing: _Bucketing | None) -> Exchanged:
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


async def _drive_buckets(run: PartyRun, bucketing: _Bucketing) -> Exchanged:
    outcome = await bucketed_host.drive_buckets(
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
    return Exchanged(outcome.report, outcome.counts, outcome.row_map, None)


async def _cleanup(
    enclave: EnclaveHandle,
    link_start: asyncio.Future[Sequence[PeerLink]] | None,
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
            links = list(link_start.result())
    waits: list[Awaitable[Any]] = [link.abort(category) for link in links]
    waits.append(enclave.kill())
    with contextlib.suppress(BaseException):
        await asyncio.gather(*waits, return_exceptions=True)


def _succeeded(task: asyncio.Future[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def align_party(
    settings: PartySettings,
    *,
    enclave: EnclaveHandle | None = None,
    progress: Progress | None = None,
    on_listening: Callable[[Endpoint], None] | None = None,
    resume: tuple[RunDirectory, RunManifest] | None = None,
    events: ProgressEvents | None = None,
    connect: Connect | None = None,
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
            connect=connect,
        )
    )
