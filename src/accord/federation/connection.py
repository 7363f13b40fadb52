"""One node's live session on the gRPC server, and the small steps that open, end or answer it.

:func:`registration_info` reads what a ``Register`` message says about its node.
:class:`Connection` holds what the event loop knows of a registered node: its outbox, the
digest of the weights it holds, the request it owes an answer to, and the future a final
refusal resolves. Touched only on the server's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc

from accord.credentials.naming import check_node_id
from accord.errors import ProtocolError
from accord.federation.fingerprint import Fingerprint
from accord.federation.grid import NodeInfo, Replies
from accord.federation.proto import federation_pb2 as pb
from accord.federation.scaling_wire import moments_from_proto
from accord.federation.tensors import TensorAssembler

__all__ = ["Connection", "gather", "registration_info", "retrieve", "stop_writer"]

#: How long a closing session's writer may take to finish the write in flight.
_WRITER_STOP_SECONDS = 2.0


def registration_info(register: pb.Register) -> NodeInfo:
    """The node a ``Register`` message describes (its id, counts, fingerprint, moments).

    A bad node id or fingerprint or malformed moments raise :class:`ProtocolError` or
    :class:`~accord.errors.ConfigurationError` naming the field; nothing else escapes,
    whatever the message holds. Credentials and the protocol version are checked before,
    and admission (:func:`accord.federation.grid.admission_problem`) after.
    """
    problem = check_node_id(register.node_id)
    if problem is not None:
        raise ProtocolError(problem)
    return NodeInfo(
        node_id=register.node_id,
        sample_count=int(register.sample_count),
        n_features=int(register.n_features),
        n_classes=int(register.n_classes),
        validation_sample_count=int(register.validation_sample_count),
        fingerprint=Fingerprint(dict(register.fingerprint)),
        feature_moments=(
            moments_from_proto(register.feature_moments)
            if register.HasField("feature_moments")
            else None
        ),
    )


class Connection:
    """One node's live session (touched only on the event loop)."""

    def __init__(self, info: NodeInfo, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.info = info
        self.context = context
        self.outbox: asyncio.Queue[pb.ServerMessage | None] = asyncio.Queue()
        self.weights_digest: bytes | None = None
        self.expect: tuple[str, int] | None = None
        self.future: asyncio.Future[tuple[str, Any, float]] | None = None
        self.assembler: TensorAssembler | None = None
        self.task: asyncio.Task[Any] | None = None
        #: Set to (status, reason) when the server ends this session itself (a final refusal).
        self.refused: asyncio.Future[tuple[grpc.StatusCode, str]] = (
            asyncio.get_running_loop().create_future()
        )
        #: The metadata and TLS auth context it registered with, checked again every round.
        self.credentials: tuple[list[tuple[str, str | bytes]], Any] = ([], {})

    @property
    def node_id(self) -> str:
        return self.info.node_id

    def send(self, message: pb.ServerMessage | None) -> None:
        self.outbox.put_nowait(message)

    def resolve(self, outcome: tuple[str, Any, float]) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(outcome)
        self.expect, self.future, self.assembler = None, None, None


def retrieve(task: asyncio.Future[Any]) -> None:
    """Consume the outcome of a read left pending when a session is ended locally."""
    if not task.cancelled():
        task.exception()


async def stop_writer(connection: Connection, writer: asyncio.Task[None]) -> None:
    """Let the session's writer finish the write in flight (gRPC cannot end a stream with a
    write pending), then stop it."""
    if not writer.done():
        connection.send(None)
        await asyncio.wait({writer}, timeout=_WRITER_STOP_SECONDS)
    writer.cancel()


def gather(
    waiting: Mapping[str, tuple[Connection, asyncio.Future[tuple[str, Any, float]]]],
    late: str,
    replies: Replies,
) -> None:
    """Each awaited node's answer into ``replies``; one still missing fails as ``late``."""
    for node, (connection, future) in waiting.items():
        if not future.done():
            connection.resolve(("failed", late, 0.0))
        status, value, seconds = future.result()
        if status == "ok":
            replies.values[node] = value
            replies.work_seconds[node] = seconds
        else:
            replies.failures[node] = str(value)
