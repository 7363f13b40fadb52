"""The enclave's side of alignment beyond memory: spill, sort, exchange and intersect by bucket.

Pure: no file, socket or clock. :class:`BucketedRun` holds one party's run state inside the
enclave; :mod:`accord.tee.core.session` feeds it the host's calls and the peers' channel
messages, and the host stores the sealed bytes it returns (:mod:`accord.tee.runtime.runstate`).
:func:`agree_run` decides, once every roster is in, whether the run is bucketed at all; the
plan and the sealed state are :mod:`accord.tee.core.bucket_plan`.

Stages (each resumable after a crash, see :class:`RunState`):

1. **spill** — every batch of key columns is normalised, digested under the session's
   digest key, mapped to its shared-order sort key and bucket
   (:mod:`accord.alignment.buckets`), and each bucket's share of the batch is sealed as one
   record of that bucket's spill file (``FileKind.SPILL``). The host appends the records.
   At the end each spill file gets its final record; invalid IDs raise as in memory.
2. **sort** — bucket by bucket: the spill file comes back, is verified, sorted by sort key,
   duplicates are handled, and the bucket is sealed again (``FileKind.SORTED``). The
   ``error`` duplicate policy raises after the last bucket, with the in-memory message.
3. **exchange** — bucket by bucket, in order: the sorted bucket comes back; its sort keys go
   to every peer through the channel (``BUCKET`` messages); when every peer's keys of that
   bucket arrived, the intersection's rows (already in the shared order) are sealed
   (``FileKind.RESULT``) and the per-bucket fingerprint is kept.
4. **confirm** — the run's fingerprint (over every bucket's) and ``|I|`` go to every peer as
   in memory; the row map is released, bucket by bucket, only once every peer confirmed.

All parties hold the same session secret, bucket count and generation-independent keys, so
the bucket of an ID, the shared order and the result are the same for everyone — and equal
to the in-memory path's with the same secret.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from accord.alignment import (
    DIGEST_BYTES,
    DuplicatePolicy,
    keyed_digests,
    prepare_ids,
)
from accord.alignment.buckets import (
    IdTally,
    bucket_fingerprint,
    check_bucket_keys,
    combine_fingerprints,
    duplicate_error,
    intersect_bucket,
    merge_duplicates,
    order_keys,
    sort_bucket,
    split_by_bucket,
)
from accord.errors import ConfigurationError, InputDataError, ProtocolError
from accord.tee.core.bucket_plan import (
    BUCKET_HEADER,
    Proposal,
    RunState,
    agree_run_buckets,
    duplicate_report_dict,
    duplicate_report_from,
    session_keys,
)
from accord.tee.core.loader import SessionConfig
from accord.tee.core.sealing import FileKind, SealedFile, SealedWriter, open_sealed, seal_blob

if TYPE_CHECKING:
    from accord.tee.core.loader import KeyColumn

__all__ = ["BucketedRun", "agree_run"]

_ROW_BYTES = 8
_ENTRY_BYTES = DIGEST_BYTES + _ROW_BYTES
_SORTED_RECORD_BYTES = 8 << 20
_SPILL_SLICE_ROWS = 1 << 18
_STATE_RUN = b"\x00" * 32


class BucketedRun:
    """One party's bucketed run inside the enclave (see the module docstring).

    Created by :meth:`start` (a new run, once the session secret and bucket count are
    agreed) or :meth:`resume` (from the sealed state of an earlier process).
    """

    def __init__(
        self,
        state: RunState,
        sealing_key: bytes,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self.state = state
        self._sealing_key = sealing_key
        self._random_bytes = random_bytes
        secret = bytes.fromhex(state.secret)
        self._digest_key, self._order_seed, self.run_id = session_keys(secret)
        self._policy = DuplicatePolicy(state.duplicates)
        self._tally = IdTally()
        self._writers: dict[int, SealedWriter] = {}
        self._own: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._peer: dict[int, dict[str, np.ndarray]] = {}
        self._peer_next: dict[str, int] = {}
        self._peer_counts: dict[int, dict[str, int]] = {}
        self.start_bucket = state.exchanged

    # -------------------------------------------------------------- creation

    @classmethod
    def start(
        cls,
        *,
        party: str,
        session: str,
        parties: Sequence[str],
        key_columns: Sequence[str],
        duplicates: str,
        skip_invalid: bool,
        secret: bytes,
        buckets: int,
        sealing_key: bytes,
        random_bytes: Callable[[int], bytes],
    ) -> BucketedRun:
        state = RunState(
            party=party,
            session=session,
            parties=sorted(parties),
            key_columns=list(key_columns),
            duplicates=DuplicatePolicy(duplicates).value,
            skip_invalid=skip_invalid,
            secret=secret.hex(),
            buckets=buckets,
        )
        return cls(state, sealing_key, random_bytes)

    @classmethod
    def resume(
        cls,
        blob: bytes | bytearray | memoryview,
        *,
        party: str,
        session: str,
        sealing_key: bytes,
        random_bytes: Callable[[int], bytes],
    ) -> BucketedRun:
        """Continue the run sealed in ``blob``; it must belong to this party and session."""
        contents = open_sealed(sealing_key, SealedFile(_STATE_RUN, FileKind.STATE), blob)
        state = RunState.from_bytes(bytes(contents.payload))
        if state.party != party or state.session != session:
            raise ConfigurationError(
                f"the sealed run state belongs to party {state.party!r} in session "
                f"{state.session!r}, not party {party!r} in session {session!r}"
            )
        run = cls(state, sealing_key, random_bytes)
        if state.stage == "spill":
            # A spill cut short is redone from the start under a new generation, so no
            # record of the interrupted attempt can be mixed into the new files.
            state.generation += 1
            state.input_rows = 0
            state.id_report = {}
        return run

    def checkpoint(self) -> bytes:
        """The sealed state, for the host to store (and hand back to :meth:`resume`)."""
        return seal_blob(
            self._sealing_key,
            SealedFile(_STATE_RUN, FileKind.STATE),
            self._random_bytes,
            self.state.to_bytes(),
        )

    def progress(self) -> dict[str, Any]:
        """What the host may know: stage, bucket count, buckets sorted and exchanged."""
        return {
            "stage": self.state.stage,
            "buckets": self.state.buckets,
            "sorted": self.state.sorted_buckets,
            "exchanged": self.state.exchanged,
            "start": self.start_bucket,
            "run_id": self.run_id.hex(),
        }

    def _identity(self, kind: FileKind, bucket: int) -> SealedFile:
        generation = self.state.generation if kind is FileKind.SPILL else 0
        return SealedFile(self.run_id, kind, bucket, generation)

    def _require(self, stage: str, what: str) -> None:
        if self.state.stage != stage:
            raise ProtocolError(f"{what} in stage {self.state.stage!r}, expected {stage!r}")

    def _check_bucket(self, bucket: Any) -> int:
        if isinstance(bucket, bool) or not isinstance(bucket, int):
            raise ProtocolError(f"bucket: expected an integer, got {bucket!r}")
        if not 0 <= bucket < self.state.buckets:
            raise ProtocolError(f"bucket {bucket} outside 0..{self.state.buckets - 1}")
        return bucket

    # -------------------------------------------------------------- 1. spill

    def spill_batch(self, columns: Sequence[KeyColumn]) -> list[tuple[int, bytearray]]:
        """Seal one batch of key columns into its buckets: ``[(bucket, bytes to append)]``."""
        self._require("spill", "spilling a batch")
        pieces: list[tuple[int, bytearray]] = []
        rows = len(columns[0]) if columns else 0
        # Slices of a host batch (zero-copy) bound the temporaries of a memory-limited run.
        for start in range(0, rows, _SPILL_SLICE_ROWS):
            pieces += self._spill_slice([c.slice(start, _SPILL_SLICE_ROWS) for c in columns])
        return pieces

    def _spill_slice(self, columns: Sequence[KeyColumn]) -> list[tuple[int, bytearray]]:
        state = self.state
        prepared = prepare_ids(columns, names=state.key_columns, skip_invalid=True)
        first_row = self._tally.rows
        self._tally.add(prepared.report)
        digests = keyed_digests(prepared.keys, self._digest_key, key_columns=prepared.key_columns)
        rows = np.asarray(prepared.row_index, dtype=np.int64) + first_row
        del prepared
        keys = order_keys(digests, self._order_seed)
        del digests
        order, bounds = split_by_bucket(keys, state.buckets)
        keys = np.take(keys, order, axis=0)
        rows = np.take(rows, order)
        del order
        pieces: list[tuple[int, bytearray]] = []
        for bucket in np.flatnonzero(np.diff(bounds)).tolist():
            low, high = int(bounds[bucket]), int(bounds[bucket + 1])
            writer = self._writers.get(bucket)
            prefix = b""
            if writer is None:
                writer = SealedWriter(
                    self._sealing_key, self._identity(FileKind.SPILL, bucket), self._random_bytes
                )
                self._writers[bucket] = writer
                prefix = writer.header
            record = writer.record(keys[low:high].data, rows[low:high].data)
            pieces.append((bucket, bytearray(prefix) + record if prefix else record))
        return pieces

    def finish_spill(self) -> tuple[dict[str, Any], list[tuple[int, bytearray]]]:
        """End every spill file; return the ID report and the bytes to append per bucket.

        Raises :class:`InputDataError` for empty or undecodable IDs unless they are
        skipped, or when no usable ID remains — exactly as the in-memory path does.
        """
        self._require("spill", "finishing the spill")
        if self._tally.rows == 0:
            raise InputDataError("no IDs were loaded (the input has no data rows)")
        error = None if self.state.skip_invalid else self._tally.error(self.state.key_columns)
        if error is not None:
            raise error
        report = self._tally.report()
        if report.kept_rows == 0:
            raise InputDataError("no usable IDs remain after dropping empty and undecodable ones")
        pieces: list[tuple[int, bytearray]] = []
        for bucket in range(self.state.buckets):
            writer = self._writers.pop(bucket, None)
            prefix = b""
            if writer is None:
                writer = SealedWriter(
                    self._sealing_key, self._identity(FileKind.SPILL, bucket), self._random_bytes
                )
                prefix = writer.header
            final = writer.finish()
            pieces.append((bucket, bytearray(prefix) + final if prefix else final))
        self.state.input_rows = report.rows
        self.state.id_report = asdict(report)
        self.state.stage = "sort"
        return asdict(report), pieces

    # -------------------------------------------------------------- 2. sort

    def sort(self, bucket: int, spill: bytes | bytearray | memoryview) -> bytearray:
        """Sort the next bucket's spill file; return its sealed sorted file."""
        self._require("sort", "sorting a bucket")
        bucket = self._check_bucket(bucket)
        if bucket != self.state.sorted_buckets:
            raise ProtocolError(
                f"sorting bucket {bucket}, expected bucket {self.state.sorted_buckets}"
            )
        contents = open_sealed(self._sealing_key, self._identity(FileKind.SPILL, bucket), spill)
        count = sum(record.nbytes for record in contents.records) // _ENTRY_BYTES
        keys = np.empty((count, 2), dtype=np.uint64)
        rows = np.empty(count, dtype=np.int64)
        at = 0
        for record in contents.records:
            if record.nbytes % _ENTRY_BYTES:
                raise ProtocolError(f"spill record of bucket {bucket} has a partial entry")
            n = record.nbytes // _ENTRY_BYTES
            keys[at : at + n] = np.frombuffer(record, np.uint64, 2 * n).reshape(n, 2)
            rows[at : at + n] = np.frombuffer(record, np.int64, n, offset=16 * n)
            at += n
        del contents
        result = sort_bucket(keys, rows, self._policy)
        del keys, rows
        writer = SealedWriter(
            self._sealing_key, self._identity(FileKind.SORTED, bucket), self._random_bytes
        )
        parts: list[bytes | bytearray] = [writer.header]
        for array in (result.keys, result.rows):
            flat = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
            for start in range(0, flat.size, _SORTED_RECORD_BYTES):
                parts.append(writer.record(flat[start : start + _SORTED_RECORD_BYTES].data))
        parts.append(writer.finish(struct.pack("!Q", len(result.rows))))
        state = self.state
        merged = merge_duplicates(
            self._policy,
            [duplicate_report_from(state.duplicate_report, state.duplicates), result.duplicates],
        )
        state.duplicate_report = duplicate_report_dict(merged)
        state.own_size += len(result.rows)
        state.sorted_buckets += 1
        if state.sorted_buckets == state.buckets:
            error = duplicate_error(merged)
            if error is not None:
                raise error
            state.stage = "exchange"
        out = bytearray(sum(len(p) for p in parts))
        position = 0
        for part in parts:
            out[position : position + len(part)] = part
            position += len(part)
        return out

    # -------------------------------------------------------------- 3. exchange

    def set_start(self, peers: Sequence[str], start: int) -> None:
        """Name the peers and the first bucket to exchange (the lowest any party needs).

        Called once the parties agreed, before or during this party's own spill and sort: a
        faster peer's first bucket may arrive early and waits here.
        """
        state = self.state
        if not 0 <= start <= state.exchanged:
            raise ProtocolError(f"exchange start {start} beyond this party's progress")
        del state.intersections[start:]
        del state.fingerprints[start:]
        for sizes in state.peer_sizes.values():
            del sizes[start:]
        if state.stage in ("confirm", "done") and start < state.buckets:
            state.stage = "exchange"
        self.start_bucket = start
        self._peer_next = {peer: start for peer in peers}
        for peer in peers:
            state.peer_sizes.setdefault(peer, [])

    def load(self, bucket: int, sorted_file: bytes | bytearray | memoryview) -> memoryview:
        """Take this party's next sorted bucket; return the message body for every peer."""
        self._require("exchange", "loading a bucket")
        bucket = self._check_bucket(bucket)
        if bucket != self.state.exchanged or self._own:
            raise ProtocolError(
                f"loading bucket {bucket}, expected bucket {self.state.exchanged} (one at a time)"
            )
        contents = open_sealed(
            self._sealing_key, self._identity(FileKind.SORTED, bucket), sorted_file
        )
        (count,) = struct.unpack("!Q", contents.trailer)
        payload = contents.payload
        if payload.nbytes != count * _ENTRY_BYTES:
            raise ProtocolError(f"sorted bucket {bucket}: payload does not match its count")
        buffer = np.frombuffer(payload, dtype=np.uint8)
        keys = buffer[: count * DIGEST_BYTES].view(np.uint64).reshape(count, 2)
        rows = buffer[count * DIGEST_BYTES :].view(np.int64)
        self._own[bucket] = (keys, rows)
        body = bytearray(BUCKET_HEADER.size + keys.nbytes)
        BUCKET_HEADER.pack_into(body, 0, bucket, count)
        body[BUCKET_HEADER.size :] = keys.reshape(-1).view(np.uint8).data
        return memoryview(body)

    def receive(self, peer: str, message: bytearray) -> bool:
        """A peer's ``BUCKET`` message: its sort keys of its next bucket.

        Returns True once that peer has sent its last bucket.
        """
        if peer not in self._peer_next:
            raise ProtocolError(f"bucket keys from {peer!r} before the exchange started")
        if len(message) < BUCKET_HEADER.size:
            raise ProtocolError(f"peer {peer!r} sent a malformed bucket message")
        bucket, count = BUCKET_HEADER.unpack_from(message)
        if bucket != self._peer_next[peer] or bucket >= self.state.buckets:
            raise ProtocolError(
                f"peer {peer!r} sent bucket {bucket}, expected bucket {self._peer_next[peer]}"
            )
        if len(message) != BUCKET_HEADER.size + count * DIGEST_BYTES:
            raise ProtocolError(f"peer {peer!r} sent a bucket message of the wrong length")
        keys = np.frombuffer(message, dtype=np.uint64, offset=BUCKET_HEADER.size).reshape(-1, 2)
        check_bucket_keys(keys, bucket, self.state.buckets, f"peer {peer!r} bucket {bucket}")
        self._peer.setdefault(bucket, {})[peer] = keys
        self._peer_next[peer] = bucket + 1
        return bool(bucket + 1 == self.state.buckets)

    def ready(self) -> int | None:
        """The bucket that can be intersected now (own and every peer's keys in), if any."""
        bucket = self.state.exchanged
        if self.state.stage != "exchange":
            return None
        if bucket in self._own and len(self._peer.get(bucket, {})) == len(self._peer_next):
            return bucket
        return None

    def intersect(self, bucket: int) -> tuple[int, bytearray]:
        """Intersect a ready bucket; return ``(|I_b|, sealed result file)``."""
        self._require("exchange", "intersecting a bucket")
        if self.ready() != bucket:
            raise ProtocolError(f"bucket {bucket} is not ready to intersect")
        keys, rows = self._own.pop(bucket)
        peers = self._peer.pop(bucket)
        names = sorted(peers)
        piece, common = intersect_bucket(keys, rows, [peers[name] for name in names])
        state = self.state
        state.intersections.append(len(piece))
        state.fingerprints.append(bucket_fingerprint(bucket, common).hex())
        for name in names:
            state.peer_sizes[name].append(len(peers[name]))
        del keys, rows, peers, common
        writer = SealedWriter(
            self._sealing_key, self._identity(FileKind.RESULT, bucket), self._random_bytes
        )
        sealed = (
            writer.header
            + writer.record(np.ascontiguousarray(piece).data)
            + writer.finish(struct.pack("!Q", len(piece)))
        )
        if state.exchanged == state.buckets:
            state.stage = "confirm"
        return len(piece), bytearray(sealed)

    # -------------------------------------------------------------- 4. confirm, release

    def outcome(self) -> tuple[int, bytes]:
        """``(|I|, fingerprint)`` of the whole run, once every bucket is exchanged."""
        if self.state.stage not in ("confirm", "done"):
            raise ProtocolError(f"confirming in stage {self.state.stage!r}")
        fingerprints = [bytes.fromhex(f) for f in self.state.fingerprints]
        return sum(self.state.intersections), combine_fingerprints(fingerprints)

    def counts(self) -> dict[str, Any]:
        """The counts the host may see (as in memory: own, peers', intersection, duplicates)."""
        state = self.state
        confirmed = state.stage in ("confirm", "done")
        return {
            "own_size": state.own_size,
            "peer_sizes": {peer: sum(sizes) for peer, sizes in sorted(state.peer_sizes.items())},
            "intersection_size": sum(state.intersections),
            "duplicates": duplicate_report_dict(
                duplicate_report_from(state.duplicate_report, state.duplicates)
            ),
            "buckets": state.buckets,
            "bucket_intersections": list(state.intersections),
            # The run's fingerprint (hex), once every bucket is exchanged.
            "fingerprint": self.outcome()[1].hex() if confirmed else None,
        }

    def confirmed(self) -> None:
        """Every peer confirmed the same outcome: the row map may be released."""
        if self.state.stage not in ("confirm", "done"):
            raise ProtocolError(f"confirmed in stage {self.state.stage!r}")
        self.state.stage = "done"

    def release(self, bucket: int, result_file: bytes | bytearray | memoryview) -> bytes:
        """This party's rows of one bucket's intersection (only once the run is confirmed)."""
        self._require("done", "releasing the result")
        bucket = self._check_bucket(bucket)
        contents = open_sealed(
            self._sealing_key, self._identity(FileKind.RESULT, bucket), result_file
        )
        (count,) = struct.unpack("!Q", contents.trailer)
        if count != self.state.intersections[bucket] or contents.payload.nbytes != 8 * count:
            raise ProtocolError(f"result of bucket {bucket} does not match the confirmed counts")
        return bytes(contents.payload)


