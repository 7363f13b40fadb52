"""TCP links between the parties' hosts (asyncio, non-blocking sockets).

Every party listens on ``--listen`` (if given) and dials every ``--peer`` address, retrying
until a deadline; with ``n`` parties it needs ``n - 1`` links, one per peer (a full mesh:
for each pair, one side lists the other as a peer and the other listens).

On a new connection both sides first send a **hello**, in the clear::

    magic "ACCORD-ALIGN\\0" | protocol version (u16) | length (u32) | JSON {party, session, parties}

so an endpoint that is not Accord, or speaks another protocol version, is reported plainly
(the magic and version keep this layout in every version). Then come frames
(:data:`accord.tee.core.wire.PEER_HEADER`): handshake messages and batches of sealed records that
the hosts relay between their enclaves without being able to read them, and ``ABORT``,
which carries one opaque word (why a party gave up is in its own log only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from accord.errors import (
    AttestationError,
    ConfigurationError,
    PeerError,
    ProtocolError,
)
from accord.rate_limits import RateLimitSettings, SourceLimiter
from accord.tee.core.names import validate_party_name
from accord.tee.core.wire import MAX_PEER_FRAME, PEER_HEADER, PROTOCOL_VERSION, PeerFrame
from accord.tee.runtime.endpoint import Endpoint
from accord.tee.runtime.links import abort_error

__all__ = [
    "HELLO_MAGIC",
    "Endpoint",
    "Hello",
    "TcpPeerLink",
    "abort_category",
    "connect_links",
    "hello_body_size",
    "parse_hello",
    "receive_exactly",
]

logger = logging.getLogger(__name__)

#: First bytes an Accord alignment endpoint sends on every connection.
HELLO_MAGIC = b"ACCORD-ALIGN\x00"
_HELLO_PREFIX = struct.Struct("!13sHI")
_MAX_HELLO = 4096
#: Waits between dials of a peer that is not listening yet: the first, and the longest.
_FIRST_RETRY = 0.002
_MAX_RETRY = 0.02
#: For how long (seconds) a peer that is not listening is dialled again every _MAX_RETRY.
_FAST_RETRIES = 10.0


@dataclass(frozen=True)
class Hello:
    """What a host announces on every connection, in the clear."""

    party: str
    session: str
    parties: int

    def __post_init__(self) -> None:
        validate_party_name(self.party, "party name")
        validate_party_name(self.session, "session")

    def encode(self) -> bytes:
        body = json.dumps(
            {"party": self.party, "session": self.session, "parties": self.parties},
            sort_keys=True,
        ).encode()
        return _HELLO_PREFIX.pack(HELLO_MAGIC, PROTOCOL_VERSION, len(body)) + body


def abort_category(error: BaseException) -> str:
    """The opaque word sent to peers for ``error`` (never its message)."""
    from accord.errors import ChannelError, InputDataError

    if isinstance(error, AttestationError):
        return "attestation"
    if isinstance(error, ChannelError):
        return "channel"
    if isinstance(error, InputDataError):
        return "input"
    if isinstance(error, ProtocolError):
        return "protocol"
    if isinstance(error, PeerError):
        return "peer"
    return "internal"


async def receive_exactly(sock: socket.socket, size: int) -> bytearray:
    """``size`` bytes from ``sock`` into one fresh buffer (one copy, from the kernel)."""
    loop = asyncio.get_running_loop()
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = await loop.sock_recv_into(sock, view[received:])
        if count == 0:
            raise asyncio.IncompleteReadError(bytes(view[:received]), size)
        received += count
    return buffer


class TcpPeerLink:
    """One TCP connection to one peer's host, after the hello exchange (a
    :class:`~accord.tee.runtime.links.PeerLink`).

    Frames move between the socket and whole buffers with the event loop's socket calls
    (``sock_recv_into``/``sock_sendall``): a 16 MiB batch of records is received straight
    into its own buffer and sent from it, with no intermediate stream buffer.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer: Hello,
        address: str,
        initiator: bool,
        idle_timeout: float,
    ) -> None:
        self._sock = sock
        self.peer = peer
        self.address = address
        #: True when this side dialled (it then starts the enclave handshake).
        self.initiator = initiator
        self._idle_timeout = idle_timeout
        self.bytes_sent = 0
        self.bytes_received = 0
        self._receive_failed = asyncio.Event()

    @property
    def name(self) -> str:
        """The peer's party name, as announced in its hello."""
        return self.peer.party

    async def send(self, kind: PeerFrame, body: bytes | bytearray | memoryview = b"") -> None:
        """Send one frame; a broken connection raises :class:`PeerError`."""
        size = memoryview(body).nbytes
        if size > MAX_PEER_FRAME:
            raise ProtocolError(f"frame of {size} bytes exceeds the limit {MAX_PEER_FRAME}")
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(self._sock, PEER_HEADER.pack(kind, size))
            if size:
                await loop.sock_sendall(self._sock, body)
        except OSError as error:
            # What the peer said last (an ABORT, an end of stream) is the better reason:
            # give a concurrent receive a moment to report it first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._receive_failed.wait(), 1.0)
            raise self._lost(error) from error
        self.bytes_sent += PEER_HEADER.size + size

    def _lost(self, error: BaseException) -> PeerError:
        if isinstance(error, asyncio.IncompleteReadError | ConnectionResetError | BrokenPipeError):
            return PeerError(
                f"peer {self.name!r} ({self.address}) closed the connection before the end "
                "of the session"
            )
        return PeerError(f"peer {self.name!r} ({self.address}): network error: {error}")

    async def receive(self) -> tuple[PeerFrame, bytes | bytearray]:
        """The next frame; ``ABORT`` from the peer, a timeout or a closed connection raise."""
        try:
            return await self._receive()
        except BaseException:
            self._receive_failed.set()
            raise

    async def _receive(self) -> tuple[PeerFrame, bytes | bytearray]:
        try:
            header = await asyncio.wait_for(
                receive_exactly(self._sock, PEER_HEADER.size), self._idle_timeout
            )
            kind_code, size = PEER_HEADER.unpack(header)
            if size > MAX_PEER_FRAME:
                raise ProtocolError(f"peer {self.name!r} sent a frame of {size} bytes (too large)")
            body = await asyncio.wait_for(receive_exactly(self._sock, size), self._idle_timeout)
        except TimeoutError as error:  # (an OSError too: caught first)
            raise PeerError(
                f"peer {self.name!r} ({self.address}) sent nothing for {self._idle_timeout:g} s"
            ) from error
        except (asyncio.IncompleteReadError, OSError) as error:
            raise self._lost(error) from error
        self.bytes_received += PEER_HEADER.size + size
        try:
            kind = PeerFrame(kind_code)
        except ValueError as error:
            raise ProtocolError(
                f"peer {self.name!r} sent an unknown frame kind {kind_code}"
            ) from error
        if kind is PeerFrame.ABORT:
            raise abort_error(self.name, body)
        return kind, body

    async def abort(self, category: str, linger: float = 2.0) -> None:
        """Tell the peer this party gives up (best effort), then close.

        After the ``ABORT`` frame the sending side is shut down and incoming bytes are read
        and discarded until the peer closes (at most ``linger`` seconds): closing a socket
        with unread data would reset the connection, and the reset can destroy the ``ABORT``
        before the peer reads it.
        """
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send(PeerFrame.ABORT, category.encode()), linger)
            self._sock.shutdown(socket.SHUT_WR)
            sink = bytearray(1 << 20)
            async with asyncio.timeout(linger):
                while await loop.sock_recv_into(self._sock, sink):
                    pass
        await self.close()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        self._sock.close()


