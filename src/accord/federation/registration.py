"""A node's registration, checked on the server's side: its ``Register`` message (its
credentials first, then the protocol version, its fields and whether this run admits it)
and, for a user app's node, its ``Ready`` after ``Welcome``.

Each refusal ends the stream with a gRPC status and a reason for the node, and leaves the
line to log (rate limited by the caller, per source address) in the :class:`Attempt`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import grpc

from accord.credentials.auth import Authenticator
from accord.errors import ConfigurationError, ProtocolError
from accord.federation.connection import Connection, registration_info
from accord.federation.grid import NodeInfo, RunSpec, admission_problem
from accord.federation.proto import federation_pb2 as pb
from accord.federation.tensors import PROTOCOL_VERSION

__all__ = ["READY_TIMEOUT", "Attempt", "await_ready", "check_register", "read_register", "refuse"]

#: Seconds a user app's node has, after Welcome, to build its model and answer Ready.
READY_TIMEOUT = 300.0

#: What a node proved about itself: its call metadata and the TLS auth context.
Credentials = tuple[list[tuple[str, Any]], Any]


@dataclass
class Attempt:
    """A registration in progress: the line to log if it ends now (``None``: it succeeded)."""

    failure: str | None


async def refuse(
    context: grpc.aio.ServicerContext[Any, Any],
    attempt: Attempt,
    code: grpc.StatusCode,
    reason: str,
    line: str,
) -> NoReturn:
    """End a registration: ``reason`` to the node, ``line`` to the log (rate limited)."""
    attempt.failure = line
    await context.abort(code, reason)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def _read_expected(
    context: grpc.aio.ServicerContext[Any, Any],
    attempt: Attempt,
    timeout: float,
    body: str,
    late: tuple[str, str],
    wrong: tuple[str, str],
) -> pb.NodeMessage:
    """The stream's next message, which must have ``body`` and come within ``timeout``
    seconds; ``late`` and ``wrong`` are the (reason, log line) of each refusal."""
    try:
        message = await asyncio.wait_for(context.read(), timeout)
    except TimeoutError:
        await refuse(context, attempt, grpc.StatusCode.DEADLINE_EXCEEDED, *late)
    if message is grpc.aio.EOF or message.WhichOneof("body") != body:
        await refuse(context, attempt, grpc.StatusCode.INVALID_ARGUMENT, *wrong)
    read: pb.NodeMessage = message
    return read


async def read_register(
    context: grpc.aio.ServicerContext[Any, Any], attempt: Attempt, timeout: float
) -> pb.NodeMessage:
    """The stream's first message, which must be a ``Register`` within ``timeout`` seconds."""
    peer = context.peer()
    return await _read_expected(
        context,
        attempt,
        timeout,
        "register",
        ("no Register message in time", f"peer {peer} sent no registration in time"),
        ("the first message must be Register", f"peer {peer} did not send Register first"),
    )


async def check_register(
    context: grpc.aio.ServicerContext[Any, Any],
    attempt: Attempt,
    register: pb.Register,
    authenticator: Authenticator,
    spec: RunSpec,
    roster: frozenset[str] | None,
) -> tuple[NodeInfo, Credentials]:
    """The node's registration and credentials, once the node has proved who it is (first:
    a peer that cannot learns nothing else), speaks this protocol version, sent valid
    fields and is one this run admits (its roster, its scenario)."""
    peer = context.peer()
    refused = f"refused node {register.node_id[:64]!r} from {peer}"
    credentials: Credentials = (
        [(m.key, m.value) for m in (context.invocation_metadata() or ())],
        context.auth_context(),
    )
    refusal = None if authenticator.open else authenticator.refusal(register.node_id, *credentials)
    if refusal is not None:
        await refuse(
            context,
            attempt,
            grpc.StatusCode.UNAUTHENTICATED,
            "credentials refused",
            f"{refused}: {refusal}",
        )
    if register.protocol_version != PROTOCOL_VERSION:
        version = (
            f"protocol version {register.protocol_version} is not supported; this server "
            f"speaks version {PROTOCOL_VERSION}"
        )
        await refuse(
            context, attempt, grpc.StatusCode.FAILED_PRECONDITION, version, f"{refused}: {version}"
        )
    try:
        info = registration_info(register)
    except (ConfigurationError, ProtocolError) as error:
        await refuse(
            context, attempt, grpc.StatusCode.INVALID_ARGUMENT, str(error), f"{refused}: {error}"
        )
    problem = admission_problem(info, spec, roster)
    if problem is not None:
        await refuse(
            context,
            attempt,
            grpc.StatusCode.FAILED_PRECONDITION,
            problem,
            f"node {info.node_id} cannot join: {problem}",
        )
    return info, credentials


async def await_ready(
    connection: Connection,
    context: grpc.aio.ServicerContext[Any, Any],
    attempt: Attempt,
    spec: RunSpec,
) -> int:
    """A user app's node builds its model after Welcome and answers Ready; only then
    does it count as connected. A node that cannot join says why, in one line. Returns
    the bytes read; the node's sample counts go into ``connection.info``."""
    node = connection.node_id
    message = await _read_expected(
        context,
        attempt,
        READY_TIMEOUT,
        "ready",
        ("no Ready message in time", f"node {node} sent no Ready in time"),
        (
            "the message after Welcome must be Ready",
            f"node {node} did not answer Welcome with Ready",
        ),
    )
    ready = message.ready
    problem = ready.problem[:500]
    if not problem:
        connection.info = replace(
            connection.info,
            sample_count=int(ready.sample_count),
            validation_sample_count=int(ready.validation_sample_count),
        )
        if connection.info.sample_count < 1:
            problem = "a node needs at least one training sample"
        elif spec.federated_evaluation and connection.info.validation_sample_count < 1:
            problem = "this run uses federated evaluation; the node has no validation data"
    if problem:
        await refuse(
            context,
            attempt,
            grpc.StatusCode.FAILED_PRECONDITION,
            problem,
            f"node {connection.node_id} cannot join: {problem}",
        )
    return int(message.ByteSize())
