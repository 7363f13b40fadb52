"""The vertical round over gRPC: the label party listens, each feature party dials it.

One bidirectional stream per feature party (``proto/vertical.proto``). The feature party
sends :class:`Hello` (its name, aligned row count, alignment and settings fingerprints);
the label party checks its credentials (mutual TLS and a token, through
:class:`~accord.credentials.auth.Authenticator`: the certificate's common name and the
token must both be the announced party's), then the agreement
(:func:`~accord.vertical.agreement.check_announcements`), and answers ``Welcome`` or
``Refused`` with one line. After that the label party drives: a
:class:`RemoteFeatureParty` is the :class:`~accord.vertical.simulation.FeaturePartyLink`
of one feature party, so :func:`~accord.vertical.simulation.run_vertical` runs the same
rounds as in memory; the feature party's end
(:func:`~accord.vertical.feature_transport.serve_feature_party`) answers each instruction
with the :class:`~accord.vertical.parties.FeatureParty`'s own methods. A driver adds
transport, never rules. This module is the label party's end and the wire helpers.

Timeouts and reconnection: a connection that sends no ``Hello`` within ``hello_timeout``
is dropped. A feature party that sends nothing for ``idle_timeout`` seconds, or whose
stream ends (its process died, the network was cut), is a :class:`PartyLostError`: the
label party's driver waits for it to connect again (:meth:`LabelServer.recover`) and then
tells every party where to continue (``Restore``). A feature party that loses the label
party redials for up to ``DialSettings.reconnect_timeout`` seconds and announces again
which epochs it holds. Past those deadlines, one :class:`PeerError` line ends the party.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
import numpy as np

from accord.credentials.auth import Authenticator, ServerCredentials
from accord.credentials.tls import (
    channel_options,
    format_address,
    server_tls,
)
from accord.errors import AccordError, ConfigurationError, PeerError, ProtocolError
from accord.vertical.agreement import PartyAnnouncement, check_announcements
from accord.vertical.messages import BatchRequest, Embedding, EmbeddingGradient, SplitEmbedding
from accord.vertical.proto import vertical_pb2 as pb
from accord.vertical.proto import vertical_pb2_grpc as pb_grpc

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "LabelServer",
    "PartyLostError",
    "RemoteFeatureParty",
    "from_matrix",
    "grpc_details",
    "held_epochs",
    "links_bytes",
    "to_matrix",
]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
#: Largest message either end accepts: a split's embedding travels in one message.
MAX_MESSAGE_BYTES = 1 << 30
#: Put in an outbound queue: the stream ends there.
END = object()


def to_matrix(values: np.ndarray) -> pb.Matrix:
    """A float32 ``(rows, columns)`` array as a message (row-major, little-endian)."""
    array = np.ascontiguousarray(values, dtype="<f4")
    rows, columns = array.shape
    return pb.Matrix(rows=rows, columns=columns, data=array.tobytes())


def from_matrix(message: pb.Matrix, what: str) -> np.ndarray:
    """The array a :class:`pb.Matrix` holds; a size that does not match is one line."""
    expected = message.rows * message.columns * 4
    if len(message.data) != expected:
        raise ProtocolError(
            f"{what}: expected {expected} bytes for {message.rows}x{message.columns} float32,"
            f" got {len(message.data)}"
        )
    values = np.frombuffer(message.data, dtype="<f4").reshape(message.rows, message.columns)
    return values.astype(np.float32)  # a writable native copy


def announcement_of(hello: pb.Hello) -> PartyAnnouncement:
    return PartyAnnouncement(
        party=hello.party,
        row_count=int(hello.row_count),
        settings_fingerprint=hello.settings_fingerprint,
        alignment_fingerprint=hello.alignment_fingerprint or None,
    )


class _Gone:
    """The end of a feature party's stream, as the last item of its inbound queue."""

    def __init__(self, why: str) -> None:
        self.why = why


class PartyLostError(PeerError):
    """A feature party's stream ended, or it went silent, in the middle of a run: it may
    rejoin (:meth:`LabelServer.recover`)."""

    def __init__(self, party: str, message: str, session: _Session | None = None) -> None:
        super().__init__(message)
        self.party = party
        self.session = session


