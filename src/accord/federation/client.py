"""The node process's transport: :class:`NodeClient` keeps a session with the server.

The node opens a stream, registers, and answers the server's messages one at a time with
its :class:`~accord.federation.worker.NodeWorker` (which keeps data and model in memory).
When the server goes away the client reconnects with exponential backoff and jitter,
capped at ``reconnect_max`` (2 s by default, so that a node is back well within a resumed
server's ``--registration-timeout``), and registers again; the server then sends full
weights. It logs once per change of state (connected, lost, retrying), not every attempt,
and gives up after ``give_up_after`` seconds without a session (600 by default). A refusal
(credentials, protocol version, roster, scenario) is final and raises :class:`PeerError`,
and so does a plaintext node facing a TLS server (it names the likely cause).

Testing failpoints (``ACCORD_FAILPOINT``, comma-separated, parsed by :mod:`accord.failpoints`;
read by ``accord node``):
``exit@R`` kills the node with SIGKILL when round R starts; ``stall@R:S`` sleeps S seconds
before answering round R; ``nan@R`` and ``shape@R`` send a first gradient full of NaN or
one element short in round R. R is the 0-based round index of the protocol (``round`` in
``metrics.jsonl``); log lines number rounds from 1, so ``exit@2`` logs "round 3".
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from accord import __version__
from accord.credentials.auth import NodeCredentials
from accord.credentials.tls import bearer_metadata, channel_tls
from accord.errors import AccordError, ConfigurationError, PeerError, ProtocolError
from accord.failpoints import Failpoint
from accord.federation.fingerprint import Fingerprint
from accord.federation.grid import RunSpec
from accord.federation.proto import federation_pb2 as pb
from accord.federation.proto import federation_pb2_grpc as pb_grpc
from accord.federation.scaling_wire import moments_to_proto, standardisation_from_proto
from accord.federation.tensors import (
    DEFAULT_CHUNK_BYTES,
    PROTOCOL_VERSION,
    TensorAssembler,
    decode_buffers,
    encode_buffers,
    encode_tensor,
)
from accord.federation.transport_settings import channel_options
from accord.federation.welcome import spec_from_welcome
from accord.federation.worker import NodeWorker
from accord.rounds import NodeUpdate

__all__ = [
    "DEFAULT_GIVE_UP_AFTER",
    "NodeClient",
    "NodeSettings",
    "server_speaks_tls",
]

logger = logging.getLogger(__name__)

_FINAL_CODES = {
    grpc.StatusCode.UNAUTHENTICATED: "the server refused this node's credentials",
    grpc.StatusCode.PERMISSION_DENIED: "the server refused this node's credentials",
    grpc.StatusCode.FAILED_PRECONDITION: "the server refused this node",
    grpc.StatusCode.INVALID_ARGUMENT: "the server refused this node's messages",
}


#: Seconds a node keeps trying to reach its server before it exits (``--give-up-after``).
DEFAULT_GIVE_UP_AFTER = 600.0


@dataclass(frozen=True)
class NodeSettings:
    """How a node reaches its server.

    ``server`` is ``HOST:PORT``; ``insecure`` uses plaintext (no TLS); ``server_name``
    overrides the name checked against the server certificate; ``reconnect_initial`` and
    ``reconnect_max`` bound the backoff between attempts (default 0.05 s .. 2 s);
    ``give_up_after`` seconds without a session ends the node (default 600; ``None``:
    never);
    ``keep_alive`` serves the next run after a shutdown instead of exiting."""

    server: str
    insecure: bool = False
    server_name: str | None = None
    reconnect_initial: float = 0.05
    reconnect_max: float = 2.0
    give_up_after: float | None = DEFAULT_GIVE_UP_AFTER
    keep_alive: bool = False
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_message_bytes: int = 4 << 20
    failpoints: tuple[Failpoint, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        host, _, port = self.server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"server: expected HOST:PORT, got {self.server!r}")
        if not 1024 <= self.chunk_bytes <= self.max_message_bytes - 4096:
            raise ConfigurationError(
                f"chunk_bytes: expected 1024 .. {self.max_message_bytes - 4096}, got "
                f"{self.chunk_bytes!r}"
            )
        if self.give_up_after is not None and not self.give_up_after > 0:
            raise ConfigurationError(
                f"give_up_after: expected seconds > 0, got {self.give_up_after!r}"
            )
        if not 0 < self.reconnect_initial <= self.reconnect_max:
            raise ConfigurationError(
                "reconnect: expected 0 < reconnect_initial <= reconnect_max, got "
                f"{self.reconnect_initial!r} and {self.reconnect_max!r}"
            )


class _SessionEndedError(Exception):
    """The stream broke; reconnect. ``args``: (registered, short reason)."""


def server_speaks_tls(address: str, timeout: float = 2.0) -> bool:
    """Whether the server at ``HOST:PORT`` completes a TLS handshake (certificate not
    checked: this only tells a plaintext node why the server keeps closing its connection)."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return tls.version() is not None
    except (OSError, ValueError):
        return False


