"""What one enclave does in an alignment session: a state machine driven by its host.

The host drives the enclave through a small fixed set of calls (:class:`Call`); each call
takes small JSON parameters and a bulk byte body and returns the same. This module is the
enclave's side of those calls, with no I/O of its own: :mod:`accord.tee.runtime.enclave`
moves the bytes between the host and :meth:`EnclaveSession.call` (or
:class:`accord.tee.runtime.host.InProcessEnclave` calls it directly). The IDs are loaded by
:mod:`~accord.tee.core.loader`, the channel messages are :mod:`~accord.tee.core.messages`,
the peers' links are :mod:`~accord.tee.core.peers`, and bucketed runs are
:mod:`~accord.tee.core.bucketed`.

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

import dataclasses
import hmac
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from accord.alignment import (
    DIGEST_BYTES,
    AlignmentResult,
    DigestSet,
    DuplicatePolicy,
    align,
    digests_from_bytes,
    shared_seed,
)
from accord.errors import (
    AccordError,
    ChannelError,
    ConfigurationError,
    ProtocolError,
)
from accord.tee.core.allocator import release_memory
from accord.tee.core.attestation import parse_policy
from accord.tee.core.backend import EnclaveBackend
from accord.tee.core.bucket_plan import Proposal
from accord.tee.core.bucketed import BucketedRun, agree_run
from accord.tee.core.channel import (
    HandshakeConfig,
)
from accord.tee.core.loader import IdLoader, SessionConfig, decode_columns
from accord.tee.core.messages import (
    CONFIRM,
    DIGEST_KEY_LABEL,
    DIGESTS_HEADER,
    HIDDEN_SIZE,
    ORDER_SEED_LABEL,
    SHARE_BYTES,
    MessageKind,
    bucket_of,
    decode_confirm,
    decode_digests,
    decode_roster,
    derive,
    encode_roster,
    joined,
)
from accord.tee.core.peers import PeerState, handshake_step
from accord.tee.core.wire import SESSION_ALREADY_FAILED, Call

__all__ = ["EnclaveSession", "Reply"]

#: What a call returns: small JSON parameters and a bulk body.
Reply = tuple[dict[str, Any], bytes | bytearray]


class EnclaveSession:
    """The enclave's state for one alignment session (see the module docstring)."""

    def __init__(self, backend: EnclaveBackend, random_bytes: Callable[[int], bytes]) -> None:
        self._backend = backend
        self._random_bytes = random_bytes
        self._config: SessionConfig | None = None
        self._handshake_config: HandshakeConfig | None = None
        self._links: dict[int, PeerState] = {}
        self._share = b""
        self._session_secret: bytes | None = None
        self._loader: IdLoader | None = None
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
    def _ids(self) -> IdLoader:
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
            config = SessionConfig(
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
        self._loader = IdLoader(
            config, None if config.proposal else rows_hint, random_bytes=self._random_bytes
        )
        self._share = self._random_bytes(SHARE_BYTES)
        return {}, b""

    # -------------------------------------------------------------- HANDSHAKE

    def _handshake(self, meta: dict[str, Any], body: memoryview) -> Reply:
        assert self._handshake_config is not None and self._config is not None
        reply, out, opened = handshake_step(
            self._links, meta, body, self._handshake_config, self._config.parties
        )
        if (
            opened
            and len(self._links) == self._config.parties - 1
            and all(other.keys is not None for other in self._links.values())
        ):
            roster = self._roster()  # every channel is open: the session secret's round
            for other in self._links.values():
                assert other.writer is not None
                other.writer.send(MessageKind.ROSTER, roster)
        return reply, out

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
        return encode_roster(fields, self._share)

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
        run = agree_run(
            self._config,
            mine=self._bucketed_roster(),
            peers={
                link.keys.peer_name: link.bucketed
                for link in self._links.values()
                if link.keys is not None
            },
            resumed=self._resumed,
            secret=self._session_secret,
            sealing_key=self._backend.sealing_key,
            random_bytes=self._random_bytes,
        )
        if run is None:
            self._mode = "memory"
            return
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
            pieces, body_out = joined(self._bucketed.spill_batch(arrays))
            return {"pieces": pieces}, body_out
        self._ids.add(arrays)
        return {"rows": self._ids.rows}, b""

    def _load_done(self, meta: dict[str, Any], body: memoryview) -> Reply:
        assert self._config is not None
        if self._ids.finished:
            raise ProtocolError("LOAD_DONE called twice")
        if self._bucketed is not None:
            self._ids.finished = True
            report_dict, tails = self._bucketed.finish_spill()
            pieces, body_out = joined(tails)
            release_memory()  # the spill's batch temporaries: sorting needs other sizes
            return {"ids": report_dict, "pieces": pieces}, body_out
        report = self._ids.finish()
        self._digest_if_ready()
        return {"ids": asdict(report)}, b""

    def _digest_if_ready(self) -> None:
        """Queue the digests for the peers once the IDs are loaded and the key is known."""
        assert self._config is not None
        if self._session_secret is None or self._own is not None:
            return
        self._ids.set_key(derive(self._session_secret, DIGEST_KEY_LABEL))
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
            flags |= HIDDEN_SIZE
            padding = (self._config.pad_to - len(own)) * DIGEST_BYTES
        header = DIGESTS_HEADER.pack(len(own), flags)
        pad = bytes(padding)
        for link in self._links.values():
            assert link.writer is not None
            link.writer.send(MessageKind.DIGESTS, header, wire, pad)

    # -------------------------------------------------------------- SEAL / UNSEAL

    def _link(self, meta: Mapping[str, Any]) -> PeerState:
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

    def _receive(self, link: PeerState, peer: str, kind: int, message: bytearray) -> None:
        """One decrypted message from ``peer``, by its kind; any other kind, or one out of
        order, is a :class:`ProtocolError` (the session fails closed)."""
        assert self._config is not None
        if kind == MessageKind.ROSTER:
            self._receive_roster(link, peer, message)
        elif kind == MessageKind.DIGESTS:
            if link.share is None or link.got_digests:
                raise ProtocolError(f"peer {peer!r} sent digests out of order")
            digests, hidden = decode_digests(message, peer)
            link.digests = digests_from_bytes(digests)
            link.got_digests = True
            link.size_hidden = hidden
        elif kind == MessageKind.BUCKET:
            if self._bucketed is None:
                raise ProtocolError(f"peer {peer!r} sent bucket keys in an in-memory run")
            if self._bucketed.receive(peer, message):
                link.got_digests = True
        elif kind == MessageKind.CONFIRM:
            if not link.got_digests or link.confirm is not None:
                raise ProtocolError(f"peer {peer!r} confirmed out of order")
            link.confirm = decode_confirm(message, peer)
            if self._outcome is not None:
                self._check_confirm(link, peer)
        else:
            raise ProtocolError(f"peer {peer!r} sent an unknown message kind {kind}")

    def _receive_roster(self, link: PeerState, peer: str, message: bytearray) -> None:
        """A peer's roster: it must see this session exactly as this party does; once every
        peer's share is in, the session secret and the run mode are agreed."""
        if link.roster is not None:
            raise ProtocolError(f"peer {peer!r} sent its roster twice")
        roster, share = decode_roster(message, peer)
        bucketed = roster.pop("bucketed", None)
        mine = self._roster_fields()
        if roster != mine:
            raise ProtocolError(
                f"peer {peer!r} sees a different session: parties {roster.get('parties')}, "
                f"{roster.get('key_columns')} key column(s); this party sees "
                f"{mine['parties']}, {mine['key_columns']} key column(s)"
            )
        if len(share) != SHARE_BYTES:
            raise ProtocolError(f"peer {peer!r} sent a share of {len(share)} bytes")
        if bucketed is not None and not isinstance(bucketed, dict):
            raise ProtocolError(f"peer {peer!r} sent a malformed bucket proposal")
        link.roster, link.share, link.bucketed = roster, share, bucketed
        if all(other.share is not None for other in self._links.values()):
            shares = [self._share] + [other.share for other in self._links.values() if other.share]
            if self._resumed is not None:
                # A resumed run keeps its secret: the same digests, buckets and order.
                self._session_secret = bytes.fromhex(self._resumed.state.secret)
            else:
                self._session_secret = shared_seed(shares)
            self._agree_mode()
            if self._mode == "memory":
                self._digest_if_ready()

    # -------------------------------------------------------------- INTERSECT / RESULT

    def _check_confirm(self, link: PeerState, peer: str) -> None:
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
        confirm = CONFIRM.pack(*self._outcome)
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
        result = align(self._own, peers, derive(self._session_secret, ORDER_SEED_LABEL))
        for link in links:
            link.digests = None  # the peers' digests are no longer needed
        self._result = result
        self._outcome = (result.intersection_size, result.fingerprint)
        self._send_confirm()
        return {"counts": self._counts(links)}, b""

    def _counts(self, links: list[PeerState]) -> dict[str, Any]:
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
            # The alignment's fingerprint (hex): reveals nothing about IDs; every party's
            # host gets the same one, so later steps can check they hold the same alignment.
            "fingerprint": self._result.fingerprint.hex(),
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
            rows = self._bucketed.release(bucket_of(meta), body)
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
        sealed = run.sort(bucket_of(meta), body)
        if run.state.stage == "exchange":
            release_memory()
        return {}, sealed

    def _load_bucket(self, meta: dict[str, Any], body: memoryview) -> Reply:
        message = self._run().load(bucket_of(meta), body)
        for link in self._links.values():
            assert link.writer is not None
            link.writer.send(MessageKind.BUCKET, message)
        return {}, b""

    def _intersect_bucket(self, meta: dict[str, Any]) -> Reply:
        run = self._run()
        count, sealed = run.intersect(bucket_of(meta))
        if run.state.stage == "confirm":
            self._send_confirm()
        return {"count": count}, sealed
