"""The host's handle on its enclave: a process, or the enclave session in this process.

:class:`EnclaveHandle` is what a party's run calls (:mod:`accord.tee.runtime.relay`).
:meth:`EnclaveProcess.spawn` launches ``python -m accord.tee.runtime.enclave`` with one end of a
Unix socket pair (:mod:`accord.tee.runtime.launch`; a host that launched it already wraps
the process it got), and :meth:`~EnclaveProcess.ready` awaits the identity it reports;
:meth:`EnclaveProcess.call` sends one call frame and awaits its reply. Calls are serialised
(the enclave serves one at a time). Bulk bodies go out as a list of buffers, back to back,
without being joined, and replies are received straight into one buffer. A failed call
raises the error class the enclave named, with its message; an enclave that dies raises
:class:`~accord.errors.PeerError`.

:class:`InProcessEnclave` runs the same :class:`~accord.tee.core.session.EnclaveSession`
in this process (in a worker thread, one call at a time), its calls and replies encoded as
on the socket: for tests and tools that run whole alignments without processes. It has
no isolation from its host, so it is never what ``accord align`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from accord import errors
from accord.errors import AccordError, PeerError, ProtocolError
from accord.tee.core.identity import EnclaveIdentity
from accord.tee.core.wire import CALL_HEADER, MAX_CALL_META, Call, decode_meta, encode_meta
from accord.tee.runtime.launch import launch_enclave
from accord.tee.runtime.transport import receive_exactly

if TYPE_CHECKING:
    from accord.tee.core.session import EnclaveSession

__all__ = ["EnclaveHandle", "EnclaveProcess", "InProcessEnclave"]

logger = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview

_ERRORS: dict[str, type[AccordError]] = {
    name: getattr(errors, name) for name in errors.__all__ if name != "AccordError"
}


class EnclaveHandle(Protocol):
    """What a party's run needs of its enclave."""

    @property
    def identity(self) -> EnclaveIdentity:
        """What the enclave reported about itself at start (after :meth:`ready`)."""
        ...

    async def ready(self) -> EnclaveIdentity:
        """Wait until the enclave can take calls; its identity."""
        ...

    async def call(
        self, call: Call, meta: dict[str, Any] | None = None, body: Sequence[Buffer] = ()
    ) -> tuple[dict[str, Any], bytearray]:
        """One call and the enclave's reply (parameters, body); errors as the enclave named."""
        ...

    async def close(self) -> None:
        """The run is done: release the enclave."""
        ...

    async def kill(self) -> None:
        """Stop the enclave at once (after a failure): nothing more is released."""
        ...


