"""Two parties align in one process: in-process enclaves over in-memory peer links.

The same :func:`accord.tee.runtime.party.run_party` that ``accord align`` runs, with the
enclave session called in this process (:class:`InProcessEnclave`) and the peers joined by
:func:`memory_link_pair` instead of TCP: no process, no socket. The oracle is a plain set
intersection of the generated IDs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accord.errors import AccordError, AttestationError
from accord.tee.core.attestation import (
    AttestationPolicy,
    key_fingerprint,
    policy_toml,
    public_key_bytes,
)
from accord.tee.core.backend import SimulatedBackend
from accord.tee.core.session import EnclaveSession
from accord.tee.runtime.host import InProcessEnclave
from accord.tee.runtime.links import PeerLink, memory_link_pair
from accord.tee.runtime.party import Connect, PartySettings, PartySummary, run_party
from accord.tee.runtime.transport import Endpoint
from tests.align_support import make_ids, read_csv, write_table

MEASUREMENT = bytes(range(32))
PLATFORM = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
OTHER_PLATFORM = Ed25519PrivateKey.from_private_bytes(b"\x08" * 32)
#: Never dialled: the links come from ``connect``.
UNUSED = Endpoint("127.0.0.1", 9)


def _policy(path: Path, platform: Ed25519PrivateKey) -> Path:
    path.write_text(
        policy_toml(
            AttestationPolicy(
                allowed_measurements=frozenset({MEASUREMENT.hex()}),
                trusted_platform_keys=frozenset({key_fingerprint(public_key_bytes(platform))}),
                allow_simulated=True,
            )
        )
    )
    return path


def _enclave(platform: Ed25519PrivateKey = PLATFORM) -> InProcessEnclave:
    backend = SimulatedBackend(platform, measurement=MEASUREMENT, security_version=1, debug=False)
    return InProcessEnclave(EnclaveSession(backend, os.urandom), backend.identity)


def _settings(folder: Path, name: str, policy: Path, **extra: object) -> PartySettings:
    return PartySettings(
        input=folder / f"{name}.csv",
        key_columns=("id",),
        policy=policy,
        party_name=name,
        peers=(UNUSED,),
        output_map=folder / f"{name}.map.csv",
        output_table=folder / f"{name}.aligned.csv",
        **extra,  # type: ignore[arg-type]
    )


def _pair_settings(folder: Path, policy: Path, buckets: int | None) -> list[PartySettings]:
    """Parties a and b, in memory, or bucketed into ``buckets`` with run directories."""
    return [
        _settings(folder, name, policy)
        if buckets is None
        else _settings(folder, name, policy, buckets=buckets, run_dir=folder / f"run-{name}")
        for name in ("a", "b")
    ]


async def _align(
    settings: Sequence[PartySettings], enclaves: Sequence[InProcessEnclave]
) -> list[PartySummary | BaseException]:
    first, second = memory_link_pair(settings[0].party_name, settings[1].party_name)

    def connect(link: PeerLink) -> Connect:
        async def opened() -> list[PeerLink]:
            return [link]

        return opened

    return await asyncio.wait_for(
        asyncio.gather(
            *(
                run_party(party, enclave=enclave, connect=connect(link))
                for party, enclave, link in zip(settings, enclaves, (first, second), strict=True)
            ),
            return_exceptions=True,
        ),
        timeout=120,
    )


def _tables(folder: Path) -> set[str]:
    ids = make_ids(100, seed=3)
    write_table(folder / "a.csv", ids[:60][::-1], "a_x")
    write_table(folder / "b.csv", ids[30:], "b_x")
    return set(ids[:60]) & set(ids[30:])


@pytest.mark.parametrize("buckets", [None, 3])
def test_two_parties_align_in_process_over_memory_links(
    tmp_path: Path, buckets: int | None
) -> None:
    expected = _tables(tmp_path)
    policy = _policy(tmp_path / "policy.toml", PLATFORM)
    settings = _pair_settings(tmp_path, policy, buckets)

    results = asyncio.run(_align(settings, [_enclave(), _enclave()]))

    summaries = [result for result in results if isinstance(result, PartySummary)]
    assert len(summaries) == 2, results
    assert [s.intersection for s in summaries] == [len(expected)] * 2
    assert summaries[0].peer_ids == {"b": 70} and summaries[1].peer_ids == {"a": 60}
    assert summaries[0].buckets == buckets and summaries[1].buckets == buckets
    assert summaries[0].peer_enclaves["b"]["measurement"] == MEASUREMENT.hex()
    # both hosts hold the fingerprint their enclaves confirmed (in memory and bucketed)
    assert summaries[0].fingerprint == summaries[1].fingerprint
    assert summaries[0].fingerprint is not None and len(summaries[0].fingerprint) == 64
    aligned = {name: read_csv(tmp_path / f"{name}.aligned.csv") for name in ("a", "b")}
    ids_a = [row["id"] for row in aligned["a"]]
    assert ids_a == [row["id"] for row in aligned["b"]]  # the same shared order
    assert set(ids_a) == expected and len(ids_a) == len(expected)
    assert ids_a != sorted(ids_a)
    own = [row["id"] for row in read_csv(tmp_path / "a.csv")]
    row_map = read_csv(tmp_path / "a.map.csv")
    assert [own[int(row["row"])] for row in row_map] == ids_a
    assert not any(path.name.startswith("run-") for path in tmp_path.iterdir())  # removed


def test_another_alignment_has_another_fingerprint(tmp_path: Path) -> None:
    _tables(tmp_path)
    policy = _policy(tmp_path / "policy.toml", PLATFORM)
    fingerprints = []
    for run in range(2):  # the same tables, two sessions: two keyed orders
        settings = [
            dataclasses.replace(_settings(tmp_path, name, policy), session=f"session-{run}")
            for name in ("a", "b")
        ]
        for name in ("a", "b"):
            for output in tmp_path.glob(f"{name}.*.csv"):
                output.unlink()
        results = asyncio.run(_align(settings, [_enclave(), _enclave()]))
        summaries = [result for result in results if isinstance(result, PartySummary)]
        assert len(summaries) == 2, results
        assert summaries[0].fingerprint == summaries[1].fingerprint
        fingerprints.append(summaries[0].fingerprint)
    assert fingerprints[0] != fingerprints[1]


def test_a_refused_attestation_in_process_writes_nothing_on_either_side(tmp_path: Path) -> None:
    _tables(tmp_path)
    trusting = _policy(tmp_path / "policy.toml", PLATFORM)
    settings = [_settings(tmp_path, "a", trusting), _settings(tmp_path, "b", trusting)]

    results = asyncio.run(_align(settings, [_enclave(OTHER_PLATFORM), _enclave()]))

    assert all(isinstance(result, AccordError) for result in results), results
    assert isinstance(results[1], AttestationError)  # b refused a's platform key
    assert "platform key" in str(results[1])
    assert "refused the attestation" in str(results[0])  # a hears only the opaque word
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.csv", "b.csv", "policy.toml"]
