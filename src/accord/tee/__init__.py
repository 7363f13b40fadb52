"""Trusted execution for sample alignment: attestation, secure channel, enclave runtime.

The pure crypto core — :mod:`~accord.tee.attestation` (measurements, quotes, policies),
:mod:`~accord.tee.channel` (attested handshake, sealed records) and
:mod:`~accord.tee.wire` (encodings) — touches no file, socket or clock. Around it:

* :mod:`~accord.tee.backend` — the enclave backend interface and the ``simulated`` backend;
* :mod:`~accord.tee.protocol` — what an enclave does in a session (a state machine);
* :mod:`~accord.tee.enclave` — the enclave process (``python -m accord.tee.enclave``);
* :mod:`~accord.tee.host` — the host's handle on its enclave process;
* :mod:`~accord.tee.transport` — TCP links between the parties' hosts (asyncio);
* :mod:`~accord.tee.party` — one party's whole run, init → attest → exchange → intersect →
  report.

Only the first group and the enclave side are imported here: the enclave process loads
this package, and everything it loads is measured (:mod:`~accord.tee.measurement`). Import
the host side explicitly, e.g. ``from accord.tee.party import run_party``.
"""

from __future__ import annotations

from accord.tee.attestation import (
    SIMULATED_BACKEND,
    AttestationPolicy,
    EvidenceClaims,
    key_fingerprint,
    parse_policy,
    policy_toml,
    verify_evidence,
)
from accord.tee.backend import EnclaveBackend, EnclaveIdentity, SimulatedBackend
from accord.tee.channel import PROTOCOL_VERSION, ChannelReader, ChannelWriter

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
