"""Networked federation: the gRPC driver of :mod:`accord.rounds` (one round logic, two
drivers), with its server, nodes, credentials and checkpoints.

Layout::

    proto/        the versioned protobuf schema and its committed generated code
    tensors.py    tensors as raw bytes + dtype + shape, in chunks; weight digests
    grid.py       Grid: what the round driver needs from a transport; InMemoryGrid
    driver.py     FederatedRun: quorum, deadlines, drops, stop conditions, checkpoints
    server.py     GrpcGrid: the server's gRPC transport (asyncio, one stream per node)
    worker.py     NodeWorker: a node's data, model and round logic, transport-free
    client.py     NodeClient: the node's gRPC session, reconnection with backoff
    engine.py     the server's data, model and RoundEngine, built as the simulation does
    settings.py   FederationSettings, ServerSettings (JSON form: accord.settings_mapping)
    node_data.py  a node's CSV/Parquet file; its validation split
    launcher.py   ``accord server``'s main loop; what every federation process does first
    local.py      ``accord federate``: the server here, one forked process per node
    run_files.py  the run folder: federation.json, server.json, checkpoint, stats, summary
    scenario_helper.py  builds the scenario in a forked helper while torch loads

Credentials (reading, checking, issuing; TLS) live in :mod:`accord.credentials` and the
pickle-free checkpoint files in :mod:`accord.checkpoint_files`, both shared with the
vertical driver. Names are imported lazily: ``import accord.federation`` loads
neither torch nor gRPC.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Authenticator",
    "FederatedResult",
    "FederatedRun",
    "FederationSettings",
    "Grid",
    "GrpcGrid",
    "InMemoryGrid",
    "NodeClient",
    "NodeSettings",
    "NodeWorker",
    "ServerSettings",
    "TransportSettings",
    "make_credentials",
]

_WHERE = {
    "Authenticator": "accord.credentials.auth",
    "FederatedResult": "driver",
    "FederatedRun": "driver",
    "FederationSettings": "settings",
    "Grid": "grid",
    "GrpcGrid": "server",
    "InMemoryGrid": "grid",
    "NodeClient": "client",
    "NodeSettings": "client",
    "NodeWorker": "worker",
    "ServerSettings": "settings",
    "TransportSettings": "server",
    "make_credentials": "accord.credentials.issue",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'accord.federation' has no attribute {name!r}")
    if not module.startswith("accord."):
        module = f"accord.federation.{module}"
    return getattr(importlib.import_module(module), name)
