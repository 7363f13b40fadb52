"""The one exception tree of Accord.

Every error Accord raises on purpose is an :class:`AccordError`; third-party errors are
translated at the boundary with ``raise ... from``::

    AccordError
    ├── ConfigurationError   a setting, option or config file is wrong
    ├── InputDataError       a data file or its contents are unusable
    ├── ProtocolError        a message broke the protocol (shape, version, order)
    ├── PeerError            a node, peer or enclave failed, vanished or timed out
    ├── AttestationError     evidence failed verification against the policy
    └── ChannelError         a secure-channel record failed authentication or order

Crypto and attestation failures give the peer one opaque message and keep the precise
reason for the local log (:attr:`AccordError.detail`).
"""

from __future__ import annotations

__all__ = [
    "AccordError",
    "AttestationError",
    "ChannelError",
    "ConfigurationError",
    "InputDataError",
    "PeerError",
    "ProtocolError",
]


class AccordError(Exception):
    """Root of every error Accord raises on purpose."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        #: A precise reason that may be logged locally but never sent to a peer.
        self.detail = detail


class ConfigurationError(AccordError, ValueError):
    """A setting, command-line option or configuration file has a bad value."""


class InputDataError(AccordError, ValueError):
    """An input file or its contents cannot be used (missing column, duplicates, ...)."""


class ProtocolError(AccordError):
    """A message broke the protocol: wrong version, shape, dtype or order."""


class PeerError(AccordError):
    """A node, peer or enclave failed, disconnected or did not answer in time."""


class AttestationError(AccordError):
    """Attestation evidence did not satisfy the verifier's policy."""


class ChannelError(AccordError):
    """A secure-channel record was forged, replayed, reordered or truncated."""
