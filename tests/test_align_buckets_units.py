"""Run directory, manifest, input digests and progress of bucketed runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from accord.errors import ConfigurationError, InputDataError
from accord.tee.runtime.progress import ProgressEvent, ProgressTracker, describe, format_seconds
from accord.tee.runtime.runstate import MANIFEST_NAME, RunDirectory, RunManifest, digest_file


def _manifest(tmp_path: Path) -> RunManifest:
    data = tmp_path / "a.csv"
    if not data.exists():
        data.write_text("id\n1\n2\n")
    return RunManifest(
        party="a",
        session="s",
        settings={"input": str(data), "key_columns": ["id"]},
        inputs={"input": digest_file(data)},
    )


def test_digest_file_is_sha256_and_size(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 1000)
    digest = digest_file(path)
    assert digest.sha256 == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert digest.size == 3000
    with pytest.raises(InputDataError, match="cannot read"):
        digest_file(tmp_path / "missing.csv")


def test_manifest_round_trip_and_sealed_state(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunDirectory.create(run) as directory:
        manifest = _manifest(tmp_path)
        manifest.set_sealed(b"\x00sealed\xff")
        manifest.stage, manifest.buckets, manifest.sorted = "sort", 8, 3
        directory.save(manifest)
        assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    with RunDirectory.open(run)[0] as directory:
        loaded = directory.load()
    assert loaded == manifest
    assert loaded.sealed_bytes() == b"\x00sealed\xff"


def test_a_run_directory_is_used_by_one_process_and_not_reused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    directory = RunDirectory.create(run)
    directory.save(_manifest(tmp_path))
    with pytest.raises(ConfigurationError, match="another process"):
        RunDirectory.open(run)
    directory.close()
    with pytest.raises(ConfigurationError, match="not empty"):
        RunDirectory.create(run)
    with pytest.raises(ConfigurationError, match=r"no manifest\.json"):
        RunDirectory.open(tmp_path / "elsewhere")
    (run / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ConfigurationError, match="not a run manifest"):
        RunDirectory.open(run)


def test_resume_refuses_a_changed_input(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    data = tmp_path / "a.csv"
    manifest.check_inputs({"input": digest_file(data)})
    data.write_text("id\n1\n3\n")  # same size, other content
    with pytest.raises(InputDataError, match=r"a\.csv: the input changed since the run started"):
        manifest.check_inputs({"input": digest_file(data)})
    with pytest.raises(ConfigurationError, match="not given"):
        manifest.check_inputs({})


def test_bucket_files(tmp_path: Path) -> None:
    with RunDirectory.create(tmp_path / "run") as directory:
        directory.append_spill(2, b"ab")
        directory.append_spill(2, b"cd")
        directory.close_appends()
        assert directory.read("spill", 2) == b"abcd"
        directory.write("sorted", 2, b"x" * 100)
        assert directory.read("sorted", 2) == b"x" * 100
        assert directory.disk_usage() >= 104
        directory.remove("spill", 2)
        with pytest.raises(ConfigurationError, match=r"spill-00002\.sealed: missing"):
            directory.read("spill", 2)
        directory.remove_all("sorted")
        assert not list((tmp_path / "run").glob("sorted-*"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_estimates_time_left_per_stage_and_run() -> None:
    events: list[ProgressEvent] = []
    clock = Clock()
    tracker = ProgressTracker(
        events.append, plan=[("spill", 0.5), ("sort", 0.25), ("exchange", 0.25)], clock=clock
    )
    tracker.stage("spill", total=1000)
    clock.now += 10
    tracker.advance(250)
    event = events[-1]
    assert (event.stage, event.done, event.total) == ("spill", 250, 1000)
    assert event.eta == pytest.approx(30.0)
    # 40 s for half the run: the other half takes about as long.
    assert event.run_eta == pytest.approx(70.0)
    clock.now += 0.1
    tracker.advance(260)  # within the interval: not reported
    assert events[-1].done == 250
    clock.now += 30
    tracker.stage("sort", total=8, unit="buckets", done=2)  # resumed: 2 buckets done
    clock.now += 6
    tracker.advance(5)
    event = events[-1]
    assert event.eta == pytest.approx(6.0)
    assert event.run_eta == pytest.approx(6.0 + 12.0)
    tracker.finish()


def test_progress_lines() -> None:
    assert format_seconds(65) == "1:05"
    assert format_seconds(3725) == "1:02:05"
    line = describe(ProgressEvent("sort", 12, 32, "buckets", 3.0, 41.0, 130.0))
    assert line == "sort: bucket 12/32 (37%) — 0:41 left in stage, ~2:10 left in all"
    rows = describe(ProgressEvent("spill", 1500, 10000, "rows", 1.0, None, None))
    assert rows == "spill: 1,500 rows of ~10,000 (15%)"
    assert describe(ProgressEvent("attest", None, None, "rows", 0.0, None, None)) == "attest"


def test_a_stage_reports_where_it_ended() -> None:
    events: list[ProgressEvent] = []
    clock = Clock()
    tracker = ProgressTracker(events.append, clock=clock)
    tracker.stage("sort", total=16, unit="buckets")
    clock.now += 0.1
    tracker.advance(16)  # within the interval: not reported on its own
    clock.now += 64.9
    tracker.stage("confirm")
    tracker.finish()
    lines = [describe(event) for event in events]
    assert lines == [
        "sort: bucket 0/16 (0%)",
        "sort: 16/16 buckets done in 1:05",
        "confirm",
        "confirm: done in 0:00",
    ]
    assert [event.finished for event in events] == [False, True, False, True]
    rows = ProgressEvent("spill", 300_000, 300_001, "rows", 2.0, 0.0, None, True)
    assert describe(rows) == "spill: 300,000 rows done in 0:02"
