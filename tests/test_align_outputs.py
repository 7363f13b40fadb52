"""A party's outputs after a killed run: the staging files it could not remove are removed
by the next run that writes the same outputs, and only those of writers that are gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from accord.tee.runtime.outputs import _staging_path, remove_stale_staging


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_staging_files_of_killed_writers_are_removed_and_no_others(tmp_path: Path) -> None:
    final = tmp_path / "bank.aligned.csv"
    mine = _staging_path(final)  # this process's: a run in progress
    dead = tmp_path / f".accord-partial-{_dead_pid()}-0123456789ab-bank.aligned.csv"
    other_output = tmp_path / f".accord-partial-{_dead_pid()}-0123456789ab-bank.map.csv"
    unrelated = tmp_path / ".accord-partial-notapid-bank.aligned.csv"
    # The temporary file of the atomic write of a staging file (tables are written so).
    nested = tmp_path / f".{dead.name}.{_dead_pid()}-0123456789ab.tmp"
    for path in (mine, dead, other_output, unrelated, nested):
        path.write_text("partial\n")
    assert f"-{os.getpid()}-" in mine.name

    assert sorted(remove_stale_staging([final])) == sorted([dead, nested])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (mine, other_output, unrelated)
    )


def test_a_missing_output_folder_is_no_error(tmp_path: Path) -> None:
    assert remove_stale_staging([tmp_path / "gone" / "a.csv"]) == []
