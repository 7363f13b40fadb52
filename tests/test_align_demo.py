"""``accord align demo``: every party as real processes on 127.0.0.1, its checks, its flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _demo(*flags: str, temporary: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None if temporary is None else {**os.environ, "TMPDIR": str(temporary)}
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", "align", "demo", *flags],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )


@pytest.mark.parametrize(
    ("flags", "parties", "buckets"),
    [([], 2, None), (["--parties", "3", "--buckets", "3"], 3, 3)],
)
def test_demo_runs_every_party_and_its_checks_pass(
    tmp_path: Path, flags: list[str], parties: int, buckets: int | None
) -> None:
    kept = buckets is not None  # one case keeps its files, the other leaves nothing behind
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    keep = ["--keep", str(tmp_path / "kept")] if kept else []
    done = _demo("--rows", "3000", "--overlap", "0.4", *keep, *flags, temporary=temporary)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(temporary.iterdir())  # the temporary folder is removed at the end
    if kept:
        assert f"files kept in {tmp_path / 'kept'}" in done.stdout
        assert sorted(p.name for p in (tmp_path / "kept").glob("*.aligned.csv")) == [
            "alice.aligned.csv",
            "bob.aligned.csv",
            "carol.aligned.csv",
        ]
    else:
        assert "demo: removed its temporary folder" in done.stderr
    assert done.stdout.count("[ok]") == 4 and "FAILED" not in done.stdout
    assert len(set(_fingerprints(done.stdout))) == 1  # in memory and bucketed alike
    assert "the shared IDs are exactly the 1200 generated in common" in done.stdout
    received = [line for line in done.stdout.splitlines() if " received: " in line]
    assert len(received) == parties
    assert all("|I| = 1200" in line for line in received)
    assert all(("buckets)" in line) == (buckets is not None) for line in received)
    # Plain progress lines say where each stage ended (not only where it started).
    assert "[alice] load: 3,000 rows done in " in done.stderr or buckets is not None
    if buckets is not None:
        assert f"[alice] sort: {buckets}/{buckets} buckets done in " in done.stderr
        assert all(f"({buckets} buckets)" in line for line in received)
        assert not list((tmp_path / "kept").glob("run-*"))  # removed once each run completed


def _fingerprints(stdout: str) -> list[str]:
    return [
        line.split(": ", 1)[1]
        for line in stdout.splitlines()
        if line.strip().startswith("alignment fingerprint: ")
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--parties", "9"], "--parties: expected 2 to"),
        (["--memory-limit", "lots"], "--memory-limit: expected a size like 2GiB"),
        (["--buckets", "0"], "--buckets: expected an integer 1 to"),
    ],
)
def test_demo_refuses_bad_flags_in_one_line(flags: list[str], message: str) -> None:
    done = _demo(*flags)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
