"""A TCP address as the options give it (kept apart from the transport: checking the
options imports neither asyncio nor the channel's crypto)."""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass

from accord.errors import ConfigurationError

__all__ = ["Endpoint"]


@dataclass(frozen=True)
class Endpoint:
    """A TCP address: ``host:port`` (IPv6 as ``[addr]:port``)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigurationError("address: the host part is empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigurationError(f"address: port must be an integer, got {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"address: port must be 0-65535, got {self.port}")

    @classmethod
    def parse(cls, text: str, field: str = "address") -> Endpoint:
        """Parse ``host:port`` or ``[ipv6]:port``; the error names ``field``."""
        value = text.strip()
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            port_text = rest.removeprefix(":") if rest.startswith(":") else ""
        else:
            host, _, port_text = value.rpartition(":")
        if not host or not port_text.isdigit():
            raise ConfigurationError(f"{field}: expected HOST:PORT, got {text!r}")
        try:
            return cls(host, int(port_text))
        except ConfigurationError as error:
            raise ConfigurationError(f"{field}: {error} (in {text!r})") from error

    def __str__(self) -> str:
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(self.host).version == 6:
                return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"
