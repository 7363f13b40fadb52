"""What an enclave says about itself, as a plain record (the host reads it without loading
the backends' crypto)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EnclaveIdentity"]


@dataclass(frozen=True)
class EnclaveIdentity:
    """What an enclave says about itself (and what a peer's policy must accept)."""

    backend: str
    measurement: str  # hex
    security_version: int
    debug: bool
    #: ``sha256:<hex>`` of the key that signs this enclave's evidence (``None`` if none).
    platform_key: str | None
