"""The alignment's result, pinned: the same inputs and enclave randomness give the same bytes.

Speed work on the alignment core (digests, normalisation, sorting, the intersection, the
enclave's buffers) must not change what it computes. Two parties align in one process
(in-process enclaves over in-memory links, as in ``test_align_in_process``) with seeded
randomness in place of ``os.urandom``, so the session secret, the digest key and the shared
order are fixed. The row maps and the fingerprint are compared with the values this code
gave before that work (commit d7a2a8a), in memory and bucketed.

The inputs cover each path of the digest and normalisation code: IDs of one width (32
ASCII characters) and of many widths (1-70 bytes, some non-ASCII, some with surrounding
whitespace and unnormalised accents).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from accord.tee.core.backend import SimulatedBackend
from accord.tee.core.session import EnclaveSession
from accord.tee.runtime.host import InProcessEnclave
from accord.tee.runtime.party import PartySummary
from tests.align_support import write_table
from tests.test_align_in_process import MEASUREMENT, PLATFORM, _align, _pair_settings, _policy

#: Row map SHA-256 of party a and of party b (the same in memory and bucketed), from d7a2a8a.
PINNED_MAPS = {
    "fixed": (
        "648a2e4837f3bda8461705e7a23dc26534399bd0a4d7209c7a571a61ca0895eb",
        "5815cc23549e3f01b932f7cd3152122c4cb7ff027fd68a8c6d1e9d819be07d37",
    ),
    "mixed": (
        "90333bda6f43ff123406c633d266dcc52836bc80de74bd68b8267c9cac83f8a6",
        "4fd3cd55e15e5a64f2b4eee2aff376df2528b679eb4f4dfa7ab880f1e486e32b",
    ),
}
#: The fingerprint every enclave confirmed (a bucketed run hashes its buckets' results).
PINNED_FINGERPRINTS = {
    ("fixed", None): "d22fc6d6a138412ed05d2afd7219cf6f3a95814c6d47123f332ad350b62a45fc",
    ("fixed", 3): "d946f39912db8ba0f08b90217b0745114789f93beac2b3a7c5486f54878266b5",
    ("mixed", None): "7fc11e1868b014a6abdc26a8091aebfa62cee48b77c1fd45050d5c74b27a5691",
    ("mixed", 3): "4bf727ad000a72601b70795445659e81a2f1eb5ad077c8affa31929cd09a352c",
}


def _seeded(seed: str) -> Callable[[int], bytes]:
    """Deterministic stand-in for ``os.urandom`` (SHA-256 of a seed and a counter)."""
    counter = itertools.count()

    def random_bytes(size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(f"{seed}/{next(counter)}".encode()).digest()
        return out[:size]

    return random_bytes


def _ids(kind: str) -> list[str]:
    rng = random.Random(20261203)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    ids: set[str] = set()
    while len(ids) < 3000:
        if kind == "fixed":
            ids.add("".join(rng.choices(letters, k=32)))
            continue
        value = "".join(rng.choices(letters + "éü東", k=rng.randint(1, 60)))
        ids.add(value)
    return sorted(ids)


def _write(folder: Path, kind: str) -> None:
    ids = _ids(kind)
    rng = random.Random(7)
    a, b = ids[:2000], ids[1000:]
    rng.shuffle(a)
    rng.shuffle(b)
    if kind == "mixed":
        # The same IDs as the peer's, written differently: whitespace and decomposed accents.
        a = [f"  {value}\t" if index % 7 == 0 else value for index, value in enumerate(a)]
        a = [
            value.replace("é", "e\u0301") if index % 5 == 0 else value
            for index, value in enumerate(a)
        ]
    write_table(folder / "a.csv", a, "a_x")
    write_table(folder / "b.csv", b, "b_x")


def _enclave(seed: str) -> InProcessEnclave:
    backend = SimulatedBackend(PLATFORM, measurement=MEASUREMENT, security_version=1, debug=False)
    return InProcessEnclave(EnclaveSession(backend, _seeded(seed)), backend.identity)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("buckets", [None, 3])
@pytest.mark.parametrize("kind", ["fixed", "mixed"])
def test_the_result_is_pinned(tmp_path: Path, kind: str, buckets: int | None) -> None:
    _write(tmp_path, kind)
    policy = _policy(tmp_path / "policy.toml", PLATFORM)
    settings = _pair_settings(tmp_path, policy, buckets)
    results = asyncio.run(_align(settings, [_enclave("a"), _enclave("b")]))
    summaries = [result for result in results if isinstance(result, PartySummary)]
    assert len(summaries) == 2, results
    assert summaries[0].intersection == 1000
    maps = (_file_hash(tmp_path / "a.map.csv"), _file_hash(tmp_path / "b.map.csv"))
    assert maps == PINNED_MAPS[kind]
    fingerprint = PINNED_FINGERPRINTS[(kind, buckets)]
    assert [summary.fingerprint for summary in summaries] == [fingerprint, fingerprint]
