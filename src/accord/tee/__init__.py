"""Trusted execution for sample alignment: attestation, secure channel, enclave runtime.

The package is cut in two, as pyca/cryptography cuts hazmat from recipes:

* :mod:`accord.tee.core` — what the enclave computes, with no socket, process, thread or
  file: wire formats (:mod:`~accord.tee.core.wire`), measurements, quotes and policies
  (:mod:`~accord.tee.core.attestation`), the attested channel
  (:mod:`~accord.tee.core.channel`), sealing (:mod:`~accord.tee.core.sealing`), the backend
  interface (:mod:`~accord.tee.core.backend`), and the enclave's session as a function from
  call to reply (:mod:`~accord.tee.core.session`, with :mod:`~accord.tee.core.loader`,
  :mod:`~accord.tee.core.peers`, :mod:`~accord.tee.core.messages`,
  :mod:`~accord.tee.core.bucket_plan` and :mod:`~accord.tee.core.bucketed`).
* :mod:`accord.tee.runtime` — what moves the bytes: the enclave process
  (``python -m accord.tee.runtime.enclave``), the host's handle on it, TCP peer links,
  one party's whole run (:mod:`~accord.tee.runtime.party`), run directories and progress.

Only the core's public names are re-exported here: the enclave process loads this package,
and everything it loads is measured (:mod:`~accord.tee.runtime.measurement`). Import the
host side explicitly, e.g. ``from accord.tee.runtime.party import run_party``. The names
are loaded on first use (PEP 562): importing a runtime module, as ``accord align`` does
before it starts its enclave, does not load the channel's and the quotes' crypto.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from accord._lazy import lazy_attributes

if TYPE_CHECKING:
    from accord.tee.core.attestation import (
        SIMULATED_BACKEND,
        AttestationPolicy,
        EvidenceClaims,
        key_fingerprint,
        parse_policy,
        policy_toml,
        verify_evidence,
    )
    from accord.tee.core.backend import EnclaveBackend, EnclaveIdentity, SimulatedBackend
    from accord.tee.core.channel import PROTOCOL_VERSION, ChannelReader, ChannelWriter

__all__ = [
    "PROTOCOL_VERSION",
    "SIMULATED_BACKEND",
    "AttestationPolicy",
    "ChannelReader",
    "ChannelWriter",
    "EnclaveBackend",
    "EnclaveIdentity",
    "EvidenceClaims",
    "SimulatedBackend",
    "key_fingerprint",
    "parse_policy",
    "policy_toml",
    "verify_evidence",
]

#: Each re-exported name and the core module that defines it.
_HOMES = {
    "PROTOCOL_VERSION": "core.channel",
    "SIMULATED_BACKEND": "core.attestation",
    "AttestationPolicy": "core.attestation",
    "ChannelReader": "core.channel",
    "ChannelWriter": "core.channel",
    "EnclaveBackend": "core.backend",
    "EnclaveIdentity": "core.backend",
    "EvidenceClaims": "core.attestation",
    "SimulatedBackend": "core.backend",
    "key_fingerprint": "core.attestation",
    "parse_policy": "core.attestation",
    "policy_toml": "core.attestation",
    "verify_evidence": "core.attestation",
}


__getattr__ = lazy_attributes(__name__, _HOMES)
