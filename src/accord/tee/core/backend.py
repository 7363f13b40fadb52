"""The enclave backend interface and the one backend shipped: ``simulated``.

A backend is the enclave's view of its platform: it knows the enclave's measurement,
security version and debug flag, and turns ``report_data`` into evidence a peer can verify
(:func:`accord.tee.core.attestation.verify_evidence`).

``simulated`` runs the enclave as an ordinary OS process (see :mod:`accord.tee.runtime.enclave`)
and signs quotes with an Ed25519 *platform key* kept on disk. It runs every step of the
protocol — measurement, quote, verification, channel — but protects nothing against the
machine's owner, who can read the key and the process memory; verifiers therefore accept
its evidence only when their policy says ``allow_simulated = true``.

A hardware backend plugs in behind the same interface and registers a verifier for its
evidence in :mod:`accord.tee.core.attestation`:

* **Gramine-SGX** — write ``report_data`` to ``/dev/attestation/user_report_data``, read the
  DCAP quote from ``/dev/attestation/quote``; the measurement is ``MRENCLAVE`` (from
  ``/dev/attestation/my_target_info``), the security version ``ISVSVN``, debug the
  ``ATTRIBUTES.DEBUG`` bit.
* **TDX / SEV-SNP through configfs-tsm** — create ``/sys/kernel/config/tsm/report/<name>``,
  write ``report_data`` (padded to 64 bytes) to ``inblob``, read ``outblob``; the
  measurement is ``MRTD``/``RTMR`` or the SNP launch ``MEASUREMENT``.

None of those can run on this machine, so none is shipped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from accord.tee.core.attestation import (
    DIGEST_SIZE,
    SIMULATED_BACKEND,
    key_fingerprint,
    make_simulated_evidence,
    public_key_bytes,
)
from accord.tee.core.identity import EnclaveIdentity
from accord.tee.core.sealing import simulated_sealing_key

__all__ = ["BACKENDS", "EnclaveBackend", "EnclaveIdentity", "SimulatedBackend"]

#: Names of the backends this installation can run.
BACKENDS = (SIMULATED_BACKEND,)


class EnclaveBackend(ABC):
    """The platform an enclave runs on: its measurement and a maker of evidence."""

    @property
    @abstractmethod
    def identity(self) -> EnclaveIdentity:
        """Measurement, security version, debug flag and signer of this enclave."""

    @abstractmethod
    def make_evidence(self, report_data: bytes) -> bytes:
        """Evidence (a quote) binding ``report_data`` (32 bytes) to this enclave."""

    @abstractmethod
    def sealing_key(self) -> bytes:
        """A key only this enclave build on this platform can derive (for sealed files)."""


class SimulatedBackend(EnclaveBackend):
    """Quotes signed by a platform key on disk; accepted only with ``allow_simulated``."""

    def __init__(
        self,
        platform_key: Ed25519PrivateKey,
        *,
        measurement: bytes,
        security_version: int,
        debug: bool,
    ) -> None:
        if len(measurement) != DIGEST_SIZE:
            raise ValueError("measurement must be 32 bytes")
        self._key = platform_key
        self._identity = EnclaveIdentity(
            backend=SIMULATED_BACKEND,
            measurement=measurement.hex(),
            security_version=security_version,
            debug=debug,
            platform_key=key_fingerprint(public_key_bytes(platform_key)),
        )

    @property
    def identity(self) -> EnclaveIdentity:
        return self._identity

    def make_evidence(self, report_data: bytes) -> bytes:
        return make_simulated_evidence(
            self._key,
            measurement=bytes.fromhex(self._identity.measurement),
            security_version=self._identity.security_version,
            debug=self._identity.debug,
            report_data=report_data,
        )

    def sealing_key(self) -> bytes:
        # Bound to the platform key and the measurement, as a hardware sealing key is bound
        # to the CPU and MRENCLAVE (see accord.tee.core.sealing).
        raw = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return simulated_sealing_key(raw, bytes.fromhex(self._identity.measurement))
