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
TOML by :func:`parse_policy`) with :func:`verify_evidence`. A policy may also **bind party
names** to the platform keys (and optionally the measurements) allowed for each
(:class:`PartyBinding`, ``[parties.<name>]`` tables): :func:`check_party_binding` then
refuses a trusted enclave that claims another party's name. A policy without bindings
keeps working, and the verified identity says its name is ``unbound``. Every failure raises
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
from typing import TYPE_CHECKING, Any

from accord._validation import require_int
from accord.errors import AttestationError, ConfigurationError, ProtocolError
from accord.tee.core.names import validate_party_name
from accord.tee.core.wire import pack_fields, unpack_fields

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "DIGEST_SIZE",
    "SIMULATED_BACKEND",
    "AttestationPolicy",
    "EvidenceClaims",
    "PartyBinding",
    "channel_report_data",
    "check_party_binding",
    "key_fingerprint",
    "make_simulated_evidence",
    "measure",
    "parse_policy",
    "policy_toml",
    "public_key_bytes",
    "validate_party_name",
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
    # Imported here, as in _verify_simulated: a host checks policies with this module
    # without loading the signature code (its enclave does the signing and verifying).
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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


def _check_fingerprints(field: str, values: frozenset[str]) -> None:
    for value in values:
        if not isinstance(value, str) or not _FINGERPRINT.match(value):
            raise ConfigurationError(f"{field}: expected 'sha256:<64 hex digits>', got {value!r}")


def _check_measurements(field: str, values: frozenset[str]) -> None:
    for value in values:
        if not isinstance(value, str) or not _HEX_DIGEST.match(value):
            raise ConfigurationError(f"{field}: expected 64 lowercase hex digits, got {value!r}")


@dataclass(frozen=True)
class PartyBinding:
    """The enclaves allowed to act as one party: ``[parties.<name>]`` in a policy."""

    #: The party name (as given with ``--party-name``).
    name: str
    #: ``sha256:<hex>`` fingerprints of the platform keys that may sign for this party.
    platform_keys: frozenset[str]
    #: Hex measurements this party's enclave may have (empty: any the policy allows).
    measurements: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        validate_party_name(self.name, "parties")
        field = f"parties.{self.name}"
        if not self.platform_keys:
            raise ConfigurationError(f"{field}.platform_keys: expected at least one key")
        _check_fingerprints(f"{field}.platform_keys", self.platform_keys)
        _check_measurements(f"{field}.measurements", self.measurements)


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
    #: Party names bound to the platform keys (and measurements) allowed for each. Empty:
    #: names are unbound (any trusted enclave may use any name). Once any party is bound,
    #: a peer whose name is not bound is refused.
    parties: tuple[PartyBinding, ...] = ()

    def __post_init__(self) -> None:
        if not self.allowed_measurements:
            raise ConfigurationError("allowed_measurements: expected at least one measurement")
        _check_measurements("allowed_measurements", self.allowed_measurements)
        if not self.trusted_platform_keys:
            raise ConfigurationError("trusted_platform_keys: expected at least one key")
        _check_fingerprints("trusted_platform_keys", self.trusted_platform_keys)
        names = [binding.name for binding in self.parties]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"parties: a party is bound twice in {sorted(names)}")
        for binding in self.parties:
            untrusted = sorted(binding.platform_keys - self.trusted_platform_keys)
            if untrusted:
                raise ConfigurationError(
                    f"parties.{binding.name}.platform_keys: {untrusted[0]} is not in "
                    "trusted_platform_keys"
                )
            unknown = sorted(binding.measurements - self.allowed_measurements)
            if unknown:
                raise ConfigurationError(
                    f"parties.{binding.name}.measurements: {unknown[0]} is not in "
                    "allowed_measurements"
                )
        require_int("min_security_version", self.min_security_version, minimum=0)
        for name in ("allow_debug", "allow_simulated"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"{name}: expected true or false, got {getattr(self, name)!r}"
                )

    def binding(self, name: str) -> PartyBinding | None:
        """The binding of party ``name`` (``None``: not bound)."""
        return next((binding for binding in self.parties if binding.name == name), None)


_POLICY_KEYS = {
    "allowed_measurements",
    "trusted_platform_keys",
    "min_security_version",
    "allow_debug",
    "allow_simulated",
    "parties",
}
_BINDING_KEYS = {"platform_keys", "measurements"}


def _string_list(source: str, table: Mapping[str, Any], key: str, within: str = "") -> list[str]:
    value = table.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        field = f"{within}.{key}" if within else key
        raise ConfigurationError(f"{source}: {field}: expected a list of strings, got {value!r}")
    return [item.strip().lower() for item in value]


def _trusted_key(source: str, entry: str, key: str = "trusted_platform_keys") -> str:
    if _FINGERPRINT.match(entry):
        return entry
    if _RAW_KEY.match(entry):
        return key_fingerprint(bytes.fromhex(entry.removeprefix("ed25519:")))
    raise ConfigurationError(
        f"{source}: {key}: expected 'sha256:<64 hex digits>' (a fingerprint) "
        f"or 'ed25519:<64 hex digits>' (a raw public key), got {entry!r}"
    )