def _short(details: str) -> str:
    """The last part of a gRPC error's details (the cause, without the address list)."""
    tail = details.rsplit(": ", 1)[-1].strip()
    return tail or details


class NodeClient:
    """Runs one node until the server shuts the run down (or forever, with keep_alive).

    ``fingerprint`` is sent at registration (see :mod:`accord.federation.fingerprint`): a
    node holding a partition of a built-in scenario sends that scenario's part."""

    def __init__(
        self,
        worker: NodeWorker,
        settings: NodeSettings,
        credentials: NodeCredentials | None,
        *,
        rng: np.random.Generator,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        parent_pid: int | None = None,
        fingerprint: Fingerprint | None = None,
    ) -> None:
        if credentials is None and not settings.insecure:
            raise ConfigurationError("a node needs credentials unless it runs --insecure")
        self.worker = worker
        self.settings = settings
        self.credentials = credentials
        self.rng = rng
        self.clock = clock
        self.sleep = sleep
        self.parent_pid = parent_pid
        self.fingerprint = fingerprint or Fingerprint()
        self.sessions = 0
        self._failpoints = {(p.action, p.step): p for p in settings.failpoints}

    # ------------------------------------------------------------------ channel

    def _channel(self) -> grpc.Channel:
        options: list[tuple[str, int | str]] = [
            *channel_options(self.settings.max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # Its own connection, even beside other sessions in this process (a load test
            # hosts many): gRPC would otherwise share one between equal channels.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if self.settings.insecure:
            return grpc.insecure_channel(self.settings.server, options=options)
        assert self.credentials is not None
        if self.settings.server_name:
            options.append(("grpc.ssl_target_name_override", self.settings.server_name))
        return grpc.secure_channel(
            self.settings.server, channel_tls(self.credentials), options=options
        )

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.credentials)

    # --------------------------------------------------------------------- run

    def run(self) -> str:
        """Serve rounds; return the server's shutdown reason."""
        delay = self.settings.reconnect_initial
        last_session = self.clock()
        server = self.settings.server
        retrying = False  # logged "retrying" since the last session
        tls_checked = False
        while True:
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                raise PeerError("the process that started this node is gone")
            registered = False
            why = ""
            try:
                reason = self._session()
            except _SessionEndedError as ended:
                registered = bool(ended.args and ended.args[0])
                why = str(ended.args[1]) if len(ended.args) > 1 else ""
                reason = None
            if reason is not None:
                logger.info("the server ended the run: %s", reason)
                if not self.settings.keep_alive:
                    return reason
                registered = True
            if (
                not registered
                and not tls_checked
                and self.settings.insecure
                and why == "Socket closed"
            ):
                tls_checked = True  # accepted, then closed: a TLS port?
                if server_speaks_tls(server):
                    raise PeerError(
                        f"the server at {server} speaks TLS and this node runs --insecure "
                        "(plaintext): give it --credentials DIR or --tls-ca with a token or "
                        "client certificate"
                    )
            give_up = self.settings.give_up_after
            if registered:
                delay, last_session = self.settings.reconnect_initial, self.clock()
                retrying = False
                if reason is None:
                    logger.warning("lost the session with the server at %s (%s)", server, why)
            elif not retrying:
                retrying = True
                logger.warning(
                    "cannot reach the server at %s (%s); retrying every %g s at most%s",
                    server,
                    why or "no session",
                    self.settings.reconnect_max,
                    "" if give_up is None else f", for up to {give_up:g} s",
                )
            if give_up is not None and self.clock() - last_session > give_up:
                raise PeerError(
                    f"no session with the server at {server} for {give_up:g} s (last error: "
                    f"{why or 'none'})"
                )
            pause = delay * (0.5 + self.rng.random())
            logger.debug("reconnecting in %.2f s", pause)
            self.sleep(pause)
            delay = min(self.settings.reconnect_max, delay * 2)

    def _session(self) -> str | None:
        """One stream from registration to shutdown; ``_SessionEndedError(registered)`` if it
        breaks."""
        outbox: queue.Queue[pb.NodeMessage | None] = queue.Queue()

        def requests() -> Iterator[pb.NodeMessage]:
            while True:
                message = outbox.get()
                if message is None:
                    return
                yield message

        info = self.worker.info()
        outbox.put(
            pb.NodeMessage(
                register=pb.Register(
                    protocol_version=PROTOCOL_VERSION,
                    node_id=info.node_id,
                    sample_count=info.sample_count,
                    n_features=info.n_features,
                    n_classes=info.n_classes,
                    validation_sample_count=info.validation_sample_count,
                    software_version=__version__,
                    fingerprint=dict(self.fingerprint.parts),
                    feature_moments=(
                        None
                        if info.feature_moments is None
                        else moments_to_proto(info.feature_moments)
                    ),
                )
            )
        )
        channel = self._channel()
        registered = False
        stub = pb_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Session(requests(), metadata=self._metadata())
        try:
            handler = _MessageHandler(self, outbox)
            for message in call:
                kind = message.WhichOneof("body")
                if kind == "welcome":
                    handler.welcome(message.welcome)
                    registered = True
                    self.sessions += 1
                elif kind == "shutdown":
                    return str(message.shutdown.reason)
                else:
                    handler.handle(message)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            if code in _FINAL_CODES:
                raise PeerError(f"{_FINAL_CODES[code]}: {details}") from error
            logger.debug("session with %s ended: %s %s", self.settings.server, code, details)
            if not self.settings.insecure and "WRONG_VERSION_NUMBER" in (details or ""):
                raise PeerError(
                    f"the server at {self.settings.server} does not speak TLS (is it running "
                    "--insecure?); TLS handshake failed: WRONG_VERSION_NUMBER"
                ) from error
            raise _SessionEndedError(registered, _short(str(details))) from error
        finally:
            outbox.put(None)
            call.cancel()
            channel.close()
        raise _SessionEndedError(registered, "the server closed the session")


class _MessageHandler:
    """Answers the server's messages on one session."""

    def __init__(self, client: NodeClient, outbox: queue.Queue[pb.NodeMessage | None]) -> None:
        self.client = client
        self.worker = client.worker
        self.outbox = outbox
        self.spec: RunSpec | None = None
        self._pending: tuple[str, int] | None = None
        self._assembler: TensorAssembler | None = None

    def welcome(self, welcome: pb.Welcome) -> None:
        if welcome.protocol_version != PROTOCOL_VERSION:
            raise PeerError(
                f"the server speaks protocol version {welcome.protocol_version}, this node "
                f"{PROTOCOL_VERSION}"
            )
        spec = spec_from_welcome(welcome)
        try:
            info = self.worker.configure(spec)
        except AccordError as error:
            if spec.model is None:
                # Tell the server why; it refuses the node with this line and ends the session.
                logger.warning("this node cannot take part in run %s: %s", spec.run_id, error)
                self.outbox.put(pb.NodeMessage(ready=pb.Ready(problem=str(error)[:500])))
                return
            raise PeerError(f"this node cannot take part in run {spec.run_id}: {error}") from error
        self.spec = spec
        if spec.model is None:
            self.outbox.put(
                pb.NodeMessage(
                    ready=pb.Ready(
                        sample_count=info.sample_count,
                        validation_sample_count=info.validation_sample_count,
                    )
                )
            )
        logger.info(
            "registered with run %s as %s (%s, %d weights)",
            spec.run_id,
            welcome.node_id,
            "user app" if spec.model is None else f"model {spec.model.kind}",
            spec.dim,
        )

    def _fail(self, round_index: int, reason: str) -> None:
        logger.warning("round %d: %s", round_index + 1, reason)
        self.outbox.put(
            pb.NodeMessage(failure=pb.RoundFailure(round_index=round_index, reason=reason))
        )

    def _tensor(self, kind: str, round_index: int, chunk: pb.TensorChunk) -> np.ndarray | None:
        """Feed one chunk; the whole tensor once complete. Raises ProtocolError."""
        assert self.spec is not None
        if self._pending != (kind, round_index) or self._assembler is None:
            self._pending = (kind, round_index)
            self._assembler = TensorAssembler(self.spec.dim * 4)
        array = self._assembler.add(chunk)
        if array is not None:
            self._pending, self._assembler = None, None
        return array

    def handle(self, message: pb.ServerMessage) -> None:
        if self.spec is None:
            raise PeerError("the server sent a round before its Welcome")
        kind = message.WhichOneof("body")
        if kind == "round_start":
            self._round_start(message.round_start)
        elif kind == "second_gradient":
            part = message.second_gradient
            try:
                gradient = self._tensor("second", part.round_index, part.gradient)
                if gradient is None:
                    return
                self.worker.apply_second_gradient(
                    int(part.round_index),
                    gradient,
                    float(part.server_learning_rate),
                    bytes(part.next_weights_sha256),
                    decode_buffers(part.next_buffers) if part.next_buffers else None,
                )
            except ProtocolError as error:
                self._pending, self._assembler = None, None
                self._fail(int(part.round_index), str(error))
        elif kind == "evaluate":
            request = message.evaluate
            try:
                evaluation = self.worker.evaluate(
                    int(request.round_index), bytes(request.weights_sha256)
                )
            except ProtocolError as error:
                self._fail(int(request.round_index), str(error))
                return
            self.outbox.put(
                pb.NodeMessage(
                    evaluate_reply=pb.EvaluateReply(
                        round_index=request.round_index,
                        accuracy=evaluation.accuracy,
                        loss=evaluation.loss,
                        sample_count=evaluation.sample_count,
                    )
                )
            )
        else:
            logger.info("ignoring an unknown message from the server")

    def _round_start(self, start: pb.RoundStart) -> None:
        round_index = int(start.round_index)
        weights = None
        try:
            if start.HasField("global_weights"):
                weights = self._tensor("weights", round_index, start.global_weights)
                if weights is None:
                    return
            standardisation = (
                standardisation_from_proto(start.standardisation)
                if start.HasField("standardisation")
                else None
            )
            self._failpoint_before(round_index)
            started = time.perf_counter()
            answer = self.worker.start_round(
                round_index,
                weights,
                bytes(start.weights_sha256),
                decode_buffers(start.buffers) if start.buffers else None,
                standardisation,
            )
            seconds = time.perf_counter() - started
        except AccordError as error:  # a protocol error, or the user's fit failed
            self._pending, self._assembler = None, None
            self._fail(round_index, str(error))
            return
        buffers = None
        if isinstance(answer, NodeUpdate):
            gradient, buffers = answer.first_gradient, answer.buffers
        else:
            gradient = answer
        gradient = self._failpoint_gradient(round_index, gradient)
        for chunk in encode_tensor(gradient, self.client.settings.chunk_bytes):
            self.outbox.put(
                pb.NodeMessage(
                    first_gradient=pb.FirstGradient(
                        round_index=round_index,
                        gradient=chunk,
                        train_seconds=seconds,
                        buffers=encode_buffers(buffers) if chunk.last else [],
                    )
                )
            )

    # -------------------------------------------------------------- failpoints

    def _failpoint_before(self, round_index: int) -> None:
        points = self.client._failpoints
        if ("exit", round_index) in points:
            logger.warning("failpoint: killing this node in round %d", round_index + 1)
            os.kill(os.getpid(), signal.SIGKILL)
        stall = points.get(("stall", round_index))
        if stall is not None:
            logger.warning("failpoint: stalling %g s in round %d", stall.seconds, round_index + 1)
            self.client.sleep(stall.seconds)

    def _failpoint_gradient(self, round_index: int, gradient: np.ndarray) -> np.ndarray:
        points = self.client._failpoints
        if ("nan", round_index) in points:
            logger.warning("failpoint: sending NaN in round %d", round_index)
            gradient = np.full_like(gradient, np.nan)
        if ("shape", round_index) in points:
            logger.warning("failpoint: sending a short gradient in round %d", round_index)
            gradient = gradient[:-1]
        return gradient
