"""How `accord align` stops: Ctrl-C while waiting for a peer, a peer that never speaks."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from align_support import make_ids, party_args, write_policy, write_table

from accord.commands.exit_codes import ExitCode


@pytest.fixture
def table_and_policy(tmp_path: Path) -> tuple[Path, Path, Path]:
    table = tmp_path / "a.csv"
    write_table(table, make_ids(50, seed=5))
    key = tmp_path / "a-platform.pem"
    policy = write_policy(tmp_path / "policy.toml", platform_keys=[key])
    return table, policy, key


def _ended(pid: int) -> bool:
    """The process is gone (or a zombie waiting for its reaper: it runs no more)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return bool(re.search(r"^State:\s+Z", status, re.MULTILINE))


def test_ctrl_c_while_waiting_for_a_peer_stops_in_one_line(
    tmp_path: Path, table_and_policy: tuple[Path, Path, Path]
) -> None:
    table, policy, key = table_and_policy
    out = tmp_path / "out"
    out.mkdir()
    args = party_args(table, policy, key, out, "a", listen=True)
    # Its own session, so that the SIGINT goes to the whole group, as Ctrl-C on a terminal
    # reaches the host and its enclave process alike.
    process = subprocess.Popen(
        [sys.executable, "-m", "accord.cli", "-v", "align", "--party-name", "a", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    seen: list[str] = []
    for line in process.stderr:  # wait (on the process's own words) until it listens
        seen.append(line)
        if "listening on" in line:
            break
    enclave = re.search(r"enclave process (\d+) spawned", "".join(seen))
    assert enclave is not None, "".join(seen)
    os.killpg(process.pid, signal.SIGINT)
    stdout, rest = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED, "".join(seen) + rest
    assert stdout == ""
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    own_lines = [line for line in rest.splitlines() if " DEBUG " not in line]
    assert own_lines == ["accord align: interrupted"], rest
    assert _ended(int(enclave.group(1)))
    assert list(out.iterdir()) == []  # no output file, no staging leftovers


def test_a_peer_that_accepts_but_never_speaks_is_refused_in_one_line(
    tmp_path: Path, table_and_policy: tuple[Path, Path, Path]
) -> None:
    table, policy, key = table_and_policy
    # The kernel completes the TCP handshake (backlog) but nothing ever answers the hello.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        args = party_args(
            table, policy, key, tmp_path, "a", peers=[address], extra=["--connect-timeout", "2"]
        )
        done = subprocess.run(
            [sys.executable, "-m", "accord.cli", "align", "--party-name", "a", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == ExitCode.REFUSED, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [
        f"accord align: error: peer at {address} accepted the connection but sent no greeting "
        "within --connect-timeout 2 s; is it an accord align endpoint?"
    ], done.stderr


def test_progress_none_prints_no_listening_line_and_the_wait_ends_at_the_deadline(
    tmp_path: Path, table_and_policy: tuple[Path, Path, Path]
) -> None:
    table, policy, key = table_and_policy
    args = party_args(
        table,
        policy,
        key,
        tmp_path,
        "a",
        listen=True,
        extra=["--connect-timeout", "1", "--progress", "none"],
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "accord.cli",
            "align",
            "--party-name",
            "a",
            *args,
            "--progress",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == ExitCode.REFUSED
    [line] = done.stderr.splitlines()  # no "listening on", no stage lines: only the error
    assert re.fullmatch(
        r"accord align: error: waited 1 s for 1 peer\(s\) to connect on 127\.0\.0\.1:\d+; "
        r"connected: none",
        line,
    ), line
    assert not line.endswith(":0; connected: none")  # the bound port, not the one asked for
