"""Alignment beyond memory with real processes: parties and enclaves over TCP on 127.0.0.1.

Bucketed runs are compared with in-memory runs of the same tables: the same intersection
and the same pairing of rows (the order differs: each session draws its own secret). A run
killed mid-way resumes to the same result; a changed input or a tampered sealed bucket file
stops the resume; and a bucketed run's memory stays under its ``--memory-limit``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from align_support import Party, make_ids, party_args, read_csv, write_policy, write_table

from accord.commands.exit_codes import ExitCode

Pairs = set[tuple[int, ...]]


def _tables(folder: Path, names: list[str], universe: list[str], size: int) -> dict[str, Path]:
    """Party ``i`` holds a window of ``universe`` starting at ``i * size // 3``, shuffled."""
    tables = {}
    for index, name in enumerate(names):
        ids = universe[index * size // 3 : index * size // 3 + size]
        random.Random(index).shuffle(ids)
        tables[name] = folder / f"{name}.csv"
        write_table(tables[name], ids, feature=f"{name}_x")
    return tables


def _run(
    folder: Path,
    tables: dict[str, Path],
    out: Path,
    extra: dict[str, list[str]] | None = None,
    failpoint: pytest.MonkeyPatch | None = None,
) -> dict[str, Party]:
    """Start every party (each but the last listens; each dials every earlier one)."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(tables)
    keys = {name: folder / f"{name}-platform.pem" for name in names}
    policy = folder / "policy.toml"
    if not policy.exists():
        write_policy(policy, platform_keys=list(keys.values()))
    extra = extra or {}
    parties: dict[str, Party] = {}
    addresses: list[str] = []
    for index, name in enumerate(names):
        last = index == len(names) - 1
        parties[name] = Party(
            name,
            party_args(tables[name], policy, keys[name], out, name, listen=not last,
                       peers=addresses, parties=len(names), extra=extra.get(name, [])),
        )  # fmt: skip
        if failpoint is not None and index == 0:  # only the first party gets it
            failpoint.delenv("ACCORD_FAILPOINT")
        if not last:
            addresses = [*addresses, parties[name].address()]
    return parties


def _finish(parties: dict[str, Party]) -> dict[str, dict[str, object]]:
    summaries = {}
    for name, party in parties.items():
        code, stdout, stderr = party.wait(120)
        assert code == 0, f"party {name} failed:\n{stderr}"
        summaries[name] = json.loads(stdout)
    return summaries


def _pairs(out: Path, names: list[str]) -> Pairs:
    """The rows of every party at each shared position, as a set (order-free)."""
    columns = [[int(row["row"]) for row in read_csv(out / f"{name}.map.csv")] for name in names]
    assert len({len(column) for column in columns}) == 1
    return set(zip(*columns, strict=True))


def _check_lined_up(out: Path, names: list[str]) -> list[str]:
    ids = [[row["id"] for row in read_csv(out / f"{name}.aligned.csv")] for name in names]
    assert all(column == ids[0] for column in ids)
    return ids[0]


@pytest.fixture(scope="module")
def universe() -> list[str]:
    return make_ids(6000, seed=11)


@pytest.mark.parametrize("count", [2, 3])
def test_bucketed_equals_in_memory(tmp_path: Path, universe: list[str], count: int) -> None:
    names = ["a", "b", "c"][:count]
    tables = _tables(tmp_path, names, universe, 3000)
    memory = _finish(_run(tmp_path, tables, tmp_path / "memory"))
    # Buckets by hand on one party, by memory budget on another: they agree on the most.
    extra = {
        "a": ["--buckets", "5", "--run-dir", str(tmp_path / "run-a")],
        "b": ["--memory-limit", "4GiB", "--run-dir", str(tmp_path / "run-b")],
        "c": ["--buckets", "3", "--run-dir", str(tmp_path / "run-c")],
    }
    bucketed = _finish(_run(tmp_path, tables, tmp_path / "buckets", extra))
    shared = set.intersection(*({row["id"] for row in read_csv(t)} for t in tables.values()))
    for name in names:
        assert memory[name]["intersection"] == bucketed[name]["intersection"] == len(shared)
        assert bucketed[name]["buckets"] == 5
        assert memory[name].get("buckets") is None
        assert not (tmp_path / f"run-{name}").exists()  # removed once the run is complete
    assert _pairs(tmp_path / "memory", names) == _pairs(tmp_path / "buckets", names)
    ids = _check_lined_up(tmp_path / "buckets", names)
    assert set(ids) == shared
    assert ids != _check_lined_up(tmp_path / "memory", names)  # each session its own order


def _sorted_files(run: Path) -> list[Path]:
    return sorted(run.glob("sorted-*.sealed"))


def _start_with_a_failpoint(
    tmp_path: Path,
    universe: list[str],
    monkeypatch: pytest.MonkeyPatch,
    buckets: int,
    where: str,
) -> tuple[dict[str, Path], dict[str, Path], dict[str, Party]]:
    """Parties a and b, bucketed in their own run directories; a pauses at ``where``."""
    names = ["a", "b"]
    tables = _tables(tmp_path, names, universe, 3000)
    runs = {name: tmp_path / f"run-{name}" for name in names}
    extra = {name: ["--buckets", str(buckets), "--run-dir", str(runs[name])] for name in names}
    monkeypatch.setenv("ACCORD_FAILPOINT", f"align-pause@{where}")
    return tables, runs, _run(tmp_path, tables, tmp_path / "out", extra, failpoint=monkeypatch)


def _kill_at_failpoint(party: Party, where: str, timeout: float) -> None:
    """Wait until ``party`` paused at its failpoint, then SIGKILL its host and enclave."""
    deadline = time.monotonic() + timeout
    while not party.saw(f"failpoint align-pause@{where}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert party.saw(f"failpoint align-pause@{where}")
    host = psutil.Process(party.process.pid)
    children = host.children()
    os.kill(host.pid, signal.SIGKILL)
    for child in children:
        child.kill()


def test_killed_run_resumes_refusing_changed_input_and_tampered_files(
    tmp_path: Path, universe: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["a", "b"]
    # Party a stops after bucket 2 of the exchange (a test failpoint); then it is killed.
    tables, runs, parties = _start_with_a_failpoint(tmp_path, universe, monkeypatch, 6, "2")
    _kill_at_failpoint(parties["a"], "2", 60)
    code_b, _, stderr_b = parties["b"].wait(60)
    parties["a"].wait(30)
    assert code_b != 0 and "resume" in stderr_b
    out = tmp_path / "out"
    assert not any(out.glob("*.csv")) and not any(out.glob("*.json"))
    manifest = json.loads((runs["a"] / "manifest.json").read_text())
    assert manifest["stage"] == "exchange" and manifest["exchanged"] == 3

    def resume(name: str, listen: bool, peer: str | None = None) -> Party:
        args = [
            "--resume",
            str(runs[name]),
            "--platform-key",
            str(tmp_path / f"{name}-platform.pem"),
        ]
        args += ["--listen", "127.0.0.1:0"] if listen else ["--peer", str(peer)]
        return Party(name, [*args, "--connect-timeout", "30", "--idle-timeout", "30"])

    # 1. An input changed since the run started: refused before anything is done.
    original = tables["a"].read_bytes()
    tables["a"].write_bytes(original.replace(b"a_x", b"a_y", 1))
    code, _, stderr = resume("a", listen=True).wait(60)
    assert code == ExitCode.REFUSED and "changed since the run started" in stderr
    tables["a"].write_bytes(original)

    # 2. A tampered sealed bucket file: the resumed run fails closed, nothing is written.
    target = _sorted_files(runs["a"])[3]  # the first bucket the resumed exchange loads
    saved = target.read_bytes()
    tampered = bytearray(saved)
    tampered[len(tampered) // 2] ^= 0x01
    target.write_bytes(bytes(tampered))
    a = resume("a", listen=True)
    b = resume("b", listen=False, peer=a.address())
    (code_a, _, stderr_a), (code_b, _, _) = a.wait(60), b.wait(60)
    assert code_a == ExitCode.REFUSED and "bucket 3 failed verification" in stderr_a
    assert code_b != 0
    assert not any(out.glob("*.csv"))
    target.write_bytes(saved)

    # 3. Both resume from the last bucket both finished and complete the run.
    a = resume("a", listen=True)
    b = resume("b", listen=False, peer=a.address())
    results = {"a": a.wait(90), "b": b.wait(90)}
    for code, stdout, stderr in results.values():
        assert code == 0, stderr
        summary = json.loads(stdout)
        assert summary["resumed_from_bucket"] == 3
    ids = _check_lined_up(out, names)
    shared = {row["id"] for row in read_csv(tables["a"])} & {
        row["id"] for row in read_csv(tables["b"])
    }
    assert sorted(ids) == sorted(shared) and len(ids) == len(shared)


class RssSampler:
    """Peak of the summed RSS (and anonymous RSS) of a process and its children."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self.peak_total = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return
            total = anon = 0
            for process in processes:
                try:
                    with open(f"/proc/{process.pid}/status") as handle:
                        fields = dict(line.split(":", 1) for line in handle if ":" in line)
                    total += int(fields["VmRSS"].split()[0]) * 1024
                    anon += int(fields["RssAnon"].split()[0]) * 1024
                    anon += int(fields["RssShmem"].split()[0]) * 1024
                except (OSError, KeyError, ValueError):
                    continue
            self.peak_total = max(self.peak_total, total)
            self.peak_anon = max(self.peak_anon, anon)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_bucketed_memory_stays_well_below_the_in_memory_run(tmp_path: Path) -> None:
    # 5M IDs per party, run in memory and then bucketed under a budget the in-memory run
    # exceeds. The two peaks (each party's host and enclave, anonymous memory: the mapped
    # input and the libraries are file pages the kernel may reclaim) are compared with each
    # other, measured in this test on the same tables: absolute figures vary with the
    # machine and belong to benchmarks/alignment.py. Measured here: 0.53-0.57 GB in memory,
    # 0.21-0.25 GB bucketed (ratios 0.39-0.45, 16 party runs); a sample missing a peak by
    # 5 ms moves neither much. The bound of 0.6 catches what 0.85 let through: the bucketed
    # host read 16 MiB CSV blocks, parsed ahead on Arrow's threads, whose freed blocks stayed
    # in those threads' malloc arenas, as many as scheduling left there (accord.tee.runtime.
    # inputs.KEY_BLOCK_BYTES): 0.37-0.45 GB, ratios 0.67-0.82 in 24 party runs here and above
    # 0.85 one run in eight. Summing host and enclave at one instant is the right measure:
    # both are the party's, under one --memory-limit. (At 3M IDs the in-memory run, 0.37-0.39
    # GB since the fourth speed pass, fits the 512 MiB budget the bucketed run needed (384 MiB
    # is refused), and the peaks were within 15 %.)
    n, limit_mib = 5_000_000, 640
    rng = np.random.default_rng(3)
    shared = rng.choice(10**12, size=n // 2, replace=False)
    tables = {}
    for index, name in enumerate(["a", "b"]):
        own = (10**12 + index * 10**12) + rng.choice(10**12, size=n // 2, replace=False)
        ids = np.concatenate([shared, own])[rng.permutation(n)]
        tables[name] = tmp_path / f"{name}.csv"
        text = "id\n" + "\n".join(f"{v:024d}" for v in ids.tolist()) + "\n"
        tables[name].write_text(text)
    bucketed = {
        name: ["--memory-limit", f"{limit_mib}MiB", "--run-dir", str(tmp_path / f"run-{name}")]
        for name in tables
    }
    peaks: dict[str, dict[str, int]] = {}
    for mode, extra in (("memory", None), ("bucketed", bucketed)):
        parties = _run(tmp_path, tables, tmp_path / f"out-{mode}", extra)
        samplers = {name: RssSampler(party.process.pid) for name, party in parties.items()}
        summaries = _finish(parties)
        for sampler in samplers.values():
            sampler.stop()
        for summary in summaries.values():
            assert summary["intersection"] == n // 2
            assert (summary["buckets"] or 0) >= (2 if mode == "bucketed" else 0)
        peaks[mode] = {name: sampler.peak_anon for name, sampler in samplers.items()}
    for name in tables:
        assert peaks["bucketed"][name] <= 0.6 * peaks["memory"][name], (name, peaks)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--memory-limit", "2XB"], "--memory-limit: expected a size like 2GiB"),
        (["--memory-limit", "10KiB"], "--memory-limit: expected at least 1MiB, got '10KiB'"),
        (["--buckets", "0"], "--buckets: expected an integer 1 to 65536, got '0'"),
        (["--buckets", "many"], "--buckets: expected an integer 1 to 65536, got 'many'"),
        (["--buckets", "4", "--pad-to", "100"], "pad_to: cannot hide the set size"),
    ],
)
def test_bad_bucket_flags_fail_in_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    table = tmp_path / "a.csv"
    write_table(table, ["x1", "x2"])
    policy = write_policy(tmp_path / "policy.toml", platform_keys=[tmp_path / "k.pem"])
    party = Party(
        "a",
        ["--input", str(table), "--key", "id", "--policy", str(policy), "--listen",
         "127.0.0.1:0", "--platform-key", str(tmp_path / "k.pem"), *flags],
    )  # fmt: skip
    code, stdout, stderr = party.wait(60)
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert code == 2 and stdout == ""
    assert len(errors) == 1 and message in errors[0], stderr


def test_resume_of_a_directory_that_is_no_run_fails_clearly(tmp_path: Path) -> None:
    party = Party("a", ["--resume", str(tmp_path), "--listen", "127.0.0.1:0"])
    code, _, stderr = party.wait(60)
    assert code == 2 and f"--resume {tmp_path}: no manifest.json there" in stderr


def test_a_run_stopped_after_every_peer_confirmed_finishes_alone(
    tmp_path: Path, universe: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["a", "b"]
    # Party a stops once every peer confirmed, before it collects its rows; b completes.
    tables, runs, parties = _start_with_a_failpoint(tmp_path, universe, monkeypatch, 3, "done")
    code_b, _, stderr_b = parties["b"].wait(60)
    assert code_b == 0, stderr_b
    _kill_at_failpoint(parties["a"], "done", 30)
    parties["a"].wait(30)
    assert not runs["b"].exists() and not (tmp_path / "out" / "a.aligned.csv").exists()
    # Resumed with no peer to contact (b is gone): the sealed state says all confirmed.
    a = Party("a", ["--resume", str(runs["a"]), "--platform-key", str(tmp_path / "a-platform.pem")])
    code, stdout, stderr = a.wait(60)
    assert code == 0, stderr
    assert json.loads(stdout)["resumed_from_bucket"] == 3
    ids = _check_lined_up(tmp_path / "out", names)
    shared = {row["id"] for row in read_csv(tables["a"])} & {
        row["id"] for row in read_csv(tables["b"])
    }
    assert sorted(ids) == sorted(shared)