#: How many refused hellos a listener's timeout message names.
_MAX_REFUSALS_NAMED = 3


def hello_body_size(prefix: bytes, address: str) -> int:
    """The body size announced by a hello's fixed prefix; a greeting that is not an
    accord align hello of this version, or announces too large a body, is refused."""
    magic, version, size = _HELLO_PREFIX.unpack(prefix)
    if magic != HELLO_MAGIC:
        raise ProtocolError(f"{address} is not an accord align endpoint (unexpected greeting)")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{address} speaks accord align protocol version {version}; this installation "
            f"speaks version {PROTOCOL_VERSION}: run the same Accord version on every party"
        )
    if size > _MAX_HELLO:
        raise ProtocolError(f"{address} sent a hello of {size} bytes (too large)")
    return int(size)


def parse_hello(body: bytes, own: Hello, address: str) -> Hello:
    """The peer's hello from its JSON body, checked against this party's own: the same
    session and party count, another name. Any defect is one :class:`ProtocolError`."""
    try:
        fields = json.loads(body)
        peer = Hello(str(fields["party"]), str(fields["session"]), int(fields["parties"]))
    except (
        ValueError,
        KeyError,
        TypeError,
        OverflowError,  # "parties": Infinity (a float that int() refuses)
        RecursionError,  # JSON nested deeper than the parser's recursion limit
        ConfigurationError,
    ) as error:
        raise ProtocolError(f"{address} sent a malformed hello ({error})") from error
    if peer.session != own.session:
        raise ProtocolError(
            f"{address} (party {peer.party!r}) is in session {peer.session!r}, "
            f"this party in {own.session!r}"
        )
    if peer.parties != own.parties:
        raise ProtocolError(
            f"{address} (party {peer.party!r}) expects {peer.parties} parties, "
            f"this party {own.parties}"
        )
    if peer.party == own.party:
        raise ProtocolError(
            f"{address} is also named {own.party!r}: give every party its own --party-name"
        )
    return peer


