"""Accord: machine learning across institutions that cannot pool their data.

Two products share this package: horizontal federated training whose server weights the
nodes' gradients with an Actor-Critic policy (:mod:`accord.aggregation`,
:mod:`accord.rounds`, :mod:`accord.simulation`, :mod:`accord.federation`), and sample
alignment inside trusted execution environments (:mod:`accord.alignment`,
:mod:`accord.tee`). Importing :mod:`accord` is cheap: torch loads only when a training
module is imported.
"""

from __future__ import annotations

from accord.errors import (
    AccordError,
    AttestationError,
    ChannelError,
    ConfigurationError,
    InputDataError,
    PeerError,
    ProtocolError,
)

__version__ = "0.1.0"

__all__ = [
    "AccordError",
    "AttestationError",
    "ChannelError",
    "ConfigurationError",
    "InputDataError",
    "PeerError",
    "ProtocolError",
    "__version__",
]
