"""The one atomic-write helper: whole old file or whole new one, never a part."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from accord.atomic_files import atomic_output, write_atomically
from accord.errors import ConfigurationError


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_write_atomically_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_bytes(b"old contents, longer than the new ones\n")

    write_atomically(target, b"new\n")

    assert target.read_bytes() == b"new\n"
    assert leftovers(tmp_path) == []


def test_write_atomically_creates_with_the_mode_minus_the_umask(tmp_path: Path) -> None:
    old_mask = os.umask(0o022)
    try:
        write_atomically(tmp_path / "public", b"x")
        write_atomically(tmp_path / "private", b"x", mode=0o600)
    finally:
        os.umask(old_mask)

    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_atomic_output_cleans_up_on_any_exception(tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    target.write_text("previous\n")

    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_text("partial")
        raise RuntimeError("boom")

    assert target.read_text() == "previous\n"
    assert leftovers(tmp_path) == []


def test_an_os_error_while_writing_is_one_line_naming_the_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.jsonl"

    with (
        pytest.raises(ConfigurationError, match=r"metrics\.jsonl: cannot write: disk full"),
        atomic_output(target),
    ):
        raise OSError(28, "disk full")

    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_a_missing_folder_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"x\.csv: the output directory .*no"):
        write_atomically(tmp_path / "no" / "x.csv", b"x")


def test_scratch_files_skip_the_fsyncs_but_stay_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    target = tmp_path / "spill-00001.sealed"

    write_atomically(target, memoryview(bytearray(b"sealed bucket")), durable=False)
    assert synced == []
    write_atomically(target, b"again")

    assert target.read_bytes() == b"again"
    assert len(synced) == 2  # the file and its folder
    assert leftovers(tmp_path) == []


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_write_removes_temporaries_of_killed_writers_only(tmp_path: Path) -> None:
    final = tmp_path / "summary[1].json"  # glob characters in the name are literal
    killed = tmp_path / f".summary[1].json.{_dead_pid()}-0123456789ab.tmp"
    running = tmp_path / f".summary[1].json.{os.getpid()}-0123456789ab.tmp"
    other = tmp_path / f".summary[2].json.{_dead_pid()}-0123456789ab.tmp"
    for path in (killed, running, other):
        path.write_text("part")
    write_atomically(final, b"{}")
    assert final.read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (final, running, other)
    )