def agree_run(
    config: SessionConfig,
    *,
    mine: Mapping[str, Any] | None,
    peers: Mapping[str, Mapping[str, Any] | None],
    resumed: BucketedRun | None,
    secret: bytes,
    sealing_key: Callable[[], bytes],
    random_bytes: Callable[[int], bytes],
) -> BucketedRun | None:
    """Every roster is in: the agreed bucketed run, or ``None`` for an in-memory run.

    ``mine`` and ``peers`` are this party's and each peer's bucketed roster entry
    (proposal, resumed run id, buckets exchanged; ``None``: that party runs in memory).
    The run mode is never mixed, every party resumes the same run or none does, and the
    exchange starts at the lowest bucket any party finished.
    """
    for peer, theirs in sorted(peers.items()):
        if (theirs is None) != (mine is None):
            bucketed = peer if mine is None else config.party_name
            raise ConfigurationError(
                f"party {bucketed!r} runs bucketed (--memory-limit/--buckets) but "
                f"{config.party_name if mine is None else peer!r} runs in memory; "
                "give --memory-limit or --buckets to every party"
            )
    if mine is None:
        return None
    runs = {peer: theirs["run_id"] for peer, theirs in peers.items() if theirs}
    for peer, run_id in sorted(runs.items()):
        if run_id != mine["run_id"]:
            raise ConfigurationError(
                f"party {peer!r} "
                + ("starts a new run" if run_id is None else "resumes another run")
                + (
                    " while this party resumes one"
                    if mine["run_id"]
                    else " while this party starts a new one"
                )
                + "; resume every party of the run with --resume, or start all anew"
            )
    names = sorted([config.party_name, *peers])
    if resumed is not None:
        run = resumed
    else:
        proposals = [Proposal.from_dict(mine["proposal"], "this party")] + [
            Proposal.from_dict(theirs["proposal"], f"peer {peer!r}")
            for peer, theirs in sorted(peers.items())
            if theirs
        ]
        buckets = agree_run_buckets(proposals)
        if buckets == 1 and all(p.buckets is None for p in proposals):
            return None  # every input fits: the in-memory path
        run = BucketedRun.start(
            party=config.party_name,
            session=config.session,
            parties=names,
            key_columns=config.key_columns,
            duplicates=config.duplicates.value,
            skip_invalid=config.skip_invalid,
            secret=secret,
            buckets=buckets,
            sealing_key=sealing_key(),
            random_bytes=random_bytes,
        )
    if run.state.parties != names:
        raise ConfigurationError(
            f"resume: the run was between {run.state.parties}, this session is {names}"
        )
    start = min(
        [int(mine["exchanged"])] + [int(theirs["exchanged"]) for theirs in peers.values() if theirs]
    )
    run.set_start([peer for peer in peers], start)
    return run
