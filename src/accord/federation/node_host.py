"""Many node sessions in one process, for load tests (``accord node --sessions N``).

A node process holds about 200 MB (torch, gRPC, its data), so a hundred of them may not fit
on a small machine. :func:`host_sessions` runs many :class:`~accord.federation.client.NodeClient`
objects instead, each on its own thread: the same client code as ``accord node``, each with
its own gRPC channel and connection, credentials and registration, and its own worker
(model, data, seed). What they share is the process: one interpreter lock and one torch, so
the nodes of one host train one after the other, as the in-process simulation does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from accord.errors import AccordError
from accord.federation.client import NodeClient

__all__ = ["SessionOutcome", "host_sessions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionOutcome:
    """How one hosted session ended: the server's shutdown reason, or the error that
    ended it (one line)."""

    node_id: str
    reason: str | None = None
    error: str | None = None


def host_sessions(clients: Sequence[NodeClient]) -> list[SessionOutcome]:
    """Run every client until its run ends (each on a thread of this process); their
    outcomes, in the order of ``clients``. A session that fails does not stop the others."""
    outcomes: list[SessionOutcome | None] = [None] * len(clients)

    def serve(index: int, client: NodeClient) -> None:
        node_id = client.worker.node_id
        try:
            outcomes[index] = SessionOutcome(node_id, reason=client.run())
        except AccordError as error:
            logger.warning("session of node %s ended: %s", node_id, error)
            outcomes[index] = SessionOutcome(node_id, error=str(error))
        except Exception as error:  # a bug in one session must not hide the others' outcome
            logger.exception("session of node %s failed", node_id)
            outcomes[index] = SessionOutcome(node_id, error=f"{type(error).__name__}: {error}")

    threads = [
        threading.Thread(
            target=serve, args=(index, client), name=f"accord-session-{index}", daemon=True
        )
        for index, client in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [
        outcome
        if outcome is not None
        else SessionOutcome(client.worker.node_id, error="no outcome")
        for outcome, client in zip(outcomes, clients, strict=True)
    ]