class _Session:
    """One feature party's stream, seen from the label party: instructions go out through
    ``outbound`` (``END`` ends the stream), replies come in through ``inbound`` (a
    :class:`_Gone` once the stream has ended)."""

    def __init__(
        self,
        party: str,
        peer: str,
        inbound: queue.Queue[Any] | None = None,
        ended: threading.Event | None = None,
    ) -> None:
        self.party = party
        self.peer = peer
        self.outbound: queue.Queue[Any] = queue.Queue()
        self.inbound: queue.Queue[Any] = queue.Queue() if inbound is None else inbound
        #: Set by the stream's reader once the feature party's side has ended.
        self.ended = threading.Event() if ended is None else ended

    def close(self) -> None:
        self.outbound.put(END)

    def drop(self, why: str) -> None:
        """End the stream; whoever waits for a reply learns ``why``."""
        self.inbound.put(_Gone(why))
        self.close()


class _Traffic:
    """Bytes exchanged with one feature party over every stream it has had."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0


class RemoteFeatureParty:
    """A feature party at the other end of a stream (a
    :class:`~accord.vertical.simulation.FeaturePartyLink`). A stream that ends or stays
    silent for ``idle_timeout`` seconds raises :class:`PartyLostError`."""

    def __init__(
        self, session: _Session, idle_timeout: float, traffic: _Traffic | None = None
    ) -> None:
        self.name = session.party
        self._session = session
        self._idle_timeout = idle_timeout
        self._traffic = _Traffic() if traffic is None else traffic

    @property
    def bytes_sent(self) -> int:
        return self._traffic.sent

    @property
    def bytes_received(self) -> int:
        return self._traffic.received

    def _send(self, message: pb.LabelMessage) -> None:
        self._traffic.sent += message.ByteSize()
        self._session.outbound.put(message)

    def _matrix(self, what: str) -> np.ndarray:
        try:
            reply = self._session.inbound.get(timeout=self._idle_timeout)
        except queue.Empty:
            raise PartyLostError(
                self.name,
                f"party {self.name!r} sent nothing for {self._idle_timeout:g} s"
                f" (waiting for its {what})",
                self._session,
            ) from None
        if isinstance(reply, _Gone):
            self._session.inbound.put(reply)  # every later wait learns it too
            raise PartyLostError(
                self.name, f"party {self.name!r} is gone: {reply.why}", self._session
            )
        self._traffic.received += reply.ByteSize()
        if reply.WhichOneof("body") != "matrix":
            raise ProtocolError(
                f"party {self.name!r}: expected its {what}, got {reply.WhichOneof('body')}"
            )
        return from_matrix(reply.matrix, f"{what} from {self.name!r}")

    def forward(self, request: BatchRequest) -> Embedding:
        self._send(pb.LabelMessage(forward=pb.Forward(epoch=request.epoch, batch=request.batch)))
        values = self._matrix(f"embedding of epoch {request.epoch} batch {request.batch}")
        return Embedding(self.name, request.epoch, request.batch, values)

    def backward(self, gradient: EmbeddingGradient) -> None:
        self._send(
            pb.LabelMessage(
                backward=pb.Backward(
                    epoch=gradient.epoch, batch=gradient.batch, gradient=to_matrix(gradient.values)
                )
            )
        )

    def embed(self, split: str) -> SplitEmbedding:
        self._send(pb.LabelMessage(embed=pb.Embed(split=split)))
        return SplitEmbedding(self.name, split, self._matrix(f"embedding of the {split} split"))

    def keep_best(self) -> None:
        self._send(pb.LabelMessage(keep_best=pb.KeepBest()))

    def restore_best(self) -> None:
        self._send(pb.LabelMessage(restore_best=pb.RestoreBest()))

    def checkpoint(self, next_epoch: int) -> None:
        """Have the feature party save its state after ``next_epoch`` epochs, and wait
        until it has (it answers with an empty matrix)."""
        self._send(pb.LabelMessage(checkpoint=pb.Checkpoint(next_epoch=next_epoch)))
        self._matrix(f"confirmation that it saved epoch {next_epoch}")

    def restore(self, next_epoch: int) -> None:
        """Have the feature party continue from its state after ``next_epoch`` epochs, and
        wait until it has (it answers with an empty matrix)."""
        self._send(pb.LabelMessage(restore=pb.Restore(next_epoch=next_epoch)))
        self._matrix(f"confirmation that it restored epoch {next_epoch}")

    def finish(self, reason: str) -> None:
        """Tell the feature party the run is over, and end its stream."""
        self._send(pb.LabelMessage(finish=pb.Finish(reason=reason)))
        self._session.close()


class _Servicer(pb_grpc.VerticalServicer):
    def __init__(self, server: LabelServer) -> None:
        self.server = server

    def Session(  # noqa: N802 - the gRPC method's name
        self, request_iterator: Iterator[pb.FeatureMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.LabelMessage]:
        peer = context.peer()
        inbound: queue.Queue[Any] = queue.Queue()
        ended = threading.Event()
        threading.Thread(
            target=_read_stream, args=(request_iterator, inbound, ended), daemon=True
        ).start()
        timeout = self.server.hello_timeout
        try:
            first = inbound.get(timeout=timeout)
        except queue.Empty:
            # A client that opens the stream and says nothing must not hold this thread.
            logger.warning("dropped the connection from %s: no Hello within %g s", peer, timeout)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {timeout:g} s")
        if isinstance(first, _Gone):
            return
        if first.WhichOneof("body") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        hello = first.hello
        metadata = [(m.key, m.value) for m in (context.invocation_metadata() or ())]
        refusal = self.server.authenticator.refusal(hello.party, metadata, context.auth_context())
        if refusal is not None:
            logger.warning("refused party %r from %s: %s", hello.party[:64], peer, refusal)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "credentials refused")
        joined = self.server.join(hello, peer, inbound, ended)
        if isinstance(joined, str):
            yield pb.LabelMessage(refused=pb.Refused(reason=joined))
            return
        context.add_callback(joined.close)
        yield pb.LabelMessage(welcome=self.server.welcome())
        while True:
            message = joined.outbound.get()
            if message is END:
                return
            yield message


def _read_stream(
    messages: Iterator[pb.FeatureMessage],
    inbound: queue.Queue[Any],
    ended: threading.Event | None = None,
) -> None:
    """Every message of a feature party's stream into ``inbound``, then a :class:`_Gone`
    (and ``ended`` set)."""
    why = "its stream ended"
    try:
        for message in messages:
            inbound.put(message)
    except grpc.RpcError as error:
        why = f"its stream broke ({grpc_details(error)})"
    except Exception as error:  # any failure of the stream ends the session
        why = f"its stream broke ({type(error).__name__})"
    finally:
        inbound.put(_Gone(why))
        if ended is not None:
            ended.set()


def grpc_details(error: grpc.RpcError) -> str:
    """The first line of a gRPC error's details (or its status code)."""
    details = error.details() if hasattr(error, "details") else None
    lines = str(details or "").strip().splitlines()
    if lines:
        return lines[0][:300]
    code = error.code() if hasattr(error, "code") else None
    return str(getattr(code, "name", None) or type(error).__name__)


