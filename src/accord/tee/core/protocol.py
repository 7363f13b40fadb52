"""What one enclave does in an alignment session: a state machine driven by its host.

The host drives the enclave through a small fixed set of calls (:class:`Call`); each call
takes small JSON parameters and a bulk byte body and returns the same. This module is the
enclave's side of those calls, with no I/O of its own: :mod:`accord.tee.runtime.enclave` moves the
bytes between the host and :meth:`EnclaveSession.call`.

A session goes **init → attest → exchange → intersect → report**:

1. ``INIT`` — this party's name, the session name, the number of parties, the attestation
   policy (TOML), the key columns, the duplicate policy.
2. ``HANDSHAKE`` — for each peer link, the steps of the attested handshake
   (:mod:`accord.tee.core.channel`): make a quote, verify the peer's, open the channel.
3. Once every link is open the enclave seals a ``ROSTER`` message to each peer: the sorted
   names of all parties it is connected to, the number of key columns, and its 32-byte
   random share. Every enclave checks that every peer reports the same roster; the session
   secret is :func:`accord.alignment.shared_seed` of all shares, so all enclaves hold it
   and no host can compute it. The digest key and the shuffle seed derive from it.
4. ``LOAD_IDS`` (repeated) and ``LOAD_DONE`` — this party's key columns as raw Arrow
   buffers, batch by batch; the enclave normalises each batch on arrival
   (:func:`accord.alignment.prepare_ids`), digests it under the session key as soon as the
   key exists and drops the ID bytes; at the end it sorts the digests, applies the duplicate
   policy and seals a ``DIGESTS`` message to each peer.
   ``SEAL``/``UNSEAL`` hand sealed records to the host for relaying and take the peers'.
5. ``INTERSECT`` — once every peer's digests are in: the intersection of all parties, in
   the shared order; a ``CONFIRM`` message (|I| and the result fingerprint) goes to each
   peer, then the end-of-stream record.
6. ``RESULT`` — only once every peer confirmed the same fingerprint and closed its stream
   cleanly: this party's row map.

**Bucketed runs** (inputs larger than memory, :mod:`accord.tee.core.bucketed`). When the host
gives ``INIT`` a bucket proposal (its row estimate, memory limit or bucket count), the
roster carries it, and every party must have given one (the run mode is agreed, never
mixed). The enclaves agree the bucket count from the proposals; with one bucket and none
set by hand the run stays in memory. Otherwise ``LOAD_IDS``/``LOAD_DONE`` return sealed
spill records, ``SORT_BUCKET`` sorts one spill file, ``LOAD_BUCKET`` sends one sorted
bucket's keys to every peer (``BUCKET`` messages), ``INTERSECT`` and ``RESULT`` work on one
bucket, and ``CHECKPOINT`` returns the sealed run state for the host to keep. A resumed
run gives ``INIT`` its sealed state: every party must resume the same run (same run id),
the session secret comes from the state, and the exchange restarts at the lowest bucket
any party has finished.

Any failure poisons the session: every later call fails, so nothing is released after an
error (fail closed).

What crosses the call boundary to the host: this enclave's identity, the handshake
messages (nonces, public keys, quotes — nothing secret), sealed records (ciphertext), the
peers' names and verified claims, counts (|own set|, the peers' set sizes unless a peer
padded its stream, |I|, problems found in the own IDs), and the row map. Never the session
secret, the digest key, the seed, or any peer's digests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import pyarrow as pa

from accord.alignment import (
    DIGEST_BYTES,
    AlignmentResult,
    DigestSet,
    DuplicatePolicy,
    IdReport,
    align,
    digests_from_bytes,
    keyed_digests,
    prepare_ids,
    shared_seed,
)
from accord.alignment.buckets import IdTally, duplicate_error, sort_bucket
from accord.errors import (
    AccordError,
    ChannelError,
    ConfigurationError,
    InputDataError,
    ProtocolError,
)
from accord.tee.core.allocator import release_memory
from accord.tee.core.attestation import parse_policy
from accord.tee.core.backend import EnclaveBackend
from accord.tee.core.bucketed import BucketedRun, Proposal, agree_run_buckets
from accord.tee.core.channel import (
    ChannelKeys,
    ChannelReader,
    ChannelWriter,
    HandshakeConfig,
    InitiatorHandshake,
    ResponderHandshake,
)
from accord.tee.core.wire import SESSION_ALREADY_FAILED, Call

__all__ = ["EnclaveSession", "MessageKind", "Reply", "decode_columns"]

logger = logging.getLogger(__name__)

#: What a call returns: small JSON parameters and a bulk body.
Reply = tuple[dict[str, Any], bytes | bytearray]

_SHARE_BYTES = 32
_DIGESTS_HEADER = struct.Struct("!QB")  # real count, flags
_HIDDEN_SIZE = 0x01
_CONFIRM = struct.Struct("!Q32s")
_DIGEST_KEY_LABEL = b"accord-align/v1 digest key"
_ORDER_SEED_LABEL = b"accord-align/v1 order seed"


class MessageKind(IntEnum):
    """Messages two enclaves exchange inside their channel."""

    ROSTER = 1
    DIGESTS = 2
    CONFIRM = 3
    BUCKET = 4  # bucketed runs: one bucket's sort keys


# ------------------------------------------------------------------ key columns on the wire


_COLUMN_TYPES: dict[str, pa.DataType] = {
    "binary": pa.binary(),
    "large_binary": pa.large_binary(),
    "string": pa.string(),
    "large_string": pa.large_string(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
}


def decode_columns(meta: Mapping[str, Any], body: bytes | bytearray | memoryview) -> list[pa.Array]:
    """Rebuild the arrays described by :func:`accord.tee.core.wire.encode_columns` over ``body``
    (zero copy), validating every offset against the buffers."""
    try:
        columns = meta["columns"]
        source = pa.py_buffer(body)
        position = 0
        arrays: list[pa.Array] = []
        for column in columns:
            kind = _COLUMN_TYPES.get(column["type"])
            if kind is None:
                raise ProtocolError(f"LOAD_IDS: unsupported key column type {column['type']!r}")
            buffers: list[pa.Buffer | None] = []
            for size in column["buffers"]:
                if size is None:
                    buffers.append(None)
                    continue
                if not isinstance(size, int) or size < 0 or position + size > len(source):
                    raise ProtocolError("LOAD_IDS: buffer sizes exceed the body")
                buffers.append(source.slice(position, size))
                position += size
            array = pa.Array.from_buffers(
                kind, column["length"], buffers, column["null_count"], column["offset"]
            )
            array.validate(full=True)
            arrays.append(array)
        if position != len(source):
            raise ProtocolError("LOAD_IDS: trailing bytes after the key columns")
        return arrays
    except (KeyError, TypeError, ValueError, pa.ArrowException) as error:
        raise ProtocolError(f"LOAD_IDS: malformed key columns ({error})") from error


# ------------------------------------------------------------------ session state


@dataclass
class _Link:
    """One peer link as the enclave sees it."""

    handshake: InitiatorHandshake | ResponderHandshake
    keys: ChannelKeys | None = None
    writer: ChannelWriter | None = None
    reader: ChannelReader | None = None
    roster: dict[str, Any] | None = None
    share: bytes | None = None
    digests: np.ndarray | None = None
    got_digests: bool = False
    size_hidden: bool = False
    confirm: tuple[int, bytes] | None = None
    closed: bool = False
    #: Bucketed runs: the peer's proposal and where its run stands (from its roster).
    bucketed: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Config:
    party_name: str
    session: str
    parties: int
    key_columns: tuple[str, ...]
    duplicates: DuplicatePolicy
    skip_invalid: bool
    pad_to: int | None
    #: This party's bucket proposal (``None``: an in-memory run).
    proposal: Proposal | None = None


class _Loader:
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
        config: _Config,
        rows_hint: int | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        self._config = config
        self._random_bytes = random_bytes
        self._tally = IdTally()
        self._key: bytes | None = None
        self._waiting: list[tuple[pa.ChunkedArray, np.ndarray]] = []  # before the key
        capacity = 0 if rows_hint is None else min(rows_hint + rows_hint // 8 + 4096, 1 << 31)
        self._digests = _Gathered(capacity, (2,), np.uint64)
        self._rows = _Gathered(capacity, (), np.int64)
        self.finished = False

    @property
    def rows(self) -> int:
        """Data rows loaded so far."""
        return self._tally.rows

    def add(self, columns: list[pa.Array]) -> None:
        first_row = self._tally.rows
        prepared = prepare_ids(columns, names=list(self._config.key_columns), skip_invalid=True)
        self._tally.add(prepared.report)
        rows = np.asarray(prepared.row_index, dtype=np.int64) + first_row
        if self._key is None:
            self._waiting.append((prepared.keys, rows))
        else:
            self._digest(prepared.keys, rows)

    def _digest(self, keys: pa.ChunkedArray, rows: np.ndarray) -> None:
        assert self._key is not None
        columns = len(self._config.key_columns)
        self._digests.append(keyed_digests(keys, self._key, key_columns=columns))
        self._rows.append(rows)

    def set_key(self, key: bytes) -> None:
        """The session's digest key: digest every batch that waited for it."""
        if self._key is None:
            self._key = key
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

        The IDs wait for the session's digest key. Here they are digested under a one-off
        key of this enclave (never used again) and the first 64-bit word of each digest is
        sorted in place (8 bytes a row): distinct words mean distinct IDs. Only when two
        words are equal (a duplicate, or once in 2**64 two IDs sharing a word) are the full
        digests sorted to give the exact error, rows and examples the keyed set would give.
        """
        if self._random_bytes is None or len(self._waiting) == 0:
            return
        key = self._random_bytes(32)
        columns = len(self._config.key_columns)
        words = np.concatenate(
            [keyed_digests(keys, key, key_columns=columns)[:, 0] for keys, _ in self._waiting]
        )
        words.sort()
        suspect = bool(np.any(words[1:] == words[:-1]))
        del words
        if not suspect:
            return
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


def _secret(session_secret: bytes, label: bytes) -> bytes:
    return hmac.new(session_secret, label, hashlib.sha256).digest()


class EnclaveSession:
    """The enclave's state for one alignment session (see the module docstring)."""

    def __init__(self, backend: EnclaveBackend, random_bytes: Callable[[int], bytes]) -> None:
        self._backend = backend
        self._random_bytes = random_bytes
        self._config: _Config | None = None
        self._handshake_config: HandshakeConfig | None = None
        self._links: dict[int, _Link] = {}
        self._share = b""
        self._session_secret: bytes | None = None
        self._loader: _Loader | None = None
        self._own: DigestSet | None = None
        self._result: AlignmentResult | None = None
        #: ``(|I|, fingerprint)`` every peer must confirm (in memory or bucketed).
        self._outcome: tuple[int, bytes] | None = None
        self._bucketed: BucketedRun | None = None
        self._resumed: BucketedRun | None = None
        #: ``memory`` or ``bucketed`` once agreed (``None`` before the rosters are in).
        self._mode: str | None = None
        self._failed: str | None = None
        self._handlers: dict[Call, Callable[[dict[str, Any], memoryview], Reply]] = {
            Call.INIT: self._init,
            Call.HANDSHAKE: self._handshake,
            Call.LOAD_IDS: self._load_ids,
            Call.LOAD_DONE: self._load_done,
            Call.SEAL: self._seal,
            Call.UNSEAL: self._unseal,
            Call.INTERSECT: self._intersect,
            Call.RESULT: self._result_call,
            Call.CHECKPOINT: self._checkpoint,
            Call.SORT_BUCKET: self._sort_bucket,
            Call.LOAD_BUCKET: self._load_bucket,
        }

    @property
    def _ids(self) -> _Loader:
        if self._loader is None:
            raise ProtocolError("the session has no configuration yet (INIT first)")
        return self._loader

    # -------------------------------------------------------------- dispatch

    def call(self, code: int, meta: dict[str, Any], body: memoryview) -> Reply:
        """Run one host call; the reply carries the session status. Errors poison the session."""
        if self._failed is not None:
            raise ProtocolError(f"{SESSION_ALREADY_FAILED}: {self._failed}")
        try:
            call = Call(code)
        except ValueError as error:
            raise ProtocolError(f"unknown enclave call {code}") from error
        if call is not Call.INIT and self._config is None:
            raise ProtocolError(f"{call.name} before INIT")
        try:
            reply, reply_body = self._handlers[call](meta, body)
        except AccordError as error:
            self._failed = f"{type(error).__name__} in {call.name}"
            raise
        except Exception as error:  # an unexpected bug must still fail closed
            self._failed = f"{type(error).__name__} in {call.name}"
            raise ProtocolError(f"enclave failed in {call.name}: {type(error).__name__}") from error
        if self._bucketed is not None and self._done() and self._bucketed.state.stage == "confirm":
            self._bucketed.confirmed()
        reply["status"] = self.status()
        return reply, reply_body

    def status(self) -> dict[str, Any]:
        """Where the session stands: which links have records to send, what is complete."""
        return {
            "outbound": sorted(
                slot for slot, link in self._links.items() if link.writer and link.writer.pending
            ),
            "keys_ready": self._session_secret is not None,
            "mode": self._mode,
            "digests_received": self._all_digests_received(),
            "bucket_ready": None if self._bucketed is None else self._bucketed.ready(),
            "done": self._done(),
        }

    # -------------------------------------------------------------- INIT

    def _init(self, meta: dict[str, Any], body: memoryview) -> Reply:
        if self._config is not None:
            raise ProtocolError("INIT called twice")
        try:
            key_columns = tuple(str(name) for name in meta["key_columns"])
            pad_to = meta.get("pad_to")
            config = _Config(
                party_name=str(meta["party_name"]),
                session=str(meta["session"]),
                parties=int(meta["parties"]),
                key_columns=key_columns,
                duplicates=DuplicatePolicy(meta.get("duplicates", "error")),
                skip_invalid=bool(meta.get("skip_invalid", False)),
                pad_to=None if pad_to is None else int(pad_to),
            )
            rows_hint = meta.get("rows_hint")
            rows_hint = None if rows_hint is None else max(0, int(rows_hint))
            bucketed = meta.get("bucketed")
            if bucketed is not None:
                config = dataclasses.replace(config, proposal=Proposal.from_dict(bucketed, "INIT"))
            policy = parse_policy(str(meta["policy"]), str(meta.get("policy_source", "policy")))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigurationError(f"INIT: bad session parameters ({error})") from error
        if not key_columns:
            raise ConfigurationError("key columns: expected at least one")
        if config.pad_to is not None and config.pad_to < 0:
            raise ConfigurationError(f"pad_to: expected a count >= 0, got {config.pad_to}")
        self._handshake_config = HandshakeConfig(
            party_name=config.party_name,
            session=config.session,
            parties=config.parties,
            policy=policy,
            make_evidence=self._backend.make_evidence,
            random_bytes=self._random_bytes,
        )
        if meta.get("resume"):
            if config.proposal is None:
                raise ConfigurationError("resume: a resumed run must be bucketed")
            # The sealed state only opens in an enclave of this build on this platform.
            self._resumed = BucketedRun.resume(
                body,
                party=config.party_name,
                session=config.session,
                sealing_key=self._backend.sealing_key(),
                random_bytes=self._random_bytes,
            )
            if self._resumed.state.stage == "done":
                # Every peer confirmed this result before the stop (the sealed state says
                # so): it may be released without them.
                self._bucketed = self._resumed
                self._mode = "bucketed"
                self._session_secret = bytes.fromhex(self._resumed.state.secret)
                self._outcome = self._resumed.outcome()
        self._config = config
        self._loader = _Loader(
            config, None if config.proposal else rows_hint, random_bytes=self._random_bytes
        )
        self._share = self._random_bytes(_SHARE_BYTES)
        return {}, b""

    # -------------------------------------------------------------- HANDSHAKE

    def _handshake(self, meta: dict[str, Any], body: memoryview) -> Reply:
        assert self._handshake_config is not None and self._config is not None
        slot = int(meta["link"])
        step = meta.get("step")
        if step == "hello":
            if slot in self._links or len(self._links) >= self._config.parties - 1:
                raise ProtocolError(f"HANDSHAKE: link {slot} already exists or too many links")
            initiator = InitiatorHandshake(self._handshake_config)
            self._links[slot] = _Link(handshake=initiator)
            return {}, initiator.hello()
        if step == "respond":
            if slot in self._links or len(self._links) >= self._config.parties - 1:
                raise ProtocolError(f"HANDSHAKE: link {slot} already exists or too many links")
            responder = ResponderHandshake(self._handshake_config)
            self._links[slot] = _Link(handshake=responder)
            return {}, responder.respond(bytes(body))
        link = self._links.get(slot)
        if link is None or link.keys is not None:
            raise ProtocolError(f"HANDSHAKE {step}: no handshake in progress on link {slot}")
        if step == "finish" and isinstance(link.handshake, InitiatorHandshake):
            finish, keys = link.handshake.finish(bytes(body))
            self._open(link, keys)
            return self._opened(keys), finish
        if step == "complete" and isinstance(link.handshake, ResponderHandshake):
            keys = link.handshake.complete(bytes(body))
            self._open(link, keys)
            return self._opened(keys), b""
        raise ProtocolError(f"HANDSHAKE: unexpected step {step!r} on link {slot}")

    @staticmethod
    def _opened(keys: ChannelKeys) -> dict[str, Any]:
        claims = keys.peer_claims
        return {
            "peer": keys.peer_name,
            "peer_identity": {
                "backend": claims.backend,
                "measurement": claims.measurement.hex(),
                "security_version": claims.security_version,
                "debug": claims.debug,
                "platform_key": claims.signer,
            },
        }

    def _open(self, link: _Link, keys: ChannelKeys) -> None:
        assert self._config is not None
        if any(
            other.keys and other.keys.peer_name == keys.peer_name for other in self._links.values()
        ):
            raise ProtocolError(f"two links claim to be party {keys.peer_name!r}")
        link.keys = keys
        link.writer = ChannelWriter(keys.send_key)
        link.reader = ChannelReader(keys.receive_key)
        if len(self._links) == self._config.parties - 1 and all(
            other.keys is not None for other in self._links.values()
        ):
            roster = self._roster()
            for other in self._links.values():
                assert other.writer is not None
                other.writer.send(MessageKind.ROSTER, roster)

    def _roster_fields(self) -> dict[str, Any]:
        assert self._config is not None
        names = [self._config.party_name] + [
            link.keys.peer_name for link in self._links.values() if link.keys is not None
        ]
        return {
            "parties": sorted(names),
            "session": self._config.session,
            "key_columns": len(self._config.key_columns),
        }

    def _roster(self) -> bytes:
        fields = self._roster_fields()
        fields["bucketed"] = self._bucketed_roster()
        text = json.dumps(fields, sort_keys=True).encode()
        return struct.pack("!I", len(text)) + text + self._share

    def _bucketed_roster(self) -> dict[str, Any] | None:
        """This party's proposal and, when resuming, which run and how far it got."""
        assert self._config is not None
        proposal = self._config.proposal
        if proposal is None:
            return None
        resumed = self._resumed
        return {
            "proposal": dataclasses.asdict(proposal),
            "run_id": None if resumed is None else resumed.run_id.hex(),
            "exchanged": 0 if resumed is None else resumed.state.exchanged,
        }

    def _agree_mode(self) -> None:
        """Every roster is in: agree the run mode, bucket count and exchange start."""
        assert self._config is not None and self._session_secret is not None
        mine = self._bucketed_roster()
        peers = {
            link.keys.peer_name: link.bucketed
            for link in self._links.values()
            if link.keys is not None
        }
        for peer, theirs in sorted(peers.items()):
            if (theirs is None) != (mine is None):
                bucketed = peer if mine is None else self._config.party_name
                raise ConfigurationError(
                    f"party {bucketed!r} runs bucketed (--memory-limit/--buckets) but "
                    f"{self._config.party_name if mine is None else peer!r} runs in memory; "
                    "give --memory-limit or --buckets to every party"
                )
        if mine is None:
            self._mode = "memory"
            return
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
        names = sorted([self._config.party_name, *peers])
        if self._resumed is not None:
            run = self._resumed
        else:
            proposals = [Proposal.from_dict(mine["proposal"], "this party")] + [
                Proposal.from_dict(theirs["proposal"], f"peer {peer!r}")
                for peer, theirs in sorted(peers.items())
                if theirs
            ]
            buckets = agree_run_buckets(proposals)
            if buckets == 1 and all(p.buckets is None for p in proposals):
                self._mode = "memory"  # every input fits: the in-memory path
                return
            run = BucketedRun.start(
                party=self._config.party_name,
                session=self._config.session,
                parties=names,
                key_columns=self._config.key_columns,
                duplicates=self._config.duplicates.value,
                skip_invalid=self._config.skip_invalid,
                secret=self._session_secret,
                buckets=buckets,
                sealing_key=self._backend.sealing_key(),
                random_bytes=self._random_bytes,
            )
        if run.state.parties != names:
            raise ConfigurationError(
                f"resume: the run was between {run.state.parties}, this session is {names}"
            )
        start = min(
            [int(mine["exchanged"])]
            + [int(theirs["exchanged"]) for theirs in peers.values() if theirs]
        )
        run.set_start([peer for peer in peers], start)
        self._bucketed = run
        self._mode = "bucketed"
        if run.state.stage in ("confirm", "done"):
            for link in self._links.values():
                link.got_digests = True  # nothing left to exchange
            self._send_confirm()

    # -------------------------------------------------------------- LOAD

    def _load_ids(self, meta: dict[str, Any], body: memoryview) -> Reply:
        assert self._config is not None
        if self._ids.finished:
            raise ProtocolError("LOAD_IDS after LOAD_DONE")
        arrays = decode_columns(meta, body)
        if len(arrays) != len(self._config.key_columns):
            raise ProtocolError(
                f"LOAD_IDS: expected {len(self._config.key_columns)} key columns, got {len(arrays)}"
            )
        if len({len(array) for array in arrays}) != 1:
            raise ProtocolError("LOAD_IDS: key columns of different lengths")
        if self._config.proposal is not None and self._mode is None:
            raise ProtocolError("LOAD_IDS in a bucketed run before the bucket count is agreed")
        if self._bucketed is not None:
            pieces, joined = _joined(self._bucketed.spill_batch(arrays))
            return {"pieces": pieces}, joined
        self._ids.add(arrays)
        return {"rows": self._ids.rows}, b""

    def _load_done(self, meta: dict[str, Any], body: memoryview) -> Reply:
        assert self._config is not None
        if self._ids.finished:
            raise ProtocolError("LOAD_DONE called twice")
        if self._bucketed is not None:
            self._ids.finished = True
            report_dict, tails = self._bucketed.finish_spill()
            pieces, joined = _joined(tails)
            release_memory()  # the spill's batch temporaries: sorting needs other sizes
            return {"ids": report_dict, "pieces": pieces}, joined
        report = self._ids.finish()
        self._digest_if_ready()
        return {"ids": asdict(report)}, b""

    def _digest_if_ready(self) -> None:
        """Queue the digests for the peers once the IDs are loaded and the key is known."""
        assert self._config is not None
        if self._session_secret is None or self._own is not None:
            return
        self._ids.set_key(_secret(self._session_secret, _DIGEST_KEY_LABEL))
        if not self._ids.finished:
            return
        own = self._ids.digest_set()
        self._own = own
        wire = np.ascontiguousarray(own.digests).data.cast("B")
        flags = 0
        padding = 0
        if self._config.pad_to is not None:
            if len(own) > self._config.pad_to:
                raise ConfigurationError(
                    f"pad_to: this party has {len(own)} distinct IDs, more than pad_to "
                    f"{self._config.pad_to}"
                )
            flags |= _HIDDEN_SIZE
            padding = (self._config.pad_to - len(own)) * DIGEST_BYTES
        header = _DIGESTS_HEADER.pack(len(own), flags)
        pad = bytes(padding)
        for link in self._links.values():
            assert link.writer is not None
            link.writer.send(MessageKind.DIGESTS, header, wire, pad)

    # -------------------------------------------------------------- SEAL / UNSEAL

    def _link(self, meta: Mapping[str, Any]) -> _Link:
        link = self._links.get(int(meta["link"]))
        if link is None or link.writer is None or link.reader is None:
            raise ProtocolError(f"no open channel on link {meta.get('link')!r}")
        return link

    def _seal(self, meta: dict[str, Any], body: memoryview) -> Reply:
        link = self._link(meta)
        assert link.writer is not None
        batch = link.writer.next_batch(int(meta.get("max_bytes", 16 << 20)))
        return {"closed": link.writer.closed and not link.writer.pending}, batch

    def _unseal(self, meta: dict[str, Any], body: memoryview) -> Reply:
        link = self._link(meta)
        assert link.reader is not None and link.keys is not None
        peer = link.keys.peer_name
        try:
            if len(body):
                for kind, message in link.reader.feed(body):
                    self._receive(link, peer, kind, message)
            if meta.get("eof"):
                link.reader.check_closed()
        except ChannelError as error:
            raise ChannelError(f"channel from peer {peer!r}: {error}") from error
        if link.reader.ended and not link.closed:
            if link.confirm is None:
                raise ChannelError(f"peer {peer!r} closed its channel before confirming the result")
            link.closed = True
        return {"ended": link.reader.ended}, b""

    def _receive(self, link: _Link, peer: str, kind: int, message: bytearray) -> None:
        assert self._config is not None
        if kind == MessageKind.ROSTER:
            if link.roster is not None:
                raise ProtocolError(f"peer {peer!r} sent its roster twice")
            (length,) = struct.unpack_from("!I", message)
            roster = json.loads(bytes(message[4 : 4 + length]))
            share = bytes(message[4 + length :])
            if not isinstance(roster, dict):
                raise ProtocolError(f"peer {peer!r} sent a malformed roster")
            bucketed = roster.pop("bucketed", None)
            mine = self._roster_fields()
            if roster != mine:
                raise ProtocolError(
                    f"peer {peer!r} sees a different session: parties {roster.get('parties')}, "
                    f"{roster.get('key_columns')} key column(s); this party sees "
                    f"{mine['parties']}, {mine['key_columns']} key column(s)"
                )
            if len(share) != _SHARE_BYTES:
                raise ProtocolError(f"peer {peer!r} sent a share of {len(share)} bytes")
            if bucketed is not None and not isinstance(bucketed, dict):
                raise ProtocolError(f"peer {peer!r} sent a malformed bucket proposal")
            link.roster, link.share, link.bucketed = roster, share, bucketed
            if all(other.share is not None for other in self._links.values()):
                shares = [self._share] + [
                    other.share for other in self._links.values() if other.share
                ]
                if self._resumed is not None:
                    # A resumed run keeps its secret: the same digests, buckets and order.
                    self._session_secret = bytes.fromhex(self._resumed.state.secret)
                else:
                    self._session_secret = shared_seed(shares)
                self._agree_mode()
                if self._mode == "memory":
                    self._digest_if_ready()
        elif kind == MessageKind.DIGESTS:
            if link.share is None or link.got_digests:
                raise ProtocolError(f"peer {peer!r} sent digests out of order")
            count, flags = _DIGESTS_HEADER.unpack_from(message)
            start = _DIGESTS_HEADER.size
            end = start + count * DIGEST_BYTES
            if end > len(message) or any(message[end:]):
                raise ProtocolError(f"peer {peer!r} sent a malformed digest message")
            link.digests = digests_from_bytes(memoryview(message)[start:end])
            link.got_digests = True
            link.size_hidden = bool(flags & _HIDDEN_SIZE)
        elif kind == MessageKind.BUCKET:
            if self._bucketed is None:
                raise ProtocolError(f"peer {peer!r} sent bucket keys in an in-memory run")
            if self._bucketed.receive(peer, message):
                link.got_digests = True
        elif kind == MessageKind.CONFIRM:
            if not link.got_digests or link.confirm is not None:
                raise ProtocolError(f"peer {peer!r} confirmed out of order")
            size, fingerprint = _CONFIRM.unpack(message)
            link.confirm = (size, fingerprint)
            if self._outcome is not None:
                self._check_confirm(link, peer)
        else:
            raise ProtocolError(f"peer {peer!r} sent an unknown message kind {kind}")

    # -------------------------------------------------------------- INTERSECT / RESULT

    def _check_confirm(self, link: _Link, peer: str) -> None:
        """Fail closed unless ``peer`` computed exactly this party's result."""
        assert self._outcome is not None and link.confirm is not None
        size, fingerprint = link.confirm
        mine, expected = self._outcome
        if size != mine or not hmac.compare_digest(fingerprint, expected):
            raise ProtocolError(
                f"peer {peer!r} computed a different result ({size} shared IDs, this party "
                f"{mine}); nothing is released"
            )

    def _all_digests_received(self) -> bool:
        return bool(self._links) and all(link.got_digests for link in self._links.values())

    def _done(self) -> bool:
        if self._bucketed is not None and self._bucketed.state.stage == "done":
            return True  # confirmed by every peer (now, or before a resume)
        return (
            self._outcome is not None
            and bool(self._links)
            and all(link.closed and link.confirm for link in self._links.values())
        )

    def _send_confirm(self) -> None:
        """Tell every peer ``(|I|, fingerprint)`` and end the channel; check early confirms."""
        assert self._outcome is not None or self._bucketed is not None
        if self._outcome is None:
            assert self._bucketed is not None
            self._outcome = self._bucketed.outcome()
        links = list(self._links.values())
        for link in links:
            if link.confirm is not None and link.keys is not None:
                self._check_confirm(link, link.keys.peer_name)
        confirm = _CONFIRM.pack(*self._outcome)
        for link in links:
            assert link.writer is not None
            link.writer.send(MessageKind.CONFIRM, confirm)
            link.writer.end()

    def _intersect(self, meta: dict[str, Any], body: memoryview) -> Reply:
        assert self._config is not None
        if self._bucketed is not None:
            return self._intersect_bucket(meta)
        if self._result is not None:
            raise ProtocolError("INTERSECT called twice")
        if self._own is None or self._session_secret is None or not self._all_digests_received():
            raise ProtocolError("INTERSECT before every party's digests arrived")
        links = list(self._links.values())
        peers = [link.digests for link in links if link.digests is not None]
        result = align(self._own, peers, _secret(self._session_secret, _ORDER_SEED_LABEL))
        for link in links:
            link.digests = None  # the peers' digests are no longer needed
        self._result = result
        self._outcome = (result.intersection_size, result.fingerprint)
        self._send_confirm()
        return {"counts": self._counts(links)}, b""

    def _counts(self, links: list[_Link]) -> dict[str, Any]:
        assert self._result is not None and self._own is not None
        peer_sizes = {
            link.keys.peer_name: (None if link.size_hidden else size)
            for link, size in zip(links, self._result.peer_sizes, strict=True)
            if link.keys is not None
        }
        return {
            "own_size": self._result.own_size,
            "peer_sizes": peer_sizes,
            "intersection_size": self._result.intersection_size,
            "duplicates": {
                key: (value.value if isinstance(value, DuplicatePolicy) else value)
                for key, value in asdict(self._own.duplicates).items()
            },
        }

    def _result_call(self, meta: dict[str, Any], body: memoryview) -> Reply:
        if not self._done():
            raise ProtocolError(
                "RESULT before every peer confirmed the same result and closed its channel"
            )
        if self._bucketed is not None:
            rows = self._bucketed.release(_bucket_of(meta), body)
            return {"rows": len(rows) // 8}, rows
        assert self._result is not None
        return {"rows": self._result.intersection_size}, self._result.row_map.tobytes()

    # -------------------------------------------------------------- bucketed calls

    def _run(self) -> BucketedRun:
        if self._bucketed is None:
            raise ProtocolError("a bucketed call in a run that is not bucketed (yet)")
        return self._bucketed

    def _checkpoint(self, meta: dict[str, Any], body: memoryview) -> Reply:
        run = self._run()
        return {"progress": run.progress(), "counts": run.counts()}, run.checkpoint()

    def _sort_bucket(self, meta: dict[str, Any], body: memoryview) -> Reply:
        run = self._run()
        sealed = run.sort(_bucket_of(meta), body)
        if run.state.stage == "exchange":
            release_memory()
        return {}, sealed

    def _load_bucket(self, meta: dict[str, Any], body: memoryview) -> Reply:
        message = self._run().load(_bucket_of(meta), body)
        for link in self._links.values():
            assert link.writer is not None
            link.writer.send(MessageKind.BUCKET, message)
        return {}, b""

    def _intersect_bucket(self, meta: dict[str, Any]) -> Reply:
        run = self._run()
        count, sealed = run.intersect(_bucket_of(meta))
        if run.state.stage == "confirm":
            self._send_confirm()
        return {"count": count}, sealed


def _bucket_of(meta: Mapping[str, Any]) -> int:
    bucket = meta.get("bucket")
    if isinstance(bucket, bool) or not isinstance(bucket, int):
        raise ProtocolError(f"expected an integer bucket, got {bucket!r}")
    return bucket


def _joined(pieces: list[tuple[int, bytearray]]) -> tuple[list[list[int]], bytearray]:
    """``[[bucket, length], ...]`` and the pieces back to back (one reply body)."""
    out = bytearray(sum(len(piece) for _, piece in pieces))
    at = 0
    for _, piece in pieces:
        out[at : at + len(piece)] = piece
        at += len(piece)
    return [[bucket, len(piece)] for bucket, piece in pieces], out
