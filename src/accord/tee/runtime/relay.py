"""One party's run between its enclave and its peers: calls in, sealed records across.

:class:`PartyRun` holds what a run needs while it goes init → attest → exchange →
intersect → report: it calls the enclave (keeping the status each reply carries), relays
the attested handshake on every link, runs one send loop and one receive loop per link
that carry sealed records between the enclave and the peer, streams this party's IDs in,
and collects the in-memory result. It touches no socket or process itself: the enclave is
an :class:`~accord.tee.runtime.host.EnclaveHandle` and the links are
:class:`~accord.tee.runtime.links.PeerLink` objects, so a whole alignment runs in one
process over in-memory links in a test, as it runs over TCP between processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from accord.errors import InputDataError, ProtocolError
from accord.tee.core.wire import Call, PeerFrame, encode_columns
from accord.tee.runtime.host import EnclaveHandle
from accord.tee.runtime.inputs import KeyReader
from accord.tee.runtime.links import PeerLink
from accord.tee.runtime.settings import PartySettings, Progress

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

__all__ = ["Exchanged", "PartyRun"]

logger = logging.getLogger(__name__)


class Exchanged(NamedTuple):
    """What the enclaves agreed, as this party's host receives it."""

    #: The enclave's report on this party's input (rows, empty and undecodable IDs).
    report: dict[str, Any]
    #: Set sizes, |I| and the duplicate report.
    counts: dict[str, Any]
    #: For each shared position, this party's local row index.
    row_map: np.ndarray
    #: This party's key columns, row by row, when kept for ``--include-ids``.
    ids: pa.Table | None = None