class EnclaveProcess:
    """A running enclave process and the socket to it.

    :meth:`spawn` only launches the process (cheap, no heavy imports), so a host can start
    its enclave first and let it load while the host itself starts up; :meth:`ready` then
    waits for the enclave's identity.
    """

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._process = process
        self._sock = sock
        self._lock = asyncio.Lock()
        self._identity: EnclaveIdentity | None = None

    @property
    def pid(self) -> int:
        """The enclave's process id."""
        return self._process.pid

    @property
    def identity(self) -> EnclaveIdentity:
        """What the enclave reported about itself at start (after :meth:`ready`)."""
        if self._identity is None:
            raise ProtocolError("the enclave has not reported its identity yet")
        return self._identity

    @classmethod
    def spawn(
        cls,
        *,
        platform_key: Path | None = None,
        debug: bool = False,
        log_level: str = "WARNING",
        python: str = sys.executable,
    ) -> EnclaveProcess:
        """Launch the enclave process (:func:`~accord.tee.runtime.launch.launch_enclave`)."""
        return cls(
            *launch_enclave(
                platform_key=platform_key, debug=debug, log_level=log_level, python=python
            )
        )

    async def ready(self) -> EnclaveIdentity:
        """Wait for the enclave's start-up frame: its identity, or why it could not start."""
        if self._identity is None:
            try:
                reply, _ = await self._receive_reply("start-up")
                self._identity = EnclaveIdentity(**reply["identity"])
            except (KeyError, TypeError) as error:
                await self.kill()
                raise ProtocolError("the enclave's start-up frame carries no identity") from error
            except BaseException:
                await self.kill()
                raise
        return self._identity

    async def call(
        self, call: Call, meta: dict[str, Any] | None = None, body: Sequence[Buffer] = ()
    ) -> tuple[dict[str, Any], bytearray]:
        """Send one call and return the enclave's reply (parameters, body)."""
        loop = asyncio.get_running_loop()
        payload = encode_meta(meta or {})
        size = sum(memoryview(part).nbytes for part in body)
        async with self._lock:
            started = time.perf_counter()
            try:
                await loop.sock_sendall(
                    self._sock, CALL_HEADER.pack(call, len(payload), size) + payload
                )
                for part in body:
                    await loop.sock_sendall(self._sock, part)
            except OSError as error:
                raise await self._died(f"{call.name}: {error}") from error
            reply = await self._receive_reply(call.name)
            logger.debug(
                "enclave %s: %d+%d bytes in, %d out, %.3f s",
                call.name,
                len(payload),
                size,
                len(reply[1]),
                time.perf_counter() - started,
            )
            return reply

    async def _receive_reply(self, what: str) -> tuple[dict[str, Any], bytearray]:
        header = await self._receive(CALL_HEADER.size, what)
        status, meta_size, body_size = CALL_HEADER.unpack(header)
        if meta_size > MAX_CALL_META:
            raise ProtocolError(f"enclave reply to {what}: metadata of {meta_size} bytes")
        reply = decode_meta(bytes(await self._receive(meta_size, what)), f"reply to {what}")
        body = await self._receive(body_size, what)
        if status != 0:
            kind = _ERRORS.get(str(reply.get("error")), ProtocolError)
            raise kind(str(reply.get("message", "enclave error")), detail=reply.get("detail"))
        return reply, body

    async def _receive(self, size: int, what: str) -> bytearray:
        try:
            return await receive_exactly(self._sock, size)
        except (asyncio.IncompleteReadError, OSError) as error:
            raise await self._died(what) from error

    async def _wait(self, timeout: float) -> int | None:
        try:
            return await asyncio.to_thread(self._process.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    async def _died(self, what: str) -> PeerError:
        code = await self._wait(5)
        return PeerError(
            f"the enclave process stopped during {what} "
            f"(exit code {code if code is not None else 'unknown'})"
        )

    async def close(self, timeout: float = 10.0) -> None:
        """Close the socket (the enclave then exits) and reap the process; kill if stuck."""
        self._sock.close()
        if await self._wait(timeout) is None:
            await self.kill()

    async def kill(self) -> None:
        """Stop the enclave at once (after a failure): nothing more is released."""
        self._sock.close()
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        await self._wait(30)


class InProcessEnclave:
    """An :class:`~accord.tee.core.session.EnclaveSession` called in this process.

    Each call's parameters and reply go through the same encoding as on the enclave
    socket, and the session runs in a worker thread, one call at a time, so the event loop
    stays free for the peer links. After :meth:`kill` or :meth:`close` every call fails
    as a dead enclave's would.
    """

    def __init__(self, session: EnclaveSession, identity: EnclaveIdentity) -> None:
        self._session: EnclaveSession | None = session
        self._identity = identity
        self._lock = asyncio.Lock()

    @property
    def identity(self) -> EnclaveIdentity:
        return self._identity

    async def ready(self) -> EnclaveIdentity:
        return self._identity

    async def call(
        self, call: Call, meta: dict[str, Any] | None = None, body: Sequence[Buffer] = ()
    ) -> tuple[dict[str, Any], bytearray]:
        payload = encode_meta(meta or {})
        joined = bytearray().join(body)
        async with self._lock:
            session = self._session
            if session is None:
                raise PeerError(f"the enclave was stopped before {call.name}")
            reply, reply_body = await asyncio.to_thread(
                session.call, int(call), decode_meta(payload, "enclave call"), memoryview(joined)
            )
        return decode_meta(encode_meta(reply), f"reply to {call.name}"), bytearray(reply_body)

    async def close(self) -> None:
        self._session = None

    async def kill(self) -> None:
        self._session = None
