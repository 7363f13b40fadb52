"""Attestation core: measurements, simulated quotes, policies — known answers and attacks."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accord.errors import AttestationError, ConfigurationError
from accord.tee.core.attestation import (
    AttestationPolicy,
    channel_report_data,
    key_fingerprint,
    make_simulated_evidence,
    measure,
    parse_policy,
    policy_toml,
    public_key_bytes,
    verify_evidence,
)
from accord.tee.core.backend import SimulatedBackend
from accord.tee.core.wire import pack_fields, unpack_fields
from accord.tee.runtime.measurement import (
    ENCLAVE_CONFIG,
    enclave_code_files,
    enclave_measurement,
    unmeasured_modules,
)
from accord.tee.runtime.platform_key import load_or_create_platform_key

PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
MEASUREMENT = hashlib.sha256(b"enclave build 1").digest()
REPORT = hashlib.sha256(b"report").digest()


def policy(**changes: object) -> AttestationPolicy:
    fields: dict[str, object] = {
        "allowed_measurements": frozenset({MEASUREMENT.hex()}),
        "trusted_platform_keys": frozenset({key_fingerprint(public_key_bytes(PLATFORM))}),
        "min_security_version": 1,
        "allow_debug": False,
        "allow_simulated": True,
    }
    fields.update(changes)
    return AttestationPolicy(**fields)  # type: ignore[arg-type]


def evidence(
    *,
    key: Ed25519PrivateKey = PLATFORM,
    measurement: bytes = MEASUREMENT,
    version: int = 1,
    debug: bool = False,
    report: bytes = REPORT,
) -> bytes:
    return make_simulated_evidence(
        key, measurement=measurement, security_version=version, debug=debug, report_data=report
    )


def test_report_data_is_sha256_of_key_nonce_and_session() -> None:
    key, nonce, session = b"k" * 32, b"n" * 32, b"s" * 32
    assert (
        channel_report_data(key, nonce, session) == hashlib.sha256(key + nonce + session).digest()
    )


def test_measurement_known_answer_and_independent_recomputation() -> None:
    files = [("tee/b.py", b"print(2)\n"), ("a.py", b"x = 1\n")]
    config = {"record_size": 1024, "protocol_version": 1}
    # The documented construction, recomputed by hand.
    digest = hashlib.sha256(b"accord-measurement/v1")
    for path, content in sorted(files):
        digest.update(struct.pack("!IQ", len(path), len(content)) + path.encode() + content)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    digest.update(struct.pack("!Q", len(canonical)) + canonical)
    assert measure(files, config) == digest.digest()
    assert measure(files, config).hex() == (
        "8daa949db2eda39f2908732e30ae8cf44fb27e9edd660ffaceb6c69e312dc276"
    )


def test_measurement_changes_with_any_byte_and_never_collides_by_concatenation() -> None:
    base = measure([("a.py", b"abc")], {})
    assert measure([("a.py", b"abd")], {}) != base
    assert measure([("a.py", b"abc")], {"debug": True}) != base
    assert measure([("a", b"b"), ("c", b"")], {}) != measure([("a", b""), ("c", b"b")], {})
    assert measure([("ab", b"c")], {}) != measure([("a", b"bc")], {})
    with pytest.raises(ValueError, match="given twice"):
        measure([("a.py", b"1"), ("a.py", b"1")], {})


def test_installed_enclave_measurement_covers_tee_and_alignment_code() -> None:
    paths = [path for path, _ in enclave_code_files()]
    assert "tee/runtime/enclave.py" in paths and "tee/core/channel.py" in paths
    assert "alignment/digests.py" in paths and "alignment/__init__.py" in paths
    assert (
        "tee/runtime/party.py" not in paths and "tee/runtime/transport.py" not in paths
    )  # host side
    assert enclave_measurement() == measure(enclave_code_files(), ENCLAVE_CONFIG)
    assert unmeasured_modules(["accord", "accord.tee.core.channel", "numpy"]) == []
    assert unmeasured_modules(["accord.tee.runtime.transport", "accord.tables"]) == [
        "accord.tables",
        "accord.tee.runtime.transport",
    ]


def _fields(*parts: bytes) -> bytes:
    return b"".join(struct.pack("!I", len(part)) + part for part in parts)


def test_simulated_evidence_known_answer() -> None:
    # The documented layout built by hand; Ed25519 is deterministic, so the bytes are fixed.
    signed = _fields(
        b"accord-simulated-quote/v1",
        b"simulated",
        MEASUREMENT,
        struct.pack("!I", 1),
        b"\x00",
        REPORT,
        public_key_bytes(PLATFORM),
    )
    expected = _fields(b"accord-evidence/v1", b"simulated", signed, PLATFORM.sign(signed))
    assert evidence() == expected
    assert hashlib.sha256(expected).hexdigest() == (
        "953d346b67c82fa9341e22996b5e6e20b40998aa433dbab21e38675f3ea8b089"
    )


def test_valid_evidence_verifies_and_returns_the_claims() -> None:
    claims = verify_evidence(evidence(), policy(), REPORT)
    assert claims.backend == "simulated"
    assert claims.measurement == MEASUREMENT
    assert claims.security_version == 1
    assert claims.debug is False
    assert claims.signer == key_fingerprint(public_key_bytes(PLATFORM))


@pytest.mark.parametrize(
    ("made_with", "rules", "reason"),
    [
        ({"measurement": b"\x01" * 32}, {}, "not in the policy's allowed_measurements"),
        ({"debug": True}, {}, "debug mode"),
        ({"version": 0}, {}, "below the policy's min_security_version"),
        ({"key": OTHER_PLATFORM}, {}, "not in the policy's trusted_platform_keys"),
        ({}, {"allow_simulated": False}, "allow_simulated = true"),
        ({"report": b"\x02" * 32}, {}, "stale or replayed quote"),
    ],
    ids=["measurement", "debug", "version", "platform-key", "simulated", "stale-nonce"],
)
def test_policy_refusals_name_the_precise_reason(
    made_with: dict[str, object], rules: dict[str, object], reason: str
) -> None:
    with pytest.raises(AttestationError, match=reason):
        verify_evidence(evidence(**made_with), policy(**rules), REPORT)  # type: ignore[arg-type]


def test_debug_enclave_is_accepted_only_when_the_policy_allows_debug() -> None:
    assert verify_evidence(evidence(debug=True), policy(allow_debug=True), REPORT).debug


def _replace_field(data: bytes, outer_index: int, inner_index: int | None, value: bytes) -> bytes:
    outer = unpack_fields(data, 4, "evidence")
    if inner_index is None:
        outer[outer_index] = value
    else:
        inner = unpack_fields(outer[2], 7, "quote")
        inner[inner_index] = value
        outer[2] = pack_fields(inner)
    return pack_fields(outer)


@pytest.mark.parametrize(
    ("outer", "inner", "value", "reason"),
    [
        (2, 2, b"\x01" * 32, "signature does not verify"),  # measurement swapped after signing
        (2, 4, b"\x00", "signature does not verify"),  # debug flag flipped from 1 to 0
        (2, 5, b"\x03" * 32, "signature does not verify"),  # report_data swapped
        (2, 6, public_key_bytes(OTHER_PLATFORM), "signature does not verify"),  # key swapped
        (3, None, b"\x00" * 64, "signature does not verify"),  # signature zeroed
        (1, None, b"sgx-dcap", "no verifier is installed"),
        (0, None, b"something else", "malformed"),
    ],
)
def test_forged_or_altered_evidence_is_refused(
    outer: int, inner: int | None, value: bytes, reason: str
) -> None:
    original = evidence(debug=True) if inner == 4 else evidence()
    forged = _replace_field(original, outer, inner, value)
    with pytest.raises(AttestationError, match=reason):
        verify_evidence(forged, policy(allow_debug=True), REPORT)


def test_garbage_evidence_is_refused() -> None:
    for garbage in (b"", b"\x00\x00\x00\x05abc", os.urandom(200)):
        with pytest.raises(AttestationError, match="malformed"):
            verify_evidence(garbage, policy(), REPORT)


def test_backend_signs_with_its_identity() -> None:
    backend = SimulatedBackend(PLATFORM, measurement=MEASUREMENT, security_version=3, debug=False)
    assert backend.identity.platform_key == key_fingerprint(public_key_bytes(PLATFORM))
    claims = verify_evidence(backend.make_evidence(REPORT), policy(min_security_version=3), REPORT)
    assert claims.security_version == 3


def test_policy_toml_round_trip_and_raw_key_form() -> None:
    original = policy(allow_debug=True, min_security_version=2)
    assert parse_policy(policy_toml(original)) == original
    raw = public_key_bytes(PLATFORM).hex()
    text = (
        f'allowed_measurements = ["{MEASUREMENT.hex().upper()}"]\n'
        f'trusted_platform_keys = ["ed25519:{raw}"]\n'
    )
    parsed = parse_policy(text, "p.toml")
    assert parsed.trusted_platform_keys == original.trusted_platform_keys
    assert parsed.allow_simulated is False and parsed.allow_debug is False
    assert parsed.min_security_version == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allowed_measurements = [", "p.toml: not valid TOML"),
        ('trusted_platform_keys = ["sha256:' + "a" * 64 + '"]', "missing required key"),
        (
            'allowed_measurements = []\ntrusted_platform_keys = ["sha256:' + "a" * 64 + '"]',
            "expected at least one measurement",
        ),
        (
            f'allowed_measurements = ["{"a" * 63}"]\n'
            'trusted_platform_keys = ["sha256:' + "a" * 64 + '"]',
            "64 lowercase hex digits",
        ),
        (
            f'allowed_measurements = ["{"a" * 64}"]\ntrusted_platform_keys = ["abc"]',
            "sha256:<64 hex digits>",
        ),
        (
            f'allowed_measurements = ["{"a" * 64}"]\n'
            'trusted_platform_keys = ["sha256:' + "a" * 64 + '"]\nallow_debug = "yes"',
            "allow_debug: expected true or false",
        ),
        (
            f'allowed_measurements = ["{"a" * 64}"]\n'
            'trusted_platform_keys = ["sha256:' + "a" * 64 + '"]\nallow_everything = true',
            "unknown key 'allow_everything'",
        ),
        (
            f'allowed_measurements = "{"a" * 64}"\n'
            'trusted_platform_keys = ["sha256:' + "a" * 64 + '"]',
            "expected a list of strings",
        ),
    ],
)
def test_bad_policies_fail_naming_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"p\.toml") as caught:
        parse_policy(text, "p.toml")
    assert message in str(caught.value)


def test_platform_key_created_once_with_mode_0600_then_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "platform-key.pem"
    first = load_or_create_platform_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_bytes(load_or_create_platform_key(path)) == public_key_bytes(first)
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp file left


def test_platform_key_readable_by_others_or_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    load_or_create_platform_key(path)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="readable by other users"):
        load_or_create_platform_key(path)
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(ConfigurationError, match="not an unencrypted PEM private key"):
        load_or_create_platform_key(path)


def test_platform_key_default_path_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accord.tee.runtime.platform_key import default_platform_key_path

    monkeypatch.delenv("ACCORD_PLATFORM_KEY", raising=False)
    monkeypatch.setenv("ACCORD_HOME", str(tmp_path))
    assert default_platform_key_path() == tmp_path / "platform-key.pem"
    monkeypatch.setenv("ACCORD_PLATFORM_KEY", str(tmp_path / "k.pem"))
    assert default_platform_key_path() == tmp_path / "k.pem"