def _parse_bindings(source: str, value: Any) -> tuple[PartyBinding, ...]:
    """``[parties.<name>]`` tables: ``platform_keys`` (required), ``measurements``."""
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"{source}: parties: expected tables [parties.<name>], got {value!r}"
        )
    bindings = []
    for name, table in sorted(value.items()):
        field = f"parties.{name}"
        if not isinstance(table, dict):
            raise ConfigurationError(f"{source}: {field}: expected a table, got {table!r}")
        unknown = sorted(set(table) - _BINDING_KEYS)
        if unknown:
            raise ConfigurationError(
                f"{source}: {field}: unknown key {unknown[0]!r}; expected platform_keys "
                "and optionally measurements"
            )
        if "platform_keys" not in table:
            raise ConfigurationError(f"{source}: {field}: missing required key 'platform_keys'")
        keys = [
            _trusted_key(source, entry, f"{field}.platform_keys")
            for entry in _string_list(source, table, "platform_keys", field)
        ]
        measurements = (
            _string_list(source, table, "measurements", field) if "measurements" in table else []
        )
        try:
            bindings.append(
                PartyBinding(
                    name=name, platform_keys=frozenset(keys), measurements=frozenset(measurements)
                )
            )
        except ConfigurationError as error:
            raise ConfigurationError(f"{source}: {error}") from error
    return tuple(bindings)


def parse_policy(text: str, source: str = "policy") -> AttestationPolicy:
    """Build a policy from TOML text; errors name ``source``, the key and the bad value.

    The format (see :func:`policy_toml`)::

        allowed_measurements = ["<64 hex digits>", ...]
        trusted_platform_keys = ["sha256:<64 hex digits>", ...]   # or "ed25519:<raw key hex>"
        min_security_version = 1
        allow_debug = false
        allow_simulated = false

        # Optional: bind party names to the enclaves allowed to act as them.
        [parties.a]
        platform_keys = ["sha256:<64 hex digits>"]
        measurements = ["<64 hex digits>"]        # optional: a subset of the above
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
    bindings = _parse_bindings(source, table.get("parties", {}))
    try:
        return AttestationPolicy(
            allowed_measurements=frozenset(measurements),
            trusted_platform_keys=frozenset(keys),
            min_security_version=table.get("min_security_version", 1),
            allow_debug=table.get("allow_debug", False),
            allow_simulated=table.get("allow_simulated", False),
            parties=bindings,
        )
    except ConfigurationError as error:
        raise ConfigurationError(f"{source}: {error}") from error


def policy_toml(policy: AttestationPolicy) -> str:
    """The TOML text of ``policy`` (what :func:`parse_policy` reads back)."""

    def strings(values: Iterable[str]) -> str:
        return "[" + ", ".join(json.dumps(value) for value in sorted(values)) + "]"

    text = (
        f"allowed_measurements = {strings(policy.allowed_measurements)}\n"
        f"trusted_platform_keys = {strings(policy.trusted_platform_keys)}\n"
        f"min_security_version = {policy.min_security_version}\n"
        f"allow_debug = {str(policy.allow_debug).lower()}\n"
        f"allow_simulated = {str(policy.allow_simulated).lower()}\n"
    )
    for binding in sorted(policy.parties, key=lambda binding: binding.name):
        text += f"\n[parties.{binding.name}]\nplatform_keys = {strings(binding.platform_keys)}\n"
        if binding.measurements:
            text += f"measurements = {strings(binding.measurements)}\n"
    return text


def check_party_binding(policy: AttestationPolicy, name: str, claims: EvidenceClaims) -> bool:
    """Check that the enclave behind ``claims`` may act as party ``name``.

    Returns ``True`` when the policy binds ``name`` and the claims match, ``False`` when
    the policy binds no name at all (names are unbound: the caller reports so). Raises
    :class:`AttestationError` naming the party, the key (or measurement) presented and the
    ones allowed when the policy binds names and this one does not match or is not bound.
    """
    if not policy.parties:
        return False
    binding = policy.binding(name)
    if binding is None:
        bound = ", ".join(sorted(repr(other.name) for other in policy.parties))
        raise AttestationError(
            f"party {name!r} is not bound in the policy's [parties] (bound: {bound}); "
            f"it presented platform key {claims.signer}"
        )
    if claims.signer not in binding.platform_keys:
        raise AttestationError(
            f"party {name!r} presented platform key {claims.signer}; the policy allows only "
            f"{', '.join(sorted(binding.platform_keys))} for {name!r}"
        )
    measurement = claims.measurement.hex()
    if binding.measurements and measurement not in binding.measurements:
        raise AttestationError(
            f"party {name!r} presented measurement {measurement}; the policy allows only "
            f"{', '.join(sorted(binding.measurements))} for {name!r}"
        )
    return True


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
