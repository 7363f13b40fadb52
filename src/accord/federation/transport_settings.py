"""Where and how the gRPC server listens (the channel options both ends use, and the
address form, come from :mod:`accord.credentials.tls`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from accord.credentials.tls import channel_options, format_address
from accord.errors import ConfigurationError
from accord.federation.tensors import DEFAULT_CHUNK_BYTES
from accord.rate_limits import RateLimitSettings

__all__ = ["TransportSettings", "channel_options", "format_address"]


@dataclass(frozen=True)
class TransportSettings:
    """Where and how the server listens.

    ``host`` (default 127.0.0.1; 0.0.0.0 for every interface) and ``port`` (default 50051;
    0 picks a free one); ``chunk_bytes`` of tensor data per message (default 1 MiB);
    ``max_message_bytes`` accepted from a node (default 4 MiB); ``registration_timeout``
    seconds a new stream has to send ``Register`` (default 10); ``shutdown_grace`` seconds
    given to nodes to close their streams at the end (default 2); ``limits`` on streams that
    have not registered yet and on failed registrations, per source address
    (:class:`accord.rate_limits.RateLimitSettings`: 10 failures a minute, 64 open streams,
    8 from one address)."""

    host: str = "127.0.0.1"
    port: int = 50051
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_message_bytes: int = 4 << 20
    registration_timeout: float = 10.0
    shutdown_grace: float = 2.0
    limits: RateLimitSettings = field(default_factory=RateLimitSettings)

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ConfigurationError(f"port: expected 0..65535, got {self.port!r}")
        if self.chunk_bytes < 1024 or self.chunk_bytes > self.max_message_bytes - 4096:
            raise ConfigurationError(
                f"chunk_bytes: expected 1024 .. max_message_bytes - 4096, got {self.chunk_bytes}"
            )
