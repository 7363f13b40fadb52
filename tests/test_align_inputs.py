"""Bad inputs, bad peers and the other `accord align` commands: one clear line, no output."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from align_support import (
    Party,
    make_ids,
    party_args,
    platform_fingerprint,
    read_csv,
    write_policy,
    write_table,
)

from accord.commands.exit_codes import ExitCode
from accord.tee.runtime.measurement import enclave_measurement


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    ids = make_ids(200, seed=11)
    write_table(folder / "good.csv", ids[50:])
    (folder / "ids.txt").write_text("\n".join(ids))
    keys = {"a_key": folder / "a-platform.pem", "b_key": folder / "b-platform.pem"}
    policy = write_policy(folder / "policy.toml", platform_keys=list(keys.values()))
    return {"folder": folder, "good": folder / "good.csv", "policy": policy, **keys}


def _ids(base: dict[str, Path]) -> list[str]:
    return (base["folder"] / "ids.txt").read_text().split("\n")


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("accord align: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


BAD_TABLES = {
    "duplicates": (lambda i: b"id,x\n%s,1\n%s,2\n%s,3\n" % (i[60], i[61], i[60]), "duplicate"),
    "empty-id": (lambda i: b"id,x\n%s,1\n ,2\n%s,3\n" % (i[60], i[61]), "empty"),
    "non-utf8": (lambda i: b"id,x\n%s,1\n\xff\xfeabc,2\n%s,3\n" % (i[60], i[61]), "undecodable"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_ids_are_refused_before_any_network(
    base: dict[str, Path], tmp_path: Path, case: str
) -> None:
    make_content, word = BAD_TABLES[case]
    ids = _ids(base)
    bad = tmp_path / "a.csv"
    bad.write_bytes(make_content([value.encode() for value in ids]))
    # It would listen, and dial a port where nobody answers for 30 s: the input check comes
    # first, so it fails at once, without listening.
    args = party_args(
        bad,
        base["policy"],
        base["a_key"],
        tmp_path,
        "a",
        listen=True,
        peers=[f"127.0.0.1:{closed_port()}"],
        parties=3,
    )
    code, stdout, stderr = run_alone([*args, "--progress", "log"])
    assert code == ExitCode.REFUSED and stdout == "", stderr
    line = one_error_line(stderr)
    assert str(bad) in line and word in line, line
    assert "row" in line  # names the rows (never their contents)
    assert ("--duplicates" if case == "duplicates" else "--skip-invalid") in line  # the way out
    # Said once: no enclave warning repeating it, no stage after loading.
    assert stderr.splitlines() == ["load", line], stderr
    for value in ids:
        assert value not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def _parquet_key_table(path: Path, ids: list[str], kind: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column: pa.Array
    if kind == "dictionary":
        column = pa.array(ids).dictionary_encode()
    else:
        column = pa.array([float(index) for index in range(len(ids))])
    pq.write_table(pa.table({"id": column, "x": list(range(len(ids)))}), path)


def test_a_float_key_column_is_refused_before_dialling(
    base: dict[str, Path], tmp_path: Path
) -> None:
    table = tmp_path / "a.parquet"
    _parquet_key_table(table, _ids(base)[:10], "float")
    args = party_args(
        table, base["policy"], base["a_key"], tmp_path, "a", peers=[f"127.0.0.1:{closed_port()}"]
    )
    code, _, stderr = run_alone(args)
    assert code == ExitCode.REFUSED
    line = one_error_line(stderr)
    assert f"{table}: key column 'id': expected text, bytes or integer IDs, got type double" in (
        line
    ), line


def test_a_dictionary_encoded_parquet_key_is_decoded(base: dict[str, Path]) -> None:
    ids = _ids(base)
    folder = base["folder"] / "dictionary"
    folder.mkdir()
    table = folder / "a.parquet"
    _parquet_key_table(table, ids[:100], "dictionary")  # base["good"] holds ids[50:]
    a = Party("a", party_args(table, base["policy"], base["a_key"], folder, "a", listen=True))
    b = Party(
        "b",
        party_args(base["good"], base["policy"], base["b_key"], folder, "b", peers=[a.address()]),
    )
    (code_a, out_a, err_a), (code_b, _, err_b) = a.wait(), b.wait()
    assert (code_a, code_b) == (0, 0), err_a + err_b
    assert json.loads(out_a)["intersection"] == 50


def test_duplicates_first_policy_keeps_the_first_row(base: dict[str, Path]) -> None:
    ids = _ids(base)
    folder = base["folder"] / "first"
    folder.mkdir()
    table = folder / "a.csv"
    # Rows 0 and 2 share an ID; row 3's ID is not in the peer's table; row 4's is empty.
    table.write_text(f"id,x\n{ids[60]},0\n{ids[61]},1\n{ids[60]},2\n{ids[10]},3\n ,4\n")
    args = party_args(table, base["policy"], base["a_key"], folder, "a", listen=True)
    a = Party("a", [*args, "--duplicates", "first", "--skip-invalid"])
    b = Party(
        "b",
        party_args(base["good"], base["policy"], base["b_key"], folder, "b", peers=[a.address()]),
    )
    (code_a, out_a, err_a), (code_b, _, err_b) = a.wait(), b.wait()
    assert (code_a, code_b) == (0, 0), err_a + err_b
    summary = json.loads(out_a)
    assert summary["intersection"] == 2 and summary["own_ids"] == 3
    assert summary["input_report"]["duplicated_ids"] == 1
    assert summary["input_report"]["empty_rows"] == 1
    assert summary["input_report"]["dropped_rows"] == 2  # the duplicate and the empty ID
    assert sorted(int(row["row"]) for row in read_csv(folder / "a.map.csv")) == [0, 1]


def run_alone(args: list[str], timeout: float = 60) -> tuple[int, str, str]:
    """One `accord align` process that is expected to fail before or while connecting."""
    process = subprocess.run(
        [sys.executable, "-m", "accord.cli", "align", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return process.returncode, process.stdout, process.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"id,x\n", "no data rows"),
        (b"name,x\nabc,1\n", "key column 'id' not found; the file has columns"),
    ],
    ids=["empty-file", "header-only", "missing-key-column"],
)
def test_unusable_tables_fail_before_contacting_peers(
    base: dict[str, Path], tmp_path: Path, content: bytes, message: str
) -> None:
    table = tmp_path / "a.csv"
    table.write_bytes(content)
    port = closed_port()
    code, stdout, stderr = run_alone(
        party_args(table, base["policy"], base["a_key"], tmp_path, "a", peers=[f"127.0.0.1:{port}"])
    )
    assert code == ExitCode.REFUSED and stdout == ""
    line = one_error_line(stderr)
    assert str(table) in line and message in line.lower(), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_unreachable_peer_is_reported_after_the_deadline(
    base: dict[str, Path], tmp_path: Path
) -> None:
    port = closed_port()
    args = party_args(
        base["good"], base["policy"], base["a_key"], tmp_path, "a", peers=[f"127.0.0.1:{port}"]
    )
    code, _, stderr = run_alone([*args, "--connect-timeout", "1"])
    assert code == ExitCode.REFUSED
    line = one_error_line(stderr)
    assert f"cannot reach peer at 127.0.0.1:{port}" in line, line
    assert list(tmp_path.iterdir()) == []


def fake_endpoint(greeting: bytes) -> tuple[int, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            connection, _ = server.accept()
            with connection:
                connection.sendall(greeting)
                connection.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return int(server.getsockname()[1]), thread


@pytest.mark.parametrize(
    ("greeting", "message"),
    [
        (
            struct.pack("!13sHI", b"ACCORD-ALIGN\x00", 2, 2) + b"{}",
            "speaks accord align protocol version 2; this installation speaks version 1",
        ),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "is not an accord align endpoint"),
    ],
    ids=["other-version", "not-accord"],
)
def test_peer_speaking_another_protocol_is_named(
    base: dict[str, Path], tmp_path: Path, greeting: bytes, message: str
) -> None:
    port, thread = fake_endpoint(greeting)
    args = party_args(
        base["good"], base["policy"], base["a_key"], tmp_path, "a", peers=[f"127.0.0.1:{port}"]
    )
    code, _, stderr = run_alone(args)
    thread.join(10)
    assert code == ExitCode.REFUSED
    assert message in one_error_line(stderr)


def test_missing_policy_and_missing_key_flag_are_configuration_errors(
    base: dict[str, Path], tmp_path: Path
) -> None:
    args = party_args(
        base["good"], tmp_path / "nope.toml", base["a_key"], tmp_path, "a", listen=True
    )
    code, _, stderr = run_alone(args)
    assert code == 2 and "nope.toml: no such file" in one_error_line(stderr)
    code, _, stderr = run_alone(["--input", str(base["good"]), "--policy", str(base["policy"])])
    assert code == 2 and "--key: required" in one_error_line(stderr)


def test_identity_prints_the_measurement_key_and_a_policy(base: dict[str, Path]) -> None:
    code, stdout, stderr = run_alone(["identity", "--platform-key", str(base["a_key"]), "--json"])
    assert code == 0, stderr
    identity = json.loads(stdout)
    assert identity["measurement"] == enclave_measurement().hex()
    assert identity["platform_key"] == platform_fingerprint(base["a_key"])
    assert identity["backend"] == "simulated" and identity["debug"] is False
    from accord.tee.core.attestation import parse_policy

    policy = parse_policy(identity["policy"])
    assert policy.allowed_measurements == {identity["measurement"]}
    assert policy.allow_simulated and not policy.allow_debug