class PartyRun:
    """The state of one run: the enclave, the links and the enclave's last status.

    ``enclave`` is any :class:`~accord.tee.runtime.host.EnclaveHandle` (a process, or the
    session in this process); ``links`` are any :class:`~accord.tee.runtime.links.PeerLink`
    (TCP, or in memory). The run only calls them.
    """

    def __init__(
        self,
        settings: PartySettings,
        enclave: EnclaveHandle,
        links: Sequence[PeerLink],
        keys: KeyReader,
        progress: Progress,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.enclave = enclave
        self.links = list(links)
        self.progress = progress
        self.status: dict[str, Any] = {"outbound": [], "done": False}
        self._changed = asyncio.Event()
        self.peer_enclaves: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, float] = {}
        #: The input report and the kept ID batches once :meth:`load` is done.
        self.loaded: tuple[dict[str, Any], list[pa.RecordBatch]] | None = None

    async def call(
        self, call: Call, meta: dict[str, Any] | None = None, body: Sequence[Any] = ()
    ) -> tuple[dict[str, Any], bytearray]:
        try:
            reply, reply_body = await self.enclave.call(call, meta, body)
        except InputDataError as error:
            raise InputDataError(f"{self.settings.input}: {error}", detail=error.detail) from error
        status = reply.get("status")
        if isinstance(status, dict):
            self.status = status
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        return reply, reply_body

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        while not predicate(self.status):
            await self._changed.wait()

    async def handshake(self, slot: int, link: PeerLink) -> None:
        async def expect_handshake() -> bytes | bytearray:
            kind, body = await link.receive()
            if kind is not PeerFrame.HANDSHAKE:
                raise ProtocolError(f"peer {link.name!r} sent {kind.name} during the handshake")
            return body

        reply = await self._handshake_steps(slot, link, expect_handshake)
        if reply.get("peer") != link.name:
            raise ProtocolError(
                f"the host at {link.address} announced party {link.name!r}, but its enclave "
                f"attests party {reply.get('peer')!r}"
            )
        identity = dict(reply["peer_identity"])
        self.peer_enclaves[link.name] = identity
        logger.info(
            "attested channel to %r open (platform key %s, measurement %s, name %s)",
            link.name,
            identity.get("platform_key"),
            identity.get("measurement"),
            identity.get("name_binding"),
        )
        if identity.get("name_binding") != "bound":
            logger.warning(
                "peer %r: the policy %s binds no party names, so any enclave it trusts could "
                "have used this name (add a [parties.%s] table to bind it)",
                link.name,
                self.settings.policy,
                link.name,
            )

    async def _handshake_steps(
        self,
        slot: int,
        link: PeerLink,
        expect_handshake: Callable[[], Awaitable[bytes | bytearray]],
    ) -> dict[str, Any]:
        if link.initiator:
            _, hello = await self.call(Call.HANDSHAKE, {"link": slot, "step": "hello"})
            await link.send(PeerFrame.HANDSHAKE, hello)
            reply, finish = await self.call(
                Call.HANDSHAKE, {"link": slot, "step": "finish"}, [await expect_handshake()]
            )
            await link.send(PeerFrame.HANDSHAKE, finish)
        else:
            _, response = await self.call(
                Call.HANDSHAKE, {"link": slot, "step": "respond"}, [await expect_handshake()]
            )
            await link.send(PeerFrame.HANDSHAKE, response)
            reply, _ = await self.call(
                Call.HANDSHAKE, {"link": slot, "step": "complete"}, [await expect_handshake()]
            )
        return reply

    async def send_loop(self, slot: int, link: PeerLink) -> None:
        while True:
            await self.wait_for(lambda status: slot in status["outbound"])
            reply, batch = await self.call(Call.SEAL, {"link": slot})
            if batch:
                await link.send(PeerFrame.RECORDS, batch)
            if reply.get("closed"):
                return

    async def receive_loop(self, slot: int, link: PeerLink) -> None:
        while True:
            kind, body = await link.receive()
            if kind is not PeerFrame.RECORDS:
                raise ProtocolError(f"peer {link.name!r} sent {kind.name} after the handshake")
            reply, _ = await self.call(Call.UNSEAL, {"link": slot}, [body])
            if reply.get("ended"):
                return

    def _timed(self, stage: str, start: float) -> None:
        self.seconds[stage] = round(time.perf_counter() - start, 4)

    async def load(self, keep_ids: bool) -> None:
        """Stream this party's IDs into the enclave (``LOAD_IDS``, ``LOAD_DONE``).

        In memory this runs before any peer is contacted: the enclave refuses empty,
        undecodable and (under the ``error`` policy) duplicated IDs at ``LOAD_DONE``.
        """
        start = time.perf_counter()
        self.progress("load", 0)
        kept: list[pa.RecordBatch] = []
        rows = 0
        async for batch in self.keys:
            meta, buffers = encode_columns(list(batch.columns))
            await self.call(Call.LOAD_IDS, meta, buffers)
            rows += batch.num_rows
            if keep_ids:
                kept.append(batch)
            self.progress("load", rows)
        self._timed("read_ids", start)
        start = time.perf_counter()
        reply, _ = await self.call(Call.LOAD_DONE)
        self._timed("check_ids", start)
        self.loaded = (dict(reply["ids"]), kept)

    async def exchange(self, keep_ids: bool) -> Exchanged:
        """Load the IDs (unless loaded), relay until the enclaves agree; what they agreed."""
        if self.loaded is None:
            await self.load(keep_ids)
        assert self.loaded is not None
        report, kept = self.loaded
        start = time.perf_counter()
        self.progress("exchange", None)
        await self.wait_for(lambda status: bool(status["digests_received"]))
        self._timed("digest_exchange", start)
        start = time.perf_counter()
        self.progress("intersect", None)
        reply, _ = await self.call(Call.INTERSECT)
        counts = dict(reply["counts"])
        await self.wait_for(lambda status: bool(status["done"]))
        reply, body = await self.call(Call.RESULT)
        import numpy

        row_map = numpy.frombuffer(body, dtype=numpy.int64)
        if len(row_map) != counts["intersection_size"]:
            raise ProtocolError("the enclave's row map does not match its counts")
        self._timed("intersect_confirm", start)
        ids = None
        if keep_ids:
            import pyarrow as pa

            ids = pa.Table.from_batches(kept)
        return Exchanged(report, counts, row_map, ids)
