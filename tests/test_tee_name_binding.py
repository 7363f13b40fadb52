"""Party names bound to platform keys (issue 13 item 1): the policy format and the handshake.

A policy may bind each party name to the platform keys (and measurements) allowed for it.
A trusted enclave that claims another party's name is refused by *both* sides of the
handshake, before any channel key exists (so before any ID digest could be sent). A policy
without bindings keeps working; the verified identity then says the name is ``unbound``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accord.errors import AttestationError, ConfigurationError
from accord.tee.core.attestation import (
    AttestationPolicy,
    PartyBinding,
    key_fingerprint,
    parse_policy,
    policy_toml,
    public_key_bytes,
)
from accord.tee.core.backend import SimulatedBackend
from accord.tee.core.channel import HandshakeConfig, InitiatorHandshake, ResponderHandshake
from accord.tee.core.peers import peer_identity

KEY_A = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_B = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEY_C = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
FP = {
    name: key_fingerprint(public_key_bytes(key))
    for name, key in zip("abc", (KEY_A, KEY_B, KEY_C), strict=True)
}
MEASUREMENT = hashlib.sha256(b"enclave").digest()
OTHER_MEASUREMENT = hashlib.sha256(b"enclave v2").digest()


def policy(
    bindings: dict[str, tuple[str, ...]] | None = None, **measurements: str
) -> AttestationPolicy:
    return AttestationPolicy(
        allowed_measurements=frozenset({MEASUREMENT.hex(), OTHER_MEASUREMENT.hex()}),
        trusted_platform_keys=frozenset(FP.values()),
        allow_simulated=True,
        parties=tuple(
            PartyBinding(
                name=name,
                platform_keys=frozenset(FP[key] for key in keys),
                measurements=frozenset({measurements[name]})
                if name in measurements
                else frozenset(),
            )
            for name, keys in (bindings or {}).items()
        ),
    )


def drbg(seed: bytes) -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)


def config(
    name: str, key: Ed25519PrivateKey, rules: AttestationPolicy, measurement: bytes = MEASUREMENT
) -> HandshakeConfig:
    backend = SimulatedBackend(key, measurement=measurement, security_version=1, debug=False)
    return HandshakeConfig(
        party_name=name,
        session="s1",
        parties=2,
        policy=rules,
        make_evidence=backend.make_evidence,
        random_bytes=drbg(name.encode() + public_key_bytes(key)),
    )


BOUND = policy({"a": ("a",), "b": ("b",)})


def test_bound_names_open_the_channel_and_the_identity_says_so() -> None:
    initiator = InitiatorHandshake(config("a", KEY_A, BOUND))
    responder = ResponderHandshake(config("b", KEY_B, BOUND))
    finish, keys_a = initiator.finish(responder.respond(initiator.hello()))
    keys_b = responder.complete(finish)
    seen_by_a = peer_identity(keys_a)["peer_identity"]
    assert seen_by_a["party"] == "b"
    assert seen_by_a["name_binding"] == "bound"
    assert seen_by_a["platform_key"] == FP["b"]
    assert seen_by_a["measurement"] == MEASUREMENT.hex()
    assert peer_identity(keys_b)["peer_identity"]["platform_key"] == FP["a"]


def test_unbound_policy_keeps_working_and_says_unbound() -> None:
    unbound = policy()
    initiator = InitiatorHandshake(config("a", KEY_A, unbound))
    responder = ResponderHandshake(config("b", KEY_C, unbound))  # any trusted key may be "b"
    finish, keys_a = initiator.finish(responder.respond(initiator.hello()))
    responder.complete(finish)
    assert peer_identity(keys_a)["peer_identity"]["name_binding"] == "unbound"


def test_impostor_is_refused_by_the_initiator_before_it_sends_its_finish() -> None:
    # c holds a trusted platform key but runs as "b": a refuses at the response.
    initiator = InitiatorHandshake(config("a", KEY_A, BOUND))
    impostor = ResponderHandshake(config("b", KEY_C, BOUND))
    with pytest.raises(AttestationError) as caught:
        initiator.finish(impostor.respond(initiator.hello()))
    message = str(caught.value)
    assert message.startswith("refused the enclave of peer 'b': party 'b' presented platform key")
    assert FP["c"] in message and f"allows only {FP['b']} for 'b'" in message


def test_impostor_is_refused_by_the_responder_before_keys_exist() -> None:
    # The impostor dials: its own policy trusts everyone, the listener's binds b to KEY_B.
    impostor = InitiatorHandshake(config("b", KEY_C, policy()))
    responder = ResponderHandshake(config("a", KEY_A, BOUND))
    finish, _ = impostor.finish(responder.respond(impostor.hello()))
    with pytest.raises(AttestationError, match=f"party 'b' presented platform key {FP['c']}"):
        responder.complete(finish)


def test_a_name_the_policy_does_not_bind_is_refused_once_any_name_is_bound() -> None:
    initiator = InitiatorHandshake(config("a", KEY_A, BOUND))
    stranger = ResponderHandshake(config("c", KEY_C, BOUND))
    with pytest.raises(
        AttestationError,
        match=r"party 'c' is not bound in the policy's \[parties\] \(bound: 'a', 'b'\)",
    ):
        initiator.finish(stranger.respond(initiator.hello()))


def test_a_bound_measurement_refuses_another_build_of_the_right_key() -> None:
    strict = policy({"a": ("a",), "b": ("b",)}, b=MEASUREMENT.hex())
    initiator = InitiatorHandshake(config("a", KEY_A, strict))
    responder = ResponderHandshake(config("b", KEY_B, strict, measurement=OTHER_MEASUREMENT))
    with pytest.raises(
        AttestationError, match=f"party 'b' presented measurement {OTHER_MEASUREMENT.hex()}"
    ):
        initiator.finish(responder.respond(initiator.hello()))


def test_policy_with_bindings_round_trips_through_toml() -> None:
    original = policy({"a": ("a",), "b": ("b", "c")}, b=OTHER_MEASUREMENT.hex())
    text = policy_toml(original)
    assert "[parties.b]" in text
    assert parse_policy(text, "p.toml") == original
    raw = public_key_bytes(KEY_A).hex()
    assert parse_policy(
        policy_toml(policy()) + f'[parties.a]\nplatform_keys = ["ed25519:{raw}"]\n'
    ).binding("a") == PartyBinding(name="a", platform_keys=frozenset({FP["a"]}))


BASE = policy_toml(policy())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('parties = ["a"]', "parties: expected tables [parties.<name>]"),
        ("[parties]\na = 1", "parties.a: expected a table"),
        ("[parties.a]\nmeasurements = []", "parties.a: missing required key 'platform_keys'"),
        ("[parties.a]\nplatform_keys = []", "parties.a.platform_keys: expected at least one key"),
        ('[parties.a]\nplatform_keys = ["abc"]', "parties.a.platform_keys: expected 'sha256:"),
        (f'[parties.a]\nplatform_keys = ["{FP["a"]}"]\nkeys = 1', "parties.a: unknown key 'keys'"),
        (f'[parties.a]\nplatform_keys = "{FP["a"]}"', "parties.a.platform_keys: expected a list"),
        (
            f'[parties.a]\nplatform_keys = ["sha256:{"0" * 64}"]',
            "parties.a.platform_keys: sha256:" + "0" * 64 + " is not in trusted_platform_keys",
        ),
        (
            f'[parties.a]\nplatform_keys = ["{FP["a"]}"]\nmeasurements = ["{"1" * 64}"]',
            "is not in allowed_measurements",
        ),
        (f'[parties."a b"]\nplatform_keys = ["{FP["a"]}"]', "parties: expected 1-64 characters"),
    ],
)
def test_bad_bindings_fail_naming_the_file_and_the_field(extra: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_policy(BASE + extra + "\n", "p.toml")
    assert str(caught.value).startswith("p.toml: "), caught.value
    assert message in str(caught.value)
