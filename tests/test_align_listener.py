"""A listening party is not stopped by an unauthenticated connection (issue 13, item 2)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from align_support import listening_party

from accord.errors import PeerError
from accord.tee.runtime.transport import Hello, connect_links


async def _stray(port: int, greeting: bytes) -> None:
    """A client that connects, says ``greeting`` and reads the listener's hello."""
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    try:
        await loop.sock_sendall(sock, greeting)
        await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        await asyncio.sleep(0.05)
    finally:
        sock.close()


def test_bad_hellos_are_logged_and_dropped_and_the_real_peer_still_joins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="accord.tee.runtime.transport")

    async def scenario() -> list[str]:
        listener, endpoint = await listening_party()
        await _stray(endpoint.port, Hello("x", "another-session", 2).encode())  # stale peer
        await _stray(endpoint.port, Hello("y", "s1", 3).encode())  # another party count
        dialer = await connect_links(
            Hello("b", "s1", 2), listen=None, peers=[endpoint], connect_timeout=60, idle_timeout=60
        )
        links = await asyncio.wait_for(listener, 30)
        names = [link.name for link in links]
        for link in [*links, *dialer]:
            await link.close()
        return names

    assert asyncio.run(scenario()) == ["b"]
    ignored = [r for r in caplog.records if "ignored a connection" in r.getMessage()]
    assert len(ignored) == 2
    assert "in session 'another-session'" in ignored[0].getMessage()
    assert "expects 3 parties" in ignored[1].getMessage()
    # One warning per source address a minute (issue 13 item 4): the second, from the same
    # address within the minute, is logged at info level and counted for the next warning.
    assert [r.levelno for r in ignored] == [logging.WARNING, logging.INFO]


def test_a_listener_whose_peers_never_come_names_what_it_refused() -> None:
    async def scenario() -> None:
        # The stray below is refused within milliseconds.
        listener, endpoint = await listening_party(connect_timeout=8)
        await _stray(endpoint.port, Hello("x", "another-session", 2).encode())
        await listener

    with pytest.raises(
        PeerError, match=r"connected: none; refused: .*in session 'another-session'"
    ):
        asyncio.run(scenario())
