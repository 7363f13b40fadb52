"""The peer link a party's run talks through, and an in-memory one for tests.

A party's run (:class:`~accord.tee.runtime.relay.PartyRun`) sees each peer as a
:class:`PeerLink`: a peer name, whether this side starts the handshake, and frames sent
and received whole (handshake messages, batches of sealed records, ``ABORT``). The runtime
provides TCP links (:class:`accord.tee.runtime.transport.TcpPeerLink`, opened by
:func:`~accord.tee.runtime.transport.connect_links`); :func:`memory_link_pair` gives two
linked in-memory ends, so two parties align in one process (as httpx's ``MockTransport``
stands in for the network behind the same client).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from accord.errors import AccordError, AttestationError, PeerError, ProtocolError
from accord.tee.core.wire import MAX_PEER_FRAME, PeerFrame

__all__ = [
    "ABORT_CATEGORIES",
    "MemoryPeerLink",
    "PeerLink",
    "abort_error",
    "memory_link_pair",
]

#: Opaque words a party may send in ``ABORT``.
ABORT_CATEGORIES = ("attestation", "channel", "input", "protocol", "peer", "internal")

Buffer = bytes | bytearray | memoryview


class PeerLink(Protocol):
    """One link to one peer's host, after the hello exchange."""

    @property
    def name(self) -> str:
        """The peer's party name, as it announced it."""
        ...

    @property
    def address(self) -> str:
        """Where the peer is, for messages."""
        ...

    @property
    def initiator(self) -> bool:
        """True when this side starts the enclave handshake (it dialled)."""
        ...

    async def send(self, kind: PeerFrame, body: Buffer = b"") -> None:
        """Send one frame; a broken link raises :class:`~accord.errors.PeerError`."""
        ...

    async def receive(self) -> tuple[PeerFrame, bytes | bytearray]:
        """The next frame; ``ABORT`` from the peer, a timeout or a closed link raise."""
        ...

    async def abort(self, category: str) -> None:
        """Tell the peer this party gives up (one opaque word, best effort), then close."""
        ...

    async def close(self) -> None:
        """Close the link (idempotent)."""
        ...


def abort_error(peer: str, body: bytes | bytearray) -> AccordError:
    """The error an ``ABORT`` frame from ``peer`` raises (the word only; never a reason)."""
    word = body.decode("ascii", "replace")
    category = word if word in ABORT_CATEGORIES else "unknown reason"
    if category == "attestation":
        return AttestationError(
            f"peer {peer!r} refused the attestation (its own log has the reason)"
        )
    return PeerError(f"peer {peer!r} aborted the session ({category}; its own log has the reason)")


_CLOSED = None


class MemoryPeerLink:
    """One end of an in-memory link (:func:`memory_link_pair`); frames are copied whole."""

    def __init__(
        self,
        name: str,
        *,
        initiator: bool,
        inbox: asyncio.Queue[tuple[PeerFrame, bytes] | None],
        outbox: asyncio.Queue[tuple[PeerFrame, bytes] | None],
    ) -> None:
        self._name = name
        self._initiator = initiator
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def address(self) -> str:
        return f"memory:{self._name}"

    @property
    def initiator(self) -> bool:
        return self._initiator

    async def send(self, kind: PeerFrame, body: Buffer = b"") -> None:
        size = memoryview(body).nbytes
        if size > MAX_PEER_FRAME:
            raise ProtocolError(f"frame of {size} bytes exceeds the limit {MAX_PEER_FRAME}")
        if self._closed:
            raise PeerError(f"peer {self._name!r}: the link is closed")
        self._outbox.put_nowait((kind, bytes(body)))
        self.bytes_sent += size

    async def receive(self) -> tuple[PeerFrame, bytes | bytearray]:
        item = await self._inbox.get()
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # every later receive sees the end too
            raise PeerError(
                f"peer {self._name!r} ({self.address}) closed the connection before the end "
                "of the session"
            )
        kind, body = item
        self.bytes_received += len(body)
        if kind is PeerFrame.ABORT:
            raise abort_error(self._name, body)
        return kind, bytearray(body)

    async def abort(self, category: str) -> None:
        if not self._closed:
            self._outbox.put_nowait((PeerFrame.ABORT, category.encode()))
        await self.close()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put_nowait(_CLOSED)


def memory_link_pair(first: str, second: str) -> tuple[MemoryPeerLink, MemoryPeerLink]:
    """Two linked ends: the one party ``first`` holds (naming its peer ``second``, and
    starting the handshake), and the one ``second`` holds. Call inside the event loop."""
    to_second: asyncio.Queue[tuple[PeerFrame, bytes] | None] = asyncio.Queue()
    to_first: asyncio.Queue[tuple[PeerFrame, bytes] | None] = asyncio.Queue()
    held_by_first = MemoryPeerLink(second, initiator=True, inbox=to_first, outbox=to_second)
    held_by_second = MemoryPeerLink(first, initiator=False, inbox=to_second, outbox=to_first)
    return held_by_first, held_by_second