async def _exchange_hello(sock: socket.socket, own: Hello, address: str, timeout: float) -> Hello:
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.sock_sendall(sock, own.encode()), timeout)
    prefix = await asyncio.wait_for(receive_exactly(sock, _HELLO_PREFIX.size), timeout)
    size = hello_body_size(bytes(prefix), address)
    body = await asyncio.wait_for(receive_exactly(sock, size), timeout)
    return parse_hello(bytes(body), own, address)


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    """A connected non-blocking TCP socket to ``endpoint`` (every address tried in turn)."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM), timeout
    )
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            _tune(sock)
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
            return sock
        except OSError as error:  # refused, unreachable, timed out (TimeoutError)
            sock.close()
            last = error
        except BaseException:
            sock.close()
            raise
    raise last or OSError(f"no address for {endpoint}")


async def _dial(
    endpoint: Endpoint, own: Hello, deadline: float, idle_timeout: float, connect_timeout: float
) -> TcpPeerLink:
    # A peer that is not listening yet is still checking its input: for the first
    # _FAST_RETRIES seconds it is retried every 20 ms at most (a refused connection costs
    # one round trip), so the link opens within that much of the peer's listener; a peer
    # that is later than that is retried every 0.25 s.
    delay = _FIRST_RETRY
    fast_until = time.monotonic() + _FAST_RETRIES
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PeerError(
                f"cannot reach peer at {endpoint}: {last or 'no answer'} "
                "(is it running and listening there?)"
            )
        try:
            sock = await _connect(endpoint, remaining)
        except OSError as error:
            last = error
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, _MAX_RETRY if time.monotonic() < fast_until else 0.25)
            continue
        hello_timeout = max(remaining, 1.0)
        try:
            peer = await _exchange_hello(sock, own, str(endpoint), hello_timeout)
        except TimeoutError as error:  # (an OSError: caught before the resets below)
            sock.close()
            raise PeerError(
                f"peer at {endpoint} accepted the connection but sent no greeting within "
                f"--connect-timeout {connect_timeout:g} s; is it an accord align endpoint?"
            ) from error
        except (asyncio.IncompleteReadError, ConnectionResetError):
            # The listener went away between accept and hello (e.g. still starting): retry.
            sock.close()
            last = ConnectionResetError("connection closed during hello")
            await asyncio.sleep(delay)
            continue
        except BaseException:
            sock.close()
            raise
        return TcpPeerLink(
            sock, peer=peer, address=str(endpoint), initiator=True, idle_timeout=idle_timeout
        )


async def connect_links(
    own: Hello,
    *,
    listen: Endpoint | None,
    peers: Sequence[Endpoint],
    connect_timeout: float,
    idle_timeout: float,
    on_listening: Callable[[Endpoint], None] | None = None,
    limits: RateLimitSettings | None = None,
    hello_timeout: float = 10.0,
) -> list[TcpPeerLink]:
    """Open one link to every other party: dial ``peers``, accept the rest on ``listen``.

    The listener gives a connection ``hello_timeout`` seconds to say a valid hello, and
    bounds the connections that have not yet, per source address and in all, and the
    refused hellos per source (``limits``, :class:`accord.rate_limits.RateLimitSettings`):
    one beyond is dropped at once, and each source gets at most one warning a minute.

    The caller checks its own inputs first, so it contacts no peer with a bad input. A
    party that dials every peer needs no listener: ``listen`` is then not opened (and
    ``on_listening`` not called).

    Returns ``parties - 1`` links with distinct peer names, or raises :class:`PeerError`
    (unreachable, too few peers by the deadline) or :class:`ProtocolError` (another
    protocol version, another session, a name used twice).
    """
    needed = own.parties - 1
    if len(peers) > needed:
        raise ConfigurationError(
            f"--peer given {len(peers)} times, but {own.parties} parties have only {needed} peers"
        )
    if listen is None and len(peers) < needed:
        raise ConfigurationError(
            f"{own.parties} parties need {needed} peer links: give --listen or more --peer"
        )
    deadline = time.monotonic() + connect_timeout
    listener = _Listener(own, idle_timeout, limits or RateLimitSettings(), hello_timeout)
    links: list[TcpPeerLink] = []
    try:
        if listen is not None and len(peers) < needed:
            listen = listener.open(listen)
            if on_listening is not None:
                on_listening(listen)
        links += await _dial_all(peers, own, deadline, idle_timeout, connect_timeout)
        while len(links) < needed:
            try:
                links.append(await listener.next_link(deadline - time.monotonic()))
            except TimeoutError as error:
                have = ", ".join(repr(link.name) for link in links) or "none"
                refused = listener.refused
                why = f"; refused: {'; '.join(refused)}" if refused else ""
                raise PeerError(
                    f"waited {connect_timeout:g} s for {needed} peer(s) to connect on {listen}; "
                    f"connected: {have}{why}"
                ) from error
        names = [link.name for link in links]
        if len(set(names)) != len(names):
            raise ProtocolError(
                f"two connections claim the same party name among {sorted(names)}: list each "
                "peer once, on one side only"
            )
        return links
    except BaseException:
        for link in links:
            await link.close()
        raise
    finally:
        await listener.close(keep=links)


async def _dial_all(
    peers: Sequence[Endpoint],
    own: Hello,
    deadline: float,
    idle_timeout: float,
    connect_timeout: float,
) -> list[TcpPeerLink]:
    """A link to each of ``peers``, dialled at once; if one fails, the others are
    cancelled or closed."""
    dials = [
        asyncio.ensure_future(_dial(p, own, deadline, idle_timeout, connect_timeout)) for p in peers
    ]
    links: list[TcpPeerLink] = []
    try:
        for dial in asyncio.as_completed(dials):
            links.append(await dial)
    except BaseException:
        for dial in dials:
            dial.cancel()
        for dial in dials:
            with contextlib.suppress(BaseException):
                link = await dial
                await link.close()
        raise
    return links


class _Listener:
    """The listening side of :func:`connect_links`: every accepted connection gets
    ``hello_timeout`` seconds to say a valid hello, within the rate limits; the links that
    did wait in a queue. No unauthenticated connection (a port scanner, a stale peer of
    another session) can stop it: it keeps listening, and remembers why it refused hellos,
    to name them if the peers never come."""

    def __init__(
        self, own: Hello, idle_timeout: float, limits: RateLimitSettings, hello_timeout: float
    ) -> None:
        self.own = own
        self.idle_timeout = idle_timeout
        self.hello_timeout = hello_timeout
        self.limiter = SourceLimiter(limits, logger, what="connection")
        self.accepted: asyncio.Queue[TcpPeerLink | BaseException] = asyncio.Queue()
        self.handlers: set[asyncio.Task[None]] = set()
        #: Why connections were refused at their hello (at most _MAX_REFUSALS_NAMED).
        self.refused: list[str] = []
        self.server: socket.socket | None = None
        self.acceptor: asyncio.Task[None] | None = None

    def open(self, listen: Endpoint) -> Endpoint:
        """Listen on ``listen`` and start accepting; the endpoint bound (its port may have
        been 0)."""
        try:
            server = socket.create_server(
                (listen.host, listen.port),
                family=socket.AF_INET6 if ":" in listen.host else socket.AF_INET,
                backlog=64,
            )
        except OSError as error:
            raise ConfigurationError(
                f"--listen {listen}: cannot listen: {error.strerror or error}"
            ) from error
        server.setblocking(False)
        self.server = server
        bound = server.getsockname()
        endpoint = Endpoint(str(bound[0]), int(bound[1]))
        logger.debug("listening on %s", endpoint)
        self.acceptor = asyncio.ensure_future(self._serve(server))
        return endpoint

    async def next_link(self, remaining: float) -> TcpPeerLink:
        """The next peer that said a valid hello, within ``remaining`` seconds (else
        :class:`TimeoutError`)."""
        item = await asyncio.wait_for(self.accepted.get(), max(remaining, 0.0))
        if isinstance(item, BaseException):
            raise item
        return item

    async def _serve(self, server: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, name = await loop.sock_accept(server)
            task = asyncio.ensure_future(self._on_accept(sock, name))
            self.handlers.add(task)
            task.add_done_callback(self.handlers.discard)

    async def _on_accept(self, sock: socket.socket, name: Any) -> None:
        address = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
        source = str(name[0]) if isinstance(name, tuple) else str(name)
        wait = self.limiter.admit(source)
        if wait is None:  # too many half-open connections, or a throttled source (logged)
            sock.close()
            return
        failure: str | None = None
        try:
            if wait:
                await asyncio.sleep(wait)
            _tune(sock)
            peer = await _exchange_hello(sock, self.own, address, self.hello_timeout)
        except ProtocolError as error:
            sock.close()
            failure = f"ignored a connection from {address}: {error}"
            if len(self.refused) < _MAX_REFUSALS_NAMED:
                self.refused.append(str(error))
            return
        except TimeoutError:  # (an OSError: caught first)
            sock.close()
            failure = (
                f"ignored a connection from {address}: no hello within {self.hello_timeout:g} s"
            )
            return
        except (OSError, asyncio.IncompleteReadError) as error:
            sock.close()
            failure = f"ignored a connection from {address}: {error or type(error).__name__}"
            return
        except BaseException:
            sock.close()
            raise
        finally:
            self.limiter.finish(source, failure)
        await self.accepted.put(
            TcpPeerLink(
                sock, peer=peer, address=address, initiator=False, idle_timeout=self.idle_timeout
            )
        )

    async def close(self, keep: Sequence[TcpPeerLink]) -> None:
        """Stop accepting: connections still saying hello are dropped, accepted links not
        in ``keep`` are closed, the links in ``keep`` stay open."""
        if self.acceptor is not None:
            self.acceptor.cancel()
            with contextlib.suppress(BaseException):
                await self.acceptor
        for task in list(self.handlers):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self.handlers, return_exceptions=True)
        while not self.accepted.empty():
            item = self.accepted.get_nowait()
            if isinstance(item, TcpPeerLink) and item not in keep:
                await item.close()
        if self.server is not None:
            self.server.close()
