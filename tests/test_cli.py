"""The ``accord`` command's one voice: bad options, a bare ``accord``, ``certs`` messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from accord.cli import main
from accord.commands.exit_codes import ExitCode


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["align", "--foo"], "accord align: error: unrecognized arguments: --foo"),
        (
            ["align", "identity", "--bar"],
            "accord align identity: error: unrecognized arguments: --bar",
        ),
        (["align", "demo", "--rows", "x"], "accord align demo: error: argument --rows:"),
        (["server", "--what"], "accord server: error: unrecognized arguments: --what"),
        (["node"], "accord node: error: the following arguments are required: --server"),
        (["federate", "--nodes", "x"], "accord federate: error: argument --nodes: invalid int"),
        (["certs"], "accord certs: error: the following arguments are required: DIR"),
        (["simulate", "--rounds", "x"], "accord simulate: error: argument --rounds:"),
        (["nope"], "accord: error: argument COMMAND: invalid choice: 'nope'"),
    ],
)
def test_every_sub_command_refuses_a_bad_option_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == ExitCode.USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    prog = message.split(": error:", maxsplit=1)[0]
    assert line.startswith(message) and line.endswith(f"(see {prog} --help)")


def test_a_bare_accord_prints_the_help_and_exits_with_the_usage_code() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "accord.cli"], capture_output=True, text=True, check=False
    )
    assert done.returncode == ExitCode.USAGE
    assert done.stdout.startswith("usage: accord")
    assert "align" in done.stdout and "simulate" in done.stdout
    assert done.stderr == ""


def test_certs_renew_reports_a_new_id_as_issued_and_says_it_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "creds"
    assert main(["certs", str(directory), "--nodes", "2"]) == 0
    made = capsys.readouterr()
    assert made.err == ""  # the message is on stdout only, not repeated as a log line
    assert main(["certs", str(directory), "--renew", "node-01,node-09"]) == 0
    renewed = capsys.readouterr()
    assert renewed.err == ""
    lines = renewed.out.splitlines()
    assert lines[0] == (
        f"renewed node-01, node-09 in {directory}: 1 certificate revoked, 1 new id issued"
    )
    assert lines[1] == (
        "  node-01: new certificate and token; the old certificate is revoked -> "
        f"{directory / 'node-01'}"
    )
    assert lines[2] == f"  node-09: a new id, nothing to revoke -> {directory / 'node-09'}"
    revoked = json.loads((directory / "revoked.json").read_text())
    assert len(revoked["certificates"]) == 1
    assert main(["certs", str(directory), "--renew", "node-09"]) == 0  # now it was issued
    assert ": 1 certificate revoked, 0 new ids issued" in capsys.readouterr().out
    assert len(json.loads((directory / "revoked.json").read_text())["certificates"]) == 2


@pytest.mark.parametrize("value", ["-1e6", "-2.5E-3", "-inf", "-1."])
def test_a_negative_number_in_any_notation_is_a_value_not_an_option(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse alone took "-1e6" for an option and said "expected one argument".
    assert main(["simulate", "--rounds", "1", "--fault-scale", value]) == ExitCode.USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("accord simulate: error: --fault-scale: expected a")
    assert "expected one argument" not in line


def test_align_help_says_resume_reuses_the_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["align", "--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "its settings, --listen and --peer included, come from RUN_DIR" in text
    assert "give --listen/--peer again" not in text


# A command that asked to exit at once (``exit_at_once``, as ``accord align`` does) skips
# the interpreter's teardown (the finaliser below never runs) but not the exit handlers,
# the buffered output or the exit code; with another thread alive it exits normally.
_CONSOLE = """
import atexit, sys, threading, time
import accord.cli as cli

class Finaliser:
    def __del__(self):
        sys.stderr.write("teardown\\n")

kept = Finaliser()

def command():
    cli._exit["at_once"] = True
    if sys.argv[1] == "thread":
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    sys.stdout.write("summary")
    atexit.register(lambda: sys.stderr.write("handler ran\\n"))
    return 3

cli.main = command
cli.console()
"""


@pytest.mark.parametrize(("mode", "teardown"), [("alone", False), ("thread", True)])
def test_the_console_exits_at_once_only_when_nothing_else_runs(mode: str, teardown: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CONSOLE, mode], capture_output=True, text=True, check=False
    )
    assert done.returncode == 3
    assert done.stdout == "summary"
    assert "handler ran" in done.stderr
    assert ("teardown" in done.stderr) is teardown
