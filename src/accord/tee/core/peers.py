"""One peer link as the enclave sees it, and the attested handshake steps that open it.

:class:`PeerState` is everything the enclave keeps about one peer: its handshake, the
channel keys, reader and writer once open, and what the peer has sent so far (roster,
share, digests, confirmation). :func:`handshake_step` runs one ``HANDSHAKE`` call's step
(``hello``/``finish`` on the dialling side, ``respond``/``complete`` on the other) over
:mod:`accord.tee.core.channel`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from accord.errors import ProtocolError
from accord.tee.core.channel import (
    ChannelKeys,
    ChannelReader,
    ChannelWriter,
    HandshakeConfig,
    InitiatorHandshake,
    ResponderHandshake,
)

__all__ = ["PeerState", "handshake_step", "peer_identity"]


@dataclass
class PeerState:
    """One peer link as the enclave sees it."""

    handshake: InitiatorHandshake | ResponderHandshake
    keys: ChannelKeys | None = None
    writer: ChannelWriter | None = None
    reader: ChannelReader | None = None
    roster: dict[str, Any] | None = None
    share: bytes | None = None
    digests: np.ndarray | None = None
    got_digests: bool = False
    size_hidden: bool = False
    confirm: tuple[int, bytes] | None = None
    closed: bool = False
    #: Bucketed runs: the peer's proposal and where its run stands (from its roster).
    bucketed: dict[str, Any] | None = None


def peer_identity(keys: ChannelKeys) -> dict[str, Any]:
    """The peer's party name and verified enclave claims, as the host may see them.

    ``name_binding`` is ``bound`` when this party's policy binds the peer's name to the
    platform key (and measurements) it presented, ``unbound`` when the policy binds no
    names: then the name is only what the peer's host chose to announce.
    """
    claims = keys.peer_claims
    return {
        "peer": keys.peer_name,
        "peer_identity": {
            "party": keys.peer_name,
            "name_binding": "bound" if keys.peer_name_bound else "unbound",
            "backend": claims.backend,
            "measurement": claims.measurement.hex(),
            "security_version": claims.security_version,
            "debug": claims.debug,
            "platform_key": claims.signer,
        },
    }


def handshake_step(
    links: MutableMapping[int, PeerState],
    meta: Mapping[str, Any],
    body: memoryview,
    config: HandshakeConfig,
    parties: int,
) -> tuple[dict[str, Any], bytes, bool]:
    """One step of the handshake on link ``meta["link"]``: ``(reply, body, opened)``.

    ``opened``: this step opened the link's channel (its keys, reader and writer are set).
    A link number used twice, more links than peers, a step out of order and two links
    naming the same party are protocol errors.
    """
    slot = int(meta["link"])
    step = meta.get("step")
    if step == "hello":
        if slot in links or len(links) >= parties - 1:
            raise ProtocolError(f"HANDSHAKE: link {slot} already exists or too many links")
        initiator = InitiatorHandshake(config)
        links[slot] = PeerState(handshake=initiator)
        return {}, initiator.hello(), False
    if step == "respond":
        if slot in links or len(links) >= parties - 1:
            raise ProtocolError(f"HANDSHAKE: link {slot} already exists or too many links")
        responder = ResponderHandshake(config)
        links[slot] = PeerState(handshake=responder)
        return {}, responder.respond(bytes(body)), False
    link = links.get(slot)
    if link is None or link.keys is not None:
        raise ProtocolError(f"HANDSHAKE {step}: no handshake in progress on link {slot}")
    if step == "finish" and isinstance(link.handshake, InitiatorHandshake):
        finish, keys = link.handshake.finish(bytes(body))
        _open(links, link, keys)
        return peer_identity(keys), finish, True
    if step == "complete" and isinstance(link.handshake, ResponderHandshake):
        keys = link.handshake.complete(bytes(body))
        _open(links, link, keys)
        return peer_identity(keys), b"", True
    raise ProtocolError(f"HANDSHAKE: unexpected step {step!r} on link {slot}")


def _open(links: Mapping[int, PeerState], link: PeerState, keys: ChannelKeys) -> None:
    if any(other.keys and other.keys.peer_name == keys.peer_name for other in links.values()):
        raise ProtocolError(f"two links claim to be party {keys.peer_name!r}")
    link.keys = keys
    link.writer = ChannelWriter(keys.send_key)
    link.reader = ChannelReader(keys.receive_key)
