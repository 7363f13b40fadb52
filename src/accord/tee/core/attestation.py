"""Attestation: measurements, quotes and their verification against a policy (pure).

An enclave proves what it is with **evidence**: a statement, signed by its platform, of

* the backend that produced it (``simulated`` here; a hardware backend adds its own name),
* the enclave's **measurement** — SHA-256 over its code files and fixed configuration
  (:func:`measure`),
* its **security version** and **debug flag**,
* ``report_data = SHA-256(channel public key ‖ peer's nonce ‖ session id)``
  (:func:`channel_report_data`), which binds the evidence to one handshake: a quote
  cannot be replayed into another session and the channel key cannot be swapped.

The verifier checks the evidence against its own :class:`AttestationPolicy` (loaded from
TOML by :func:`parse_policy`) with :func:`verify_evidence`. Every failure raises
:class:`~accord.errors.AttestationError` whose message states the precise reason; it is
meant for the local log only. What goes back to the peer is one opaque word (see
:mod:`accord.tee.core.wire`).

The simulated backend's quote is an Ed25519 signature by a *platform key* kept on disk
(:mod:`accord.tee.runtime.platform_key`). It proves only that the holder of that key vouched for
the measurement, so verifiers accept it only when the policy says ``allow_simulated``.

Nothing in this module touches files, sockets or clocks.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from accord._validation import require_int
from accord.errors import AttestationError, ConfigurationError, ProtocolError
from accord.tee.core.wire import pack_fields, unpack_fields

__all__ = [
    "DIGEST_SIZE",
    "SIMULATED_BACKEND",
    "AttestationPolicy",
    "EvidenceClaims",
    "channel_report_data",
    "key_fingerprint",
    "make_simulated_evidence",
    "measure",
    "parse_policy",
    "policy_toml",
    "public_key_bytes",
    "verify_evidence",
]

#: Size of a measurement, a nonce, a session id and ``report_data``.
DIGEST_SIZE = 32
#: Name of the backend whose evidence is a quote signed by a platform key on disk.
SIMULATED_BACKEND = "simulated"

_EVIDENCE_CONTEXT = b"accord-evidence/v1"
_SIMULATED_QUOTE_CONTEXT = b"accord-simulated-quote/v1"
_MEASUREMENT_CONTEXT = b"accord-measurement/v1"
_SECURITY_VERSION = struct.Struct("!I")
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
_RAW_KEY = re.compile(r"^ed25519:[0-9a-f]{64}$")


def _require_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ProtocolError(f"{name}: expected {size} bytes, got {len(value)}")


def channel_report_data(channel_public_key: bytes, peer_nonce: bytes, session_id: bytes) -> bytes:
    """``SHA-256(channel public key ‖ peer's nonce ‖ session id)``: the fields are 32 bytes
    each, so the concatenation is unambiguous."""
    _require_size("channel public key", channel_public_key, DIGEST_SIZE)
    _require_size("peer nonce", peer_nonce, DIGEST_SIZE)
    _require_size("session id", session_id, DIGEST_SIZE)
    return hashlib.sha256(channel_public_key + peer_nonce + session_id).digest()


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte encoding of an Ed25519 public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_fingerprint(raw_public_key: bytes) -> str:
    """``sha256:<hex>`` of a raw platform public key: what a policy lists as trusted."""
    return "sha256:" + hashlib.sha256(raw_public_key).hexdigest()


def measure(files: Iterable[tuple[str, bytes]], config: Mapping[str, Any]) -> bytes:
    """SHA-256 over an enclave's code files and its fixed configuration.

    ``files`` are ``(relative path, content)`` pairs; they are hashed in sorted path order
    with their lengths, so the measurement does not depend on the order given and no two
    different file sets collide by concatenation. ``config`` is hashed as canonical JSON.
    """
    digest = hashlib.sha256(_MEASUREMENT_CONTEXT)
    seen: set[str] = set()
    for path, content in sorted(files):
        if path in seen:
            raise ValueError(f"measure: file {path!r} given twice")
        seen.add(path)
        name = path.encode()
        digest.update(struct.pack("!IQ", len(name), len(content)))
        digest.update(name)
        digest.update(content)
    canonical = json.dumps(dict(config), sort_keys=True, separators=(",", ":")).encode()
    digest.update(struct.pack("!Q", len(canonical)))
    digest.update(canonical)
    return digest.digest()


@dataclass(frozen=True)
class EvidenceClaims:
    """What verified evidence says about the enclave that produced it."""

    backend: str
    measurement: bytes
    security_version: int
    debug: bool
    report_data: bytes
    #: Fingerprint of the key that signed the evidence (the platform key, for ``simulated``).
    signer: str


def _encode_claims_body(
    backend: str, measurement: bytes, security_version: int, debug: bool, report_data: bytes
) -> list[bytes]:
    return [
        backend.encode(),
        measurement,
        _SECURITY_VERSION.pack(security_version),
        b"\x01" if debug else b"\x00",
        report_data,
    ]


def make_simulated_evidence(
    platform_key: Ed25519PrivateKey,
    *,
    measurement: bytes,
    security_version: int,
    debug: bool,
    report_data: bytes,
) -> bytes:
    """Evidence of the ``simulated`` backend: the platform key's Ed25519 signature over
    (backend name, measurement, security version, debug flag, report_data)."""
    _require_size("measurement", measurement, DIGEST_SIZE)
    _require_size("report_data", report_data, DIGEST_SIZE)
    if not 0 <= security_version < 2**32:
        raise ValueError(f"security_version: expected 0 <= v < 2**32, got {security_version}")
    signed = pack_fields(
        [
            _SIMULATED_QUOTE_CONTEXT,
            *_encode_claims_body(
                SIMULATED_BACKEND, measurement, security_version, debug, report_data
            ),
            public_key_bytes(platform_key),
        ]
    )
    signature = platform_key.sign(signed)
    return pack_fields([_EVIDENCE_CONTEXT, SIMULATED_BACKEND.encode(), signed, signature])


def _verify_simulated(signed: bytes, signature: bytes) -> EvidenceClaims:
    """Check a simulated quote's signature and return its claims (policy checks come later)."""
    try:
        context, backend, measurement, version, debug, report_data, platform_key = unpack_fields(
            signed, 7, "simulated quote"
        )
    except ProtocolError as error:
        raise AttestationError("evidence is malformed", detail=str(error)) from error
    if context != _SIMULATED_QUOTE_CONTEXT or backend != SIMULATED_BACKEND.encode():
        raise AttestationError("evidence is malformed: not a simulated quote")
    if (
        len(measurement) != DIGEST_SIZE
        or len(version) != _SECURITY_VERSION.size
        or debug not in (b"\x00", b"\x01")
        or len(report_data) != DIGEST_SIZE
        or len(platform_key) != 32
    ):
        raise AttestationError("evidence is malformed: a quote field has the wrong size")
    try:
        Ed25519PublicKey.from_public_bytes(platform_key).verify(signature, signed)
    except (InvalidSignature, ValueError) as error:
        raise AttestationError(
            "the quote's signature does not verify under the platform key it names"
        ) from error
    return EvidenceClaims(
        backend=SIMULATED_BACKEND,
        measurement=measurement,
        security_version=_SECURITY_VERSION.unpack(version)[0],
        debug=debug == b"\x01",
        report_data=report_data,
        signer=key_fingerprint(platform_key),
    )


#: Signature checkers per backend. A hardware backend adds its own (e.g. an SGX DCAP or a
#: TDX quote verifier) returning the same :class:`EvidenceClaims`.
_VERIFIERS: dict[str, Callable[[bytes, bytes], EvidenceClaims]] = {
    SIMULATED_BACKEND: _verify_simulated,
}


@dataclass(frozen=True)
class AttestationPolicy:
    """Which peer enclaves this party trusts. Loaded from TOML by :func:`parse_policy`.

    Every check fails closed: an empty ``allowed_measurements`` or ``trusted_platform_keys``
    is rejected when the policy is built, not silently treated as "allow all".
    """

    #: Hex SHA-256 measurements of enclave builds this party accepts.
    allowed_measurements: frozenset[str]
    #: ``sha256:<hex>`` fingerprints of platform keys whose signatures are trusted.
    trusted_platform_keys: frozenset[str]
    #: The lowest enclave security version accepted.
    min_security_version: int = 1
    #: Accept enclaves that run in debug mode (their memory is readable by the host).
    allow_debug: bool = False
    #: Accept evidence of the ``simulated`` backend (no hardware protection at all).
    allow_simulated: bool = False

    def __post_init__(self) -> None:
        if not self.allowed_measurements:
            raise ConfigurationError("allowed_measurements: expected at least one measurement")
        for value in self.allowed_measurements:
            if not isinstance(value, str) or not _HEX_DIGEST.match(value):
                raise ConfigurationError(
                    f"allowed_measurements: expected 64 lowercase hex digits, got {value!r}"
                )
        if not self.trusted_platform_keys:
            raise ConfigurationError("trusted_platform_keys: expected at least one key")
        for value in self.trusted_platform_keys:
            if not isinstance(value, str) or not _FINGERPRINT.match(value):
                raise ConfigurationError(
                    f"trusted_platform_keys: expected 'sha256:<64 hex digits>', got {value!r}"
                )
        require_int("min_security_version", self.min_security_version, minimum=0)
        for name in ("allow_debug", "allow_simulated"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"{name}: expected true or false, got {getattr(self, name)!r}"
                )


_POLICY_KEYS = {
    "allowed_measurements",
    "trusted_platform_keys",
    "min_security_version",
    "allow_debug",
    "allow_simulated",
}


def _string_list(source: str, table: Mapping[str, Any], key: str) -> list[str]:
    value = table.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigurationError(f"{source}: {key}: expected a list of strings, got {value!r}")
    return [item.strip().lower() for item in value]


def _trusted_key(source: str, entry: str) -> str:
    if _FINGERPRINT.match(entry):
        return entry
    if _RAW_KEY.match(entry):
        return key_fingerprint(bytes.fromhex(entry.removeprefix("ed25519:")))
    raise ConfigurationError(
        f"{source}: trusted_platform_keys: expected 'sha256:<64 hex digits>' (a fingerprint) "
        f"or 'ed25519:<64 hex digits>' (a raw public key), got {entry!r}"
    )


def parse_policy(text: str, source: str = "policy") -> AttestationPolicy:
    """Build a policy from TOML text; errors name ``source``, the key and the bad value.

    The format (see :func:`policy_toml`)::

        allowed_measurements = ["<64 hex digits>", ...]
        trusted_platform_keys = ["sha256:<64 hex digits>", ...]   # or "ed25519:<raw key hex>"
        min_security_version = 1
        allow_debug = false
        allow_simulated = false
    """
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{source}: not valid TOML: {error}") from error
    unknown = sorted(set(table) - _POLICY_KEYS)
    if unknown:
        expected = ", ".join(sorted(_POLICY_KEYS))
        raise ConfigurationError(
            f"{source}: unknown key {unknown[0]!r}; expected some of {expected}"
        )
    for key in ("allowed_measurements", "trusted_platform_keys"):
        if key not in table:
            raise ConfigurationError(f"{source}: missing required key {key!r}")
    measurements = _string_list(source, table, "allowed_measurements")
    keys = [
        _trusted_key(source, entry)
        for entry in _string_list(source, table, "trusted_platform_keys")
    ]
    try:
        return AttestationPolicy(
            allowed_measurements=frozenset(measurements),
            trusted_platform_keys=frozenset(keys),
            min_security_version=table.get("min_security_version", 1),
            allow_debug=table.get("allow_debug", False),
            allow_simulated=table.get("allow_simulated", False),
        )
    except ConfigurationError as error:
        raise ConfigurationError(f"{source}: {error}") from error


def policy_toml(policy: AttestationPolicy) -> str:
    """The TOML text of ``policy`` (what :func:`parse_policy` reads back)."""

    def strings(values: Iterable[str]) -> str:
        return "[" + ", ".join(json.dumps(value) for value in sorted(values)) + "]"

    return (
        f"allowed_measurements = {strings(policy.allowed_measurements)}\n"
        f"trusted_platform_keys = {strings(policy.trusted_platform_keys)}\n"
        f"min_security_version = {policy.min_security_version}\n"
        f"allow_debug = {str(policy.allow_debug).lower()}\n"
        f"allow_simulated = {str(policy.allow_simulated).lower()}\n"
    )


def verify_evidence(
    evidence: bytes, policy: AttestationPolicy, expected_report_data: bytes
) -> EvidenceClaims:
    """Verify a peer's evidence and check it against ``policy``.

    ``expected_report_data`` is what this verifier computes from the peer's channel public
    key, *its own* fresh nonce and the session id; a quote made for another nonce (stale or
    replayed) or another key does not match. Raises :class:`AttestationError` with the
    precise reason; returns the verified claims.
    """
    try:
        context, backend_name, signed, signature = unpack_fields(evidence, 4, "evidence")
    except ProtocolError as error:
        raise AttestationError("evidence is malformed", detail=str(error)) from error
    if context != _EVIDENCE_CONTEXT:
        raise AttestationError("evidence is malformed: unknown evidence format")
    backend = backend_name.decode("ascii", errors="replace")
    verifier = _VERIFIERS.get(backend)
    if verifier is None:
        raise AttestationError(
            f"evidence comes from backend {backend!r}, for which no verifier is installed"
        )
    claims = verifier(signed, signature)
    if claims.backend == SIMULATED_BACKEND:
        if claims.signer not in policy.trusted_platform_keys:
            raise AttestationError(
                f"the quote is signed by platform key {claims.signer}, "
                "which is not in the policy's trusted_platform_keys"
            )
        if not policy.allow_simulated:
            raise AttestationError(
                "the evidence comes from the simulated backend and the policy does not set "
                "allow_simulated = true"
            )
    if claims.measurement.hex() not in policy.allowed_measurements:
        raise AttestationError(
            f"enclave measurement {claims.measurement.hex()} is not in the policy's "
            "allowed_measurements (different or modified enclave code)"
        )
    if claims.security_version < policy.min_security_version:
        raise AttestationError(
            f"enclave security version {claims.security_version} is below the policy's "
            f"min_security_version {policy.min_security_version}"
        )
    if claims.debug and not policy.allow_debug:
        raise AttestationError(
            "the enclave runs in debug mode and the policy does not set allow_debug = true"
        )
    if claims.report_data != expected_report_data:
        raise AttestationError(
            "the quote's report_data does not match this handshake's nonce, session and "
            "channel key (a stale or replayed quote, or a swapped key)"
        )
    return claims
