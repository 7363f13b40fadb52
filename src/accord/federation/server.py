"""The gRPC transport of the server: :class:`GrpcGrid`.

An asyncio gRPC server runs on its own thread; the round driver calls the grid's blocking
methods from the main thread, and each call runs as a coroutine on that loop. Every node
holds one bidirectional stream (``Federation.Session``). Per node, the grid tracks the
digest of the global weights the node is known to hold, so a round start carries the full
weights only to nodes that (re)joined or fell out of step; the others receive the digest
and check their copy against it.

A node can only hurt itself: bad credentials, a wrong protocol version, an unknown id,
malformed or oversized tensors, messages out of order, silence or disconnection all end
in a logged reason and, for the round, a ``failures`` entry — never in an exception on the
server's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from accord.aggregation.base import FloatArray
from accord.credentials.auth import Authenticator, ServerCredentials
from accord.credentials.tls import server_tls
from accord.errors import ConfigurationError, ProtocolError
from accord.federation.connection import (
    Connection,
    gather,
    retrieve,
    stop_writer,
)
from accord.federation.grid import (
    Evaluation,
    Grid,
    NodeInfo,
    Replies,
    RunSpec,
)
from accord.federation.proto import federation_pb2 as pb
from accord.federation.proto import federation_pb2_grpc as pb_grpc
from accord.federation.registration import Attempt, await_ready, check_register, read_register
from accord.federation.scaling_wire import standardisation_to_proto
from accord.federation.tensors import (
    TensorAssembler,
    decode_buffers,
    encode_buffers,
    encode_tensor,
    state_digest,
    weights_digest,
)
from accord.federation.transport_settings import (
    TransportSettings,
    channel_options,
    format_address,
)
from accord.federation.welcome import welcome_message
from accord.rate_limits import SourceLimiter, source_address
from accord.rounds import NodeUpdate
from accord.training.weights import Weights

__all__ = ["GrpcGrid", "TransportSettings", "channel_options", "format_address"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Servicer(pb_grpc.FederationServicer):
    def __init__(self, grid: GrpcGrid) -> None:
        self.grid = grid

    async def Session(  # noqa: N802 - the gRPC method name
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self.grid._session(context)


class GrpcGrid(Grid):
    """The server end of the federation protocol."""

    def __init__(
        self,
        spec: RunSpec,
        transport: TransportSettings,
        credentials: ServerCredentials | None,
        authenticator: Authenticator,
    ) -> None:
        if credentials is None and not authenticator.open and authenticator.require_client_cert:
            raise ConfigurationError("mutual TLS needs TLS credentials")
        self.spec = spec
        self._digest_of_current: bytes | None = None
        self.transport = transport
        self.credentials = credentials
        self.authenticator = authenticator
        #: Unauthenticated streams and failed registrations, per source address.
        self._limiter = SourceLimiter(transport.limits, logger, what="registration")
        self._connections: dict[str, Connection] = {}
        self._roster: frozenset[str] | None = None
        self._sent = 0
        self._received = 0
        self._next_round = 0
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="accord-grpc-server", daemon=True
        )
        self._thread.start()
        #: Set (and replaced) whenever the set of connections changes or the run is
        #: interrupted; waiters re-check their condition. Setting it never yields, so a
        #: session's cleanup cannot be cut short between removing a node and waking them.
        self._change: asyncio.Event | None = None
        self._interrupted: asyncio.Event | None = None
        self._grace_until = float("inf")
        self._server: grpc.aio.Server | None = None
        try:
            self.port = self._call(self._start())
        except BaseException:
            self._stop_loop()
            raise

    # ---------------------------------------------------------------- plumbing

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()

    async def _start(self) -> int:
        self._change = asyncio.Event()
        self._interrupted = asyncio.Event()
        server = grpc.aio.server(
            options=[*channel_options(self.transport.max_message_bytes), ("grpc.so_reuseport", 0)]
        )
        pb_grpc.add_FederationServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]
        address = format_address(self.transport.host, self.transport.port)
        try:
            if self.credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, server_tls(self.credentials))
        except RuntimeError as error:
            raise ConfigurationError(f"cannot listen on {address}: {error}") from error
        if port == 0:
            raise ConfigurationError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        logger.info(
            "listening on %s (%s)",
            format_address(self.transport.host, port),
            "TLS" if self.credentials is not None else "plaintext",
        )
        return int(port)

    def _notify(self) -> None:
        """Wake every waiter on the connections (on the loop; never yields)."""
        assert self._change is not None
        change, self._change = self._change, asyncio.Event()
        change.set()

    async def _wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Return once ``condition()`` holds (checked at each change) or ``timeout`` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            assert self._change is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._change.wait(), remaining)

    # ----------------------------------------------------------------- sessions

    async def _session(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        source = source_address(context.peer())
        wait = self._limiter.admit(source)
        if wait is None:  # too many attempts open, or a throttled source: logged, rate limited
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many registration attempts from this address; try again later",
            )
        attempt = Attempt(f"the stream from {context.peer()} ended before it registered")
        try:
            if wait:
                await asyncio.sleep(wait)  # a throttled source waits for its turn
            connection, writer = await self._register(context, attempt)
        finally:
            self._limiter.finish(source, attempt.failure)
        await self._serve_node(context, connection, writer)

    async def _register(
        self, context: grpc.aio.ServicerContext[Any, Any], attempt: Attempt
    ) -> tuple[Connection, asyncio.Task[None]]:
        """Read and check the node's Register (and, for a user app, its Ready); attach it."""
        first = await read_register(context, attempt, self.transport.registration_timeout)
        self._received += first.ByteSize()
        info, credentials = await check_register(
            context, attempt, first.register, self.authenticator, self.spec, self._roster
        )
        connection = Connection(info, context)
        connection.credentials = credentials
        connection.task = asyncio.current_task()
        welcome = pb.ServerMessage(
            welcome=welcome_message(self.spec, info.node_id, self._next_round)
        )
        if self.spec.model is None:  # a user app: Welcome, then wait for Ready
            await context.write(welcome)
            self._received += await await_ready(connection, context, attempt, self.spec)
            self._attach(connection)
            writer = asyncio.create_task(self._write_loop(connection))
        else:
            self._attach(connection)
            writer = asyncio.create_task(self._write_loop(connection))
            self._send(connection, welcome)
        attempt.failure = None
        return connection, writer

    async def _serve_node(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        connection: Connection,
        writer: asyncio.Task[None],
    ) -> None:
        """Answer a registered node's messages until its stream ends or is ended."""
        info = connection.info
        try:
            while True:
                read = asyncio.ensure_future(context.read())
                await asyncio.wait((read, connection.refused), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    # End the stream from here: cancelling this handler would leave it open.
                    read.add_done_callback(retrieve)
                    await stop_writer(connection, writer)  # a write in flight blocks the status
                    code, reason = connection.refused.result()
                    await context.abort(code, reason)
                message = read.result()
                if message is grpc.aio.EOF:
                    break
                self._received += message.ByteSize()
                try:
                    self._on_message(connection, message)
                except ProtocolError as error:
                    logger.warning("node %s broke the protocol: %s", info.node_id, error)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        finally:
            # The end of a stream reaches this handler twice, in either order: its read
            # sees EOF (or fails), and gRPC cancels the handler. The node is detached
            # before the first await here, so the second of them cannot skip it (it did:
            # the server then waited out every round's deadline for a dead node).
            self._detach(connection, "disconnected")
            await asyncio.shield(stop_writer(connection, writer))

    def _attach(self, connection: Connection) -> None:
        old = self._connections.get(connection.node_id)
        if old is not None:
            logger.warning("node %s opened a new session; closing its old one", old.node_id)
            self._detach(old, "superseded by a new session")
            if old.task is not None:
                old.task.cancel()
        self._connections[connection.node_id] = connection
        logger.info(
            "node %s registered (%d samples); %d connected",
            connection.node_id,
            connection.info.sample_count,
            len(self._connections),
        )
        self._notify()

    def _detach(self, connection: Connection, reason: str) -> None:
        connection.resolve(("failed", f"node {reason}", 0.0))
        if self._connections.get(connection.node_id) is connection:
            del self._connections[connection.node_id]
            if not self._closed:
                logger.warning("node %s %s", connection.node_id, reason)
            self._notify()

    def _send(self, connection: Connection, *messages: pb.ServerMessage) -> None:
        """Queue ``messages`` for the node; their bytes count as sent in the round that
        queued them (a round's figure does not depend on when the writes end)."""
        for message in messages:
            self._sent += message.ByteSize()
            connection.send(message)

    async def _write_loop(self, connection: Connection) -> None:
        try:
            while True:
                message = await connection.outbox.get()
                if message is None:
                    return
                await connection.context.write(message)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the stream is gone: the reader notices and detaches
            logger.debug("writing to node %s failed: %s", connection.node_id, error)

    def _revoked(self, connection: Connection) -> bool:
        """Whether the credentials the node registered with are no longer accepted (a
        renewed token, a revoked certificate); its session is then ended, refused."""
        if self.authenticator.open:
            return False
        problem = self.authenticator.refusal(connection.node_id, *connection.credentials)
        if problem is None:
            return False
        logger.warning(
            "node %s: its credentials are no longer accepted (%s); ending its session",
            connection.node_id,
            problem,
        )
        if not connection.refused.done():
            connection.refused.set_result((grpc.StatusCode.UNAUTHENTICATED, "credentials refused"))
        return True

    def _on_first_gradient(self, connection: Connection, part: pb.FirstGradient) -> None:
        if connection.expect != ("first", part.round_index) or connection.assembler is None:
            logger.info(
                "ignoring a late or unexpected first gradient from node %s (round %d)",
                connection.node_id,
                part.round_index + 1,
            )
            return
        try:
            array = connection.assembler.add(part.gradient)
        except ProtocolError as error:
            connection.resolve(("failed", f"malformed first gradient: {error}", 0.0))
            return
        if array is None:
            return  # more chunks to come
        value: object = array
        if part.buffers:
            try:
                value = NodeUpdate(array, decode_buffers(part.buffers))  # type: ignore[arg-type]
            except ProtocolError as error:
                connection.resolve(("failed", f"malformed buffers: {error}", 0.0))
                return
        connection.resolve(("ok", value, float(part.train_seconds)))

    def _on_message(self, connection: Connection, message: pb.NodeMessage) -> None:
        kind = message.WhichOneof("body")
        if kind == "first_gradient":
            self._on_first_gradient(connection, message.first_gradient)
        elif kind == "evaluate_reply":
            reply = message.evaluate_reply
            if connection.expect != ("evaluate", reply.round_index):
                logger.info("ignoring a late evaluation from node %s", connection.node_id)
                return
            accuracy, loss = float(reply.accuracy), float(reply.loss)
            if not (0.0 <= accuracy <= 1.0 and np.isfinite(loss) and reply.sample_count > 0):
                connection.resolve(("failed", "malformed evaluation reply", 0.0))
                return
            connection.resolve(("ok", Evaluation(accuracy, loss, int(reply.sample_count)), 0.0))
        elif kind == "failure":
            failure = message.failure
            connection.weights_digest = None  # its copy can no longer be trusted
            reason = failure.reason[:300]
            logger.warning(
                "node %s failed round %d: %s", connection.node_id, failure.round_index + 1, reason
            )
            if connection.expect is not None and connection.expect[1] == failure.round_index:
                connection.resolve(("failed", f"node reported: {reason}", 0.0))
        elif kind == "register":
            raise ProtocolError("Register sent twice on one session")
        else:
            logger.info("ignoring an unknown message from node %s", connection.node_id)

    # ------------------------------------------------------------ Grid methods

    def connected(self) -> dict[str, NodeInfo]:
        async def snapshot() -> dict[str, NodeInfo]:
            return {node: c.info for node, c in self._connections.items()}

        return self._call(snapshot())

    def wait_for_nodes(
        self, count: int, timeout: float, among: frozenset[str] | None = None
    ) -> dict[str, NodeInfo]:
        return self._call(self._wait_for_nodes(count, timeout, among))

    async def _wait_for_nodes(
        self, count: int, timeout: float, among: frozenset[str] | None
    ) -> dict[str, NodeInfo]:
        def present() -> dict[str, NodeInfo]:
            return {
                node: c.info
                for node, c in self._connections.items()
                if among is None or node in among
            }

        def ready() -> bool:
            return len(present()) >= count or self._is_interrupted()

        await self._wait_until(ready, timeout)
        return present()

    def _is_interrupted(self) -> bool:
        return self._interrupted is not None and self._interrupted.is_set()

    def interrupt(self, grace: float) -> None:
        def on_loop() -> None:
            if self._interrupted is None or self._interrupted.is_set():
                return
            self._grace_until = self._loop.time() + grace
            self._interrupted.set()
            self._notify()

        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(on_loop)

    async def _wait_until_deadline(self, futures: set[asyncio.Future[Any]], timeout: float) -> bool:
        """Wait for ``futures`` up to ``timeout`` seconds, or until the grace after an
        :meth:`interrupt` ends, if sooner; ``True`` if the grace cut the wait short."""
        assert self._interrupted is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # One future for "all answered", counted down by each answer: waiting on every
        # pending future again after each answer costs O(N²) callbacks a round.
        every = loop.create_future()
        left = len({future for future in futures if not future.done()})

        def one_done(_: asyncio.Future[Any]) -> None:
            nonlocal left
            left -= 1
            if left == 0 and not every.done():
                every.set_result(None)

        for future in futures:
            if not future.done():
                future.add_done_callback(one_done)
        if left == 0:
            every.set_result(None)
        stop = asyncio.ensure_future(self._interrupted.wait())
        try:
            while not every.done():
                limit = min(deadline, self._grace_until) if stop.done() else deadline
                remaining = limit - loop.time()
                if remaining <= 0:
                    return limit < deadline
                watched: set[asyncio.Future[Any]] = {every} if stop.done() else {every, stop}
                await asyncio.wait(watched, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            return False
        finally:
            stop.cancel()
            for future in futures:
                future.remove_done_callback(one_done)

    def fix_roster(self, roster: tuple[str, ...]) -> None:
        async def fix() -> None:
            self._roster = frozenset(roster)
            for node, connection in list(self._connections.items()):
                if node not in self._roster:
                    # Cancel its session: it registers again and is refused (not in roster).
                    logger.warning("node %s is not in the roster; closing its session", node)
                    self._detach(connection, "left out of the roster")
                    if connection.refused.done():  # already refused (revoked, say)
                        continue
                    connection.refused.set_result(
                        (
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"node {node} is not in this run's roster",
                        )
                    )

        self._call(fix())

    def collect_first_gradients(
        self,
        round_index: int,
        weights: FloatArray,
        node_ids: tuple[str, ...],
        timeout: float,
        buffers: Weights | None = None,
    ) -> Replies:
        return self._call(self._collect("first", round_index, weights, node_ids, timeout, buffers))

    def collect_evaluations(
        self,
        round_index: int,
        weights: FloatArray,
        node_ids: tuple[str, ...],
        timeout: float,
        buffers: Weights | None = None,
    ) -> Replies:
        return self._call(
            self._collect("evaluate", round_index, weights, node_ids, timeout, buffers)
        )

    async def _collect(
        self,
        kind: str,
        round_index: int,
        weights: FloatArray,
        node_ids: Sequence[str],
        timeout: float,
        buffers: Weights | None = None,
    ) -> Replies:
        self._next_round = round_index
        digest = state_digest(weights, buffers or {})
        if kind == "first":
            self._digest_of_current = digest  # what the second gradient starts from
        full: list[pb.ServerMessage] | None = None
        replies = Replies()
        waiting: dict[str, tuple[Connection, asyncio.Future[tuple[str, Any, float]]]] = {}
        loop = asyncio.get_running_loop()
        for node in node_ids:
            connection = self._connections.get(node)
            if connection is None:
                replies.failures[node] = "not connected"
                continue
            if kind == "first" and self._revoked(connection):
                replies.failures[node] = "credentials refused (revoked since it registered)"
                continue
            connection.resolve(("failed", "superseded by a newer request", 0.0))
            future: asyncio.Future[tuple[str, Any, float]] = loop.create_future()
            connection.expect, connection.future = (kind, round_index), future
            if kind == "evaluate":
                self._send(
                    connection,
                    pb.ServerMessage(
                        evaluate=pb.EvaluateRequest(round_index=round_index, weights_sha256=digest)
                    ),
                )
            elif connection.weights_digest == digest:
                connection.assembler = TensorAssembler(self.spec.dim * 8)
                self._send(
                    connection,
                    pb.ServerMessage(
                        round_start=pb.RoundStart(round_index=round_index, weights_sha256=digest)
                    ),
                )
            else:
                connection.assembler = TensorAssembler(self.spec.dim * 8)
                if full is None:
                    full = self._full_round_start(round_index, digest, weights, buffers)
                self._send(connection, *full)
                connection.weights_digest = digest  # unless the node reports a failure
            waiting[node] = (connection, future)
        cut_short = await self._wait_until_deadline(
            {future for _, future in waiting.values()}, timeout
        )
        what = "first gradient" if kind == "first" else "evaluation"
        late = (
            f"no {what} before the server stopped"
            if cut_short
            else f"no {what} within the {timeout:g} s round deadline"
        )
        gather(waiting, late, replies)
        return replies

    def _full_round_start(
        self, round_index: int, digest: bytes, weights: FloatArray, buffers: Weights | None
    ) -> list[pb.ServerMessage]:
        """``RoundStart`` with the whole weights, chunked; buffers and the standardisation
        ride on the message of the last chunk."""
        standardisation = (
            None if self.standardisation is None else standardisation_to_proto(self.standardisation)
        )
        return [
            pb.ServerMessage(
                round_start=pb.RoundStart(
                    round_index=round_index,
                    weights_sha256=digest,
                    global_weights=chunk,
                    buffers=encode_buffers(buffers) if chunk.last else [],
                    standardisation=standardisation,
                )
            )
            for chunk in encode_tensor(weights, self.transport.chunk_bytes)
        ]

    def broadcast_second_gradient(
        self,
        round_index: int,
        second_gradient: FloatArray,
        server_learning_rate: float,
        weights: FloatArray,
        next_weights: FloatArray,
        next_buffers: Weights | None = None,
    ) -> None:
        # The messages are built here, and handed to the loop without waiting for it: the
        # round goes on (conclude, checkpoint) while the loop sends. The loop runs its
        # callbacks in order, so the next round's request follows this one.
        before = self._digest_of_current or weights_digest(weights)
        after = state_digest(next_weights, next_buffers or {})
        messages = [
            pb.ServerMessage(
                second_gradient=pb.SecondGradient(
                    round_index=round_index,
                    gradient=chunk,
                    server_learning_rate=server_learning_rate,
                    next_weights_sha256=after,
                    next_buffers=encode_buffers(next_buffers) if chunk.last else [],
                )
            )
            for chunk in encode_tensor(second_gradient, self.transport.chunk_bytes)
        ]

        def broadcast() -> None:
            for connection in self._connections.values():
                if connection.weights_digest != before:
                    connection.weights_digest = None
                    continue
                self._send(connection, *messages)
                connection.weights_digest = after

        self._loop.call_soon_threadsafe(broadcast)

    def traffic(self) -> tuple[int, int]:
        async def read() -> tuple[int, int]:  # after every send queued before this call
            return self._sent, self._received

        return self._call(read())

    def shutdown(self, reason: str | None) -> None:
        if self._closed:
            return

        async def close() -> None:
            self._closed = True
            for connection in list(self._connections.values()):
                if reason is not None:
                    self._send(connection, pb.ServerMessage(shutdown=pb.Shutdown(reason=reason)))
                connection.send(None)
            if reason is None:  # just go away: the nodes reconnect to the next server
                for connection in list(self._connections.values()):
                    if connection.task is not None:
                        connection.task.cancel()
            await self._wait_until(lambda: not self._connections, self.transport.shutdown_grace)
            if self._server is not None:
                await self._server.stop(0.5)

        try:
            self._call(close())
        finally:
            self._stop_loop()