@dataclasses.dataclass(frozen=True)
class _Expected:
    label: PartyAnnouncement
    feature_parties: tuple[str, ...]
    #: The new rows the label party scores (``None``: it trains).
    predict: PartyAnnouncement | None


def held_epochs(hello: pb.Hello) -> set[int]:
    """The epochs a feature party can continue after: those it announced, or for a party
    that announced none, its initial state (0)."""
    if hello.held_epochs:
        return {int(epoch) for epoch in hello.held_epochs}
    latest = int(hello.resume_epoch)
    return {latest, latest - 1} if latest > 0 else {0}


class LabelServer:
    """The label party's listening end: admits the expected feature parties (credentials,
    protocol version, agreement) and hands one :class:`RemoteFeatureParty` per party.

    A party that connects again (same name, same credentials, same agreement) replaces
    its previous stream; :meth:`recover` waits for the parties lost mid-run to do so.
    A connection that sends no ``Hello`` within ``hello_timeout`` seconds is dropped.
    """

    def __init__(
        self,
        label: PartyAnnouncement,
        feature_parties: Sequence[str],
        credentials: ServerCredentials,
        authenticator: Authenticator,
        *,
        idle_timeout: float = 300.0,
        first_epoch: int = 0,
        predict: PartyAnnouncement | None = None,
        hello_timeout: float = 30.0,
    ) -> None:
        self._expected = _Expected(label, tuple(sorted(feature_parties)), predict)
        self.credentials = credentials
        self.authenticator = authenticator
        self.idle_timeout = idle_timeout
        self.hello_timeout = hello_timeout
        #: The epoch every party continues from (the last one they all hold).
        self._held_epoch = first_epoch
        self._sessions: dict[str, _Session] = {}
        self._traffic = {party: _Traffic() for party in self._expected.feature_parties}
        self._failure: AccordError | None = None
        #: Once training started, a refused party no longer ends the run (it may come back).
        self._running = False
        self._changed = threading.Condition()
        self._server: grpc.Server | None = None
        self.port: int | None = None

    def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0: a free one); the bound port."""
        workers = 4 * len(self._expected.feature_parties) + 4
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers),
            options=[*channel_options(MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)],
        )
        pb_grpc.add_VerticalServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]
        address = format_address(host, port)
        try:
            bound = server.add_secure_port(address, server_tls(self.credentials))
        except RuntimeError as error:
            raise ConfigurationError(f"--listen {address}: cannot listen: {error}") from error
        if bound == 0:
            raise ConfigurationError(f"--listen {address}: cannot listen there")
        server.start()
        self._server, self.port = server, int(bound)
        logger.info("listening on %s (mutual TLS)", format_address(host, bound))
        return int(bound)

    def welcome(self) -> pb.Welcome:
        expected = self._expected
        return pb.Welcome(
            label_party=expected.label.party,
            parties=[expected.label.party, *expected.feature_parties],
            first_epoch=self._held_epoch,
        )

    def join(
        self,
        hello: pb.Hello,
        peer: str,
        inbound: queue.Queue[Any] | None = None,
        ended: threading.Event | None = None,
    ) -> _Session | str:
        """Admit an authenticated party, or the one line that refuses it. Before training,
        a disagreement (alignment, rows, settings, epochs held) also ends the label party's
        own run; once it trains, the refused party may still come back in time."""
        expected = self._expected
        party = hello.party
        if hello.protocol_version != PROTOCOL_VERSION:
            return (
                f"protocol version {hello.protocol_version} is not supported; the label party"
                f" speaks version {PROTOCOL_VERSION}"
            )
        if party not in expected.feature_parties:
            return (
                f"party {party!r} is not a feature party of this run"
                f" (expected {', '.join(expected.feature_parties)})"
            )
        with self._changed:
            first = self._held_epoch
        held = held_epochs(hello)
        if first not in held:
            return self._refuse(
                f"party {party!r} holds the state after epoch"
                f" {' or '.join(str(e) for e in sorted(held))}, the label party continues"
                f" after epoch {first} (a restarted party needs --resume and its --checkpoint"
                " FILE; to start over, start every party without --resume)"
            )
        try:
            check_announcements(expected.label, [announcement_of(hello)])
            _check_predict(expected.predict, hello)
        except AccordError as error:
            return self._refuse(str(error))
        with self._changed:
            previous = self._sessions.get(party)
            session = _Session(party, peer, inbound, ended)
            self._sessions[party] = session
            self._changed.notify_all()
        if previous is None:
            logger.info("party %r joined from %s", party, peer)
        else:
            previous.drop("it connected again")
            logger.info("party %r connected again from %s", party, peer)
        return session

    def advance(self, next_epoch: int) -> None:
        """Every party now holds the state after ``next_epoch``: a party rejoining from here
        on continues from it (a feature party keeps its last two epochs, so one that
        redials while the label party is still at the previous one is admitted too)."""
        with self._changed:
            self._held_epoch = next_epoch

    def _refuse(self, reason: str) -> str:
        with self._changed:
            if not self._running and self._failure is None:
                self._failure = PeerError(reason)
            self._changed.notify_all()
        logger.warning("refused: %s", reason)
        return reason

    def _links(self) -> dict[str, RemoteFeatureParty]:
        return {
            party: RemoteFeatureParty(self._sessions[party], self.idle_timeout, traffic)
            for party, traffic in self._traffic.items()
        }

    def wait_for_parties(
        self, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> dict[str, RemoteFeatureParty]:
        """Every expected feature party, once each has joined; a refused agreement or the
        timeout is one :class:`PeerError` line."""
        deadline = clock() + timeout
        expected = self._expected.feature_parties
        with self._changed:
            while self._failure is None and set(self._sessions) != set(expected):
                left = deadline - clock()
                if left <= 0:
                    missing = sorted(set(expected) - set(self._sessions))
                    raise PeerError(
                        f"feature parties {', '.join(missing)} did not join within {timeout:g} s"
                    )
                self._changed.wait(min(left, 1.0))
            if self._failure is not None:
                raise self._failure
            self._running = True
            return self._links()

    def recover(
        self,
        lost: PartyLostError,
        held_epoch: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> dict[str, RemoteFeatureParty]:
        """After ``lost``: forget the lost stream, and once every feature party is
        connected again (within ``timeout`` seconds, or one :class:`PeerError` line) the
        links to continue with, from ``held_epoch`` (the parties must be told to restore
        it: :meth:`RemoteFeatureParty.restore`)."""
        with self._changed:
            self._held_epoch = held_epoch
            if lost.session is not None and self._sessions.get(lost.party) is lost.session:
                del self._sessions[lost.party]
        if lost.session is not None:
            lost.session.drop("the label party forgot this stream")
        deadline = clock() + timeout
        expected = set(self._expected.feature_parties)
        with self._changed:
            while self._forget_ended() != expected:
                left = deadline - clock()
                if left <= 0:
                    missing = sorted(expected - set(self._sessions))
                    raise PeerError(
                        f"party {', '.join(repr(p) for p in missing)} did not come back within"
                        f" {timeout:g} s ({lost})"
                    )
                self._changed.wait(min(left, 1.0))
            return self._links()

    def _forget_ended(self) -> set[str]:
        """The parties connected now; a session whose stream has ended (another party lost
        at the same time) is forgotten, so it is waited for in the same window. Called
        with ``_changed`` held."""
        for party, session in list(self._sessions.items()):
            if session.ended.is_set():
                del self._sessions[party]
                logger.warning("party %r is gone too; waiting for it as well", party)
        return set(self._sessions)

    def abort(self, reason: str) -> None:
        """Tell every connected feature party the run ended before it was over, and why,
        and end its stream: it ends at once instead of redialling a label party that is
        not coming back."""
        with self._changed:
            sessions = [s for s in self._sessions.values() if not s.ended.is_set()]
        for session in sessions:
            session.outbound.put(pb.LabelMessage(finish=pb.Finish(reason=reason, failed=True)))
            session.close()

    def stop(self, grace: float = 2.0) -> None:
        """End every stream and stop listening."""
        with self._changed:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close()
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
            self._server = None


def _check_predict(expected: PartyAnnouncement | None, hello: pb.Hello) -> None:
    """Both parties score the same new rows (or both train)."""
    if expected is None:
        if hello.predict_rows:
            raise ProtocolError(
                f"party {hello.party!r} came to score new rows; the label party is training"
            )
        return
    if not hello.predict_rows:
        raise ProtocolError(
            f"party {hello.party!r} came to train; the label party is scoring new rows"
        )
    check_announcements(
        expected,
        [
            PartyAnnouncement(
                hello.party,
                int(hello.predict_rows),
                expected.settings_fingerprint,
                hello.predict_alignment_fingerprint or None,
            )
        ],
    )


def links_bytes(links: Mapping[str, RemoteFeatureParty]) -> tuple[int, int]:
    """Bytes sent to and received from every feature party so far."""
    return (
        sum(link.bytes_sent for link in links.values()),
        sum(link.bytes_received for link in links.values()),
    )
