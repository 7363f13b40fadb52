"""Attacks on a running alignment: a hostile relay between the hosts, bad evidence, a killed peer.

Every attack must fail closed: the attacked party exits with code 2 and one error line, and
writes no output file (not even a partial or temporary one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from align_support import (
    Party,
    Relay,
    make_ids,
    party_args,
    read_csv,
    write_policy,
    write_table,
)

from accord.commands.exit_codes import ExitCode
from accord.tee.core.wire import PeerFrame


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("attacks")
    universe = make_ids(450, seed=7)
    write_table(folder / "a.csv", universe[:300])
    write_table(folder / "b.csv", universe[150:][::-1])
    keys = {"a_key": folder / "a-platform.pem", "b_key": folder / "b-platform.pem"}
    policy = write_policy(folder / "policy.toml", platform_keys=list(keys.values()))
    return {
        "folder": folder,
        "a": folder / "a.csv",
        "b": folder / "b.csv",
        "policy": policy,
        **keys,
    }


def start_pair(
    inputs: dict[str, Path],
    out: Path,
    *,
    relay: dict[str, object] | None = None,
    policy_a: Path | None = None,
    extra_a: tuple[str, ...] = (),
    extra_b: tuple[str, ...] = (),
) -> tuple[Party, Party, Relay | None]:
    out.mkdir(parents=True)
    args_a = party_args(
        inputs["a"], policy_a or inputs["policy"], inputs["a_key"], out, "a", listen=True
    )
    a = Party("a", [*args_a, *extra_a])
    proxy = Relay(a.address(), **relay) if relay is not None else None  # type: ignore[arg-type]
    peer = proxy.address if proxy is not None else a.address()
    b = Party(
        "b",
        party_args(
            inputs["b"], inputs["policy"], inputs["b_key"], out, "b", peers=[peer], extra=extra_b
        ),
    )
    return a, b, proxy


def read_ids(path: Path) -> list[str]:
    return [row["id"] for row in read_csv(path)]


def assert_failed_closed(result: tuple[int, str, str], out: Path, name: str, message: str) -> None:
    code, stdout, stderr = result
    assert code == ExitCode.REFUSED, stderr
    assert stdout == ""
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("accord align: error: "), stderr
    assert message in errors[0], stderr
    leftovers = [p.name for p in out.iterdir() if p.name.startswith((name + ".", ".accord-"))]
    assert leftovers == [], leftovers


def flip_byte(record: bytes, offset: int = 40) -> bytes:
    altered = bytearray(record)
    altered[offset] ^= 0x80
    return bytes(altered)


def reorder_first_two() -> Callable[[int, bytes], list[bytes] | None]:
    held: list[bytes] = []

    def hook(index: int, record: bytes) -> list[bytes] | None:
        if index == 0:
            held.append(record)
            return []
        if index == 1:
            return [record, *held]
        return [record]

    return hook


# b -> a records: 0 roster, 1 digests, 2 confirm, 3 end of stream.
RECORD_ATTACKS: dict[str, tuple[Callable[[], Callable[[int, bytes], list[bytes] | None]], str]] = {
    "tamper": (
        lambda: lambda i, r: [flip_byte(r)] if i == 1 else [r],
        "channel from peer 'b': record 1 failed authentication",
    ),
    "replay": (
        lambda: lambda i, r: [r, r] if i == 1 else [r],
        "channel from peer 'b': record 1 arrived where record 2 was expected",
    ),
    "reorder": (reorder_first_two, "record 1 arrived where record 0 was expected"),
    "truncate": (
        lambda: lambda i, r: None if i == 1 else [r],
        "peer 'b' (",  # ... closed the connection before the end of the session
    ),
    "drop-end-of-stream": (
        lambda: lambda i, r: None if i == 3 else [r],
        "closed the connection before the end of the session",
    ),
}


@pytest.mark.parametrize("attack", list(RECORD_ATTACKS))
def test_altered_records_fail_closed(inputs: dict[str, Path], attack: str) -> None:
    make_hook, message = RECORD_ATTACKS[attack]
    out = inputs["folder"] / f"records-{attack}"
    a, b, _ = start_pair(inputs, out, relay={"records": {"to_listener": make_hook()}})
    result_a, result_b = a.wait(), b.wait()
    assert_failed_closed(result_a, out, "a", message)
    # b's incoming stream was intact. Depending on timing it either failed closed too, or it
    # had already received a's confirmation of the same result: then its output is right.
    if result_b[0] == 0:
        expected = set(read_ids(inputs["a"])) & set(read_ids(inputs["b"]))
        assert {row["id"] for row in read_csv(out / "b.aligned.csv")} == expected
    else:
        assert_failed_closed(result_b, out, "b", "")


def _policy(inputs: dict[str, Path], name: str, **changes: object) -> Path:
    keys = changes.pop("platform_keys", [inputs["a_key"], inputs["b_key"]])
    return write_policy(inputs["folder"] / f"{name}.toml", platform_keys=keys, **changes)  # type: ignore[arg-type]


REFUSALS = {
    "wrong-measurement": (
        {"measurement": "ab" * 32},
        (),
        "not in the policy's allowed_measurements",
    ),
    "debug-enclave": ({}, ("--debug-enclave",), "runs in debug mode"),
    "untrusted-platform-key": ({"platform_keys": "a-only"}, (), "not in the policy's trusted"),
    "simulated-not-allowed": ({"allow_simulated": False}, (), "allow_simulated = true"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_attestation_refusals_stop_both_parties(inputs: dict[str, Path], case: str) -> None:
    changes, extra_b, reason = REFUSALS[case]
    changes = dict(changes)
    if changes.get("platform_keys") == "a-only":
        changes["platform_keys"] = [inputs["a_key"]]
    out = inputs["folder"] / f"refusal-{case}"
    a, b, _ = start_pair(inputs, out, policy_a=_policy(inputs, case, **changes), extra_b=extra_b)
    result_a, result_b = a.wait(), b.wait()
    assert_failed_closed(result_a, out, "a", "refused the enclave of peer 'b': ")
    assert reason in result_a[2]
    # The peer learns only that it was refused, not why.
    assert_failed_closed(result_b, out, "b", "peer 'a' refused the attestation")
    assert reason not in result_b[2]


def test_replayed_quote_from_an_earlier_session_is_refused(inputs: dict[str, Path]) -> None:
    captured: list[bytes] = []

    def capture(kind: PeerFrame, body: bytes) -> list[tuple[PeerFrame, bytes]]:
        if kind is PeerFrame.HANDSHAKE and not captured:
            captured.append(body)
        return [(kind, body)]

    a, b, _ = start_pair(
        inputs, inputs["folder"] / "stale-1", relay={"frames": {"to_dialer": capture}}
    )
    assert (a.wait()[0], b.wait()[0]) == (0, 0)
    assert len(captured) == 1  # a's handshake response: nonce, key share, quote

    def replay(kind: PeerFrame, body: bytes) -> list[tuple[PeerFrame, bytes]]:
        return [(kind, captured[0] if kind is PeerFrame.HANDSHAKE else body)]

    out = inputs["folder"] / "stale-2"
    a, b, _ = start_pair(inputs, out, relay={"frames": {"to_dialer": replay}})
    result_a, result_b = a.wait(), b.wait()
    assert_failed_closed(result_b, out, "b", "stale or replayed quote")
    assert_failed_closed(result_a, out, "a", "peer 'b' refused the attestation")


def test_peer_killed_mid_transfer_gives_a_clean_error_and_no_output(
    inputs: dict[str, Path],
) -> None:
    in_transfer = threading.Event()

    def hold_digests(index: int, record: bytes) -> list[bytes] | None:
        if index >= 1:  # the roster went through; the digests are "on the wire"
            in_transfer.set()
            return []
        return [record]

    out = inputs["folder"] / "killed"
    a, b, _ = start_pair(inputs, out, relay={"records": {"to_listener": hold_digests}})
    assert in_transfer.wait(60)
    enclaves = [child.pid for child in psutil.Process(b.process.pid).children()]
    assert len(enclaves) == 1
    b.kill()
    assert_failed_closed(a.wait(), out, "a", "peer 'b' (")
    assert "closed the connection before the end of the session" in a.wait()[2]
    # b's enclave does not outlive its host.
    _, alive = psutil.wait_procs(
        [psutil.Process(pid) for pid in enclaves if psutil.pid_exists(pid)], timeout=10
    )
    assert alive == []


def test_silent_peer_times_out(inputs: dict[str, Path]) -> None:
    out = inputs["folder"] / "silent"
    a, b, _ = start_pair(
        inputs,
        out,
        relay={"records": {"to_listener": lambda index, record: []}},  # b's records vanish
        extra_a=("--idle-timeout", "2"),
    )
    result_a, result_b = a.wait(), b.wait()
    assert_failed_closed(result_a, out, "a", "peer 'b' (")
    assert "sent nothing for 2 s" in result_a[2]
    assert_failed_closed(result_b, out, "b", "peer 'a' aborted the session (peer;")
