"""Chaos for sample alignment (issue 13, item 6, its alignment half): two real ``accord align``
parties on 127.0.0.1, each with its enclave process, and in every trial one of the four
processes — a party's host or its enclave — SIGKILLed at a random moment, in memory and
bucketed.

A user must be able to rely on this after any such kill:

- no process hangs: every party exits within the timeout, and no enclave outlives its host;
- a party that exits 0 has written complete outputs: its aligned table holds exactly the
  shared IDs, in the same order as its peer's;
- a party that fails says so in one ``accord align: error:`` line, without a traceback, and
  writes nothing (no output file, no temporary file beside them); a SIGKILLed host cannot
  remove its staging files, and the next run that writes the same outputs must;
- the run then goes on: a bucketed party with a run directory is resumed with ``--resume``
  and reaches the identical result (the same IDs in the same shared order as its peer, or
  as the peer that had already finished); where no resume is possible (an in-memory run, a
  party killed before its run directory existed), the resume fails in one line with nothing
  written, and a fresh run of both parties completes.

Prints one JSON report; exits 1 when a check fails. The suite runs a short version
(``tests/test_align_chaos.py``)::

    python benchmarks/align_chaos.py                      # 24 trials, 300,000 IDs a party
    python benchmarks/align_chaos.py --trials 8 --rows 100000
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from machine import cpu_model

from accord.commands.align_tools import demo_policy, demo_tables

NAMES = ("a", "b")
MODES = ("memory", "bucketed")
VICTIMS = ("host", "enclave")
LISTENING = re.compile(r"listening on (\S+)$")
# A progress line names its stage first: "connect", "spill: 0 rows of ~300,001 (0%)", ...
STAGE = re.compile(r"^([a-z]+)(?::|$)")
ERROR_LINE = "accord align: error:"
OUTPUTS = ("map.csv", "aligned.csv", "summary.json")
ENCLAVE_MODULE = "accord.tee.runtime.enclave"  # the enclave process runs `python -m` this


@dataclass(frozen=True)
class ChaosSettings:
    """The trials, the tables they align and how long anything may take."""

    trials: int = 24
    rows: int = 300_000
    overlap: float = 0.5
    buckets: int = 4
    seed: int = 0
    timeout: float = 120.0
    patience: float = 30.0  # the parties' --connect-timeout and --idle-timeout

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials: expected at least 1, got {self.trials}")
        if self.rows < 100:
            raise ValueError(f"rows: expected at least 100, got {self.rows}")
        if not 0 < self.overlap <= 1:
            raise ValueError(f"overlap: expected a fraction in (0, 1], got {self.overlap}")
        if self.buckets < 2:
            raise ValueError(f"buckets: expected at least 2, got {self.buckets}")
        if self.patience <= 0:
            raise ValueError(f"patience: expected seconds > 0, got {self.patience}")


@dataclass(frozen=True)
class Trial:
    """One kill: which mode, which party, which of its processes, and when."""

    index: int
    mode: str
    party: str
    victim: str
    stage_pick: float  # which of the party's stages the kill falls in (a fraction of them)
    fraction: float  # how far into that stage, as in the uninterrupted run


def plan_trials(settings: ChaosSettings) -> list[Trial]:
    """Every mode, party and victim in turn, each at a random stage and moment (seeded)."""
    rng = random.Random(settings.seed)
    combos = [(m, p, v) for m in MODES for p in NAMES for v in VICTIMS]
    return [
        Trial(
            i,
            *combos[i % len(combos)],
            stage_pick=round(rng.random(), 3),
            fraction=round(rng.random(), 3),
        )
        for i in range(settings.trials)
    ]


class AlignProcess:
    """One running ``accord align`` party: stderr kept line by line, its enclave watched."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name = name
        self.lines: list[str] = []
        self.address: str | None = None
        self.listening = threading.Event()
        self.stages: dict[str, float] = {}  # each stage's first line, seconds after the start
        self._stage_seen = threading.Condition()
        self.enclave_pids: set[int] = set()
        self.ended: float | None = None
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._log = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._reader.start()
        self._watcher.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        with self._log.open("a") as log:
            for line in self.process.stderr:
                log.write(line)
                self.lines.append(line.rstrip("\n"))
                match = LISTENING.search(line.strip())
                if match and self.address is None:
                    self.address = match.group(1)
                    self.listening.set()
                stage = STAGE.match(line.strip())
                if stage and stage.group(1) not in self.stages:
                    with self._stage_seen:
                        self.stages[stage.group(1)] = time.monotonic() - self.started
                        self._stage_seen.notify_all()
        self.listening.set()
        with self._stage_seen:
            self._stage_seen.notify_all()

    def wait_for_stage(self, stage: str, timeout: float) -> bool:
        """Whether the party reached ``stage`` (False once it has ended without it)."""
        with self._stage_seen:
            return (
                self._stage_seen.wait_for(
                    lambda: stage in self.stages or self.process.poll() is not None, timeout
                )
                and stage in self.stages
            )

    def _watch(self) -> None:
        """Records the enclave process (the host's child) as soon as it exists."""
        try:
            host = psutil.Process(self.process.pid)
        except psutil.Error:
            return
        while self.process.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in host.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if ENCLAVE_MODULE in child.cmdline():
                            self.enclave_pids.add(child.pid)
            time.sleep(0.01)
        self.ended = time.monotonic()

    def live_enclave(self) -> int | None:
        for pid in sorted(self.enclave_pids):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return pid
        return None

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it had to be killed after ``timeout``."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        self._reader.join(10)
        self._watcher.join(10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith(ERROR_LINE)]

    def traceback(self) -> bool:
        return any(line.startswith("Traceback") for line in self.lines)


class Chaos:
    """The shared set-up of every trial: the tables, the trust, the uninterrupted timings."""

    def __init__(self, settings: ChaosSettings, directory: Path) -> None:
        self.settings = settings
        self.directory = directory
        data = directory / "data"
        data.mkdir()
        self.expected = demo_tables(data, list(NAMES), settings.rows, settings.overlap, 1)
        self.tables = {name: data / f"{name}.csv" for name in NAMES}
        self.policy, self.key = demo_policy(data)
        self.reference: dict[str, dict[str, float]] = {}
        self.stages: dict[tuple[str, str], dict[str, float]] = {}

    def command(self, name: str, out: Path, mode: str, peer: str | None) -> list[str]:
        command = [
            sys.executable, "-m", "accord.cli", "align", "--party-name", name,
            "--input", str(self.tables[name]), "--key", "id",
            "--policy", str(self.policy), "--platform-key", str(self.key),
            "--output-map", str(out / f"{name}.map.csv"),
            "--output-table", str(out / f"{name}.aligned.csv"),
            "--summary", str(out / f"{name}.summary.json"),
        ]  # fmt: skip
        if mode == "bucketed":
            command += [
                "--buckets",
                str(self.settings.buckets),
                "--run-dir",
                str(out / f"run-{name}"),
            ]
        return [*command, *self._link(peer), *self._patience()]

    def resume_command(self, name: str, out: Path, peer: str | None, alone: bool) -> list[str]:
        command = [
            sys.executable, "-m", "accord.cli", "align", "--resume", str(out / f"run-{name}"),
            "--platform-key", str(self.key),
        ]  # fmt: skip
        return [*command, *([] if alone else self._link(peer)), *self._patience()]

    @staticmethod
    def _link(peer: str | None) -> list[str]:
        return ["--listen", "127.0.0.1:0"] if peer is None else ["--peer", peer]

    def _patience(self) -> list[str]:
        seconds = str(self.settings.patience)
        return ["--connect-timeout", seconds, "--idle-timeout", seconds, "--progress", "log"]

    def launch(self, out: Path, commands: dict[str, list[str] | None]) -> dict[str, AlignProcess]:
        """Start party a (listening) and then b dialling it; a None command is not started.
        ``commands`` holds b's command without its peer: it is added once a listens."""
        processes: dict[str, AlignProcess] = {}
        a_command, b_command = commands["a"], commands["b"]
        if a_command is not None:
            processes["a"] = AlignProcess("a", a_command, out / "a.log")
        if b_command is not None:
            if "a" in processes and "--peer" in b_command:
                first = processes["a"]
                first.listening.wait(self.settings.timeout)
                b_command = [first.address or "unreachable:1" if arg == "{a}" else arg
                             for arg in b_command]  # fmt: skip
            processes["b"] = AlignProcess("b", b_command, out / "b.log")
        return processes

    def both(self, out: Path, mode: str) -> dict[str, AlignProcess]:
        return self.launch(
            out, {"a": self.command("a", out, mode, None), "b": self.command("b", out, mode, "{a}")}
        )

    def measure_reference(self, mode: str) -> None:
        """An uninterrupted run: how long it takes, and how long an enclave lives."""
        out = self.directory / f"reference-{mode}"
        out.mkdir()
        processes = self.both(out, mode)
        codes = {name: p.wait(self.settings.timeout) for name, p in processes.items()}
        if any(code != 0 for code in codes.values()):
            raise RuntimeError(f"the uninterrupted {mode} run failed: {codes}; see {out}")
        timings: dict[str, float] = {}
        for name, party in processes.items():
            assert party.ended is not None
            timings[f"{name}_host"] = round(party.ended - party.started, 3)
            self.stages[(mode, name)] = {k: round(v, 3) for k, v in party.stages.items()}
        self.reference[mode] = timings


def _outputs(out: Path, name: str) -> list[Path]:
    return [out / f"{name}.{suffix}" for suffix in OUTPUTS if (out / f"{name}.{suffix}").exists()]


def _stray_files(out: Path) -> list[str]:
    """Files beside the outputs that no finished run leaves (temporary or partial files)."""
    known = {f"{name}.{suffix}" for name in NAMES for suffix in OUTPUTS}
    known |= {f"{name}.log" for name in NAMES}
    return sorted(p.name for p in out.iterdir() if p.is_file() and p.name not in known)


def _aligned_ids(out: Path, name: str) -> list[str]:
    with (out / f"{name}.aligned.csv").open(newline="") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


class TrialRun:
    """One trial: the kill, the checks of what it left, and the way back to a result."""

    def __init__(self, chaos: Chaos, trial: Trial) -> None:
        self.chaos = chaos
        self.trial = trial
        self.out = chaos.directory / f"trial-{trial.index:02d}"
        self.out.mkdir()
        self.problems: list[str] = []
        self.events: list[str] = []
        self.pids: set[int] = set()

    def problem(self, text: str) -> None:
        self.problems.append(f"trial {self.trial.index}: {text}")

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        processes = self.chaos.both(self.out, self.trial.mode)
        self._strike(processes[self.trial.party])
        codes = self._settle(processes, "first run")
        outcome = self._recover(codes)
        self._check_no_process_left()
        return {
            **asdict(self.trial),
            "exit_codes": {name: codes[name] for name in NAMES},
            "outcome": outcome,
            "seconds": round(time.monotonic() - started, 2),
            "events": self.events,
            "problems": self.problems,
        }

    def _strike(self, party: AlignProcess) -> None:
        """SIGKILL the party's host or enclave at the trial's stage and moment, if it still
        runs then. The stages and their lengths are the uninterrupted run's."""
        timings = self.chaos.stages[(self.trial.mode, party.name)]
        stages = sorted(timings, key=timings.__getitem__)
        if self.trial.victim == "enclave":  # the enclave has ended by the time rows are written
            stages = stages[: stages.index("write") + 1]
        index = min(int(self.trial.stage_pick * (len(stages) - 1)), len(stages) - 2)
        stage, following = stages[index], stages[index + 1]
        if not party.wait_for_stage(stage, self.chaos.settings.timeout):
            self.events.append(f"party {party.name} ended before stage {stage}")
            return
        delay = self.trial.fraction * (timings[following] - timings[stage])
        time.sleep(delay)
        where = f"{delay:.2f} s into stage {stage}"
        if self.trial.victim == "host":
            pid: int | None = party.process.pid if party.process.poll() is None else None
        else:
            pid = party.live_enclave()
        if pid is None:
            self.events.append(f"the {self.trial.victim} of {party.name} had exited {where}")
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.events.append(f"the {self.trial.victim} of {party.name} had exited {where}")
            return
        self.events.append(f"SIGKILLed the {self.trial.victim} of {party.name} {where}")

    def _settle(self, processes: dict[str, AlignProcess], stage: str) -> dict[str, int | None]:
        """Wait for every party; check each one's exit: complete outputs or one line and
        nothing written."""
        codes: dict[str, int | None] = {}
        for name, party in processes.items():
            codes[name] = party.wait(self.chaos.settings.timeout)
            self.pids |= {party.process.pid, *party.enclave_pids}
            killed_host = self.trial.party == name and self.trial.victim == "host"
            self._check_exit(party, codes[name], stage, killed_host and stage == "first run")
        stray = _stray_files(self.out)
        if stage == "first run" and self.trial.victim == "host":
            # A SIGKILLed host cannot remove its staging files; the next run that writes the
            # same outputs does (they carry its process ID), which the later stages check.
            # A staging file, or (one dot more) the temporary file of its atomic write.
            killed = f"accord-partial-{processes[self.trial.party].process.pid}-"
            left = [name for name in stray if name.lstrip(".").startswith(killed)]
            if left:
                self.events.append(f"the killed host left staging files {left}")
            stray = [name for name in stray if name not in left]
        if stray:
            self.problem(f"{stage}: files left beside the outputs: {stray}")
        return codes

    def _check_exit(self, party: AlignProcess, code: int | None, stage: str, killed: bool) -> None:
        name = party.name
        if code is None:
            self.problem(f"{stage}: party {name} hung past {self.chaos.settings.timeout} s")
            return
        outputs = _outputs(self.out, name)
        if code == 0 or (killed and len(outputs) == len(OUTPUTS)):
            if len(outputs) != len(OUTPUTS):
                self.problem(f"{stage}: party {name} exited 0 without all its outputs")
            elif set(_aligned_ids(self.out, name)) != self.chaos.expected:
                self.problem(f"{stage}: party {name}'s aligned table is not the intersection")
            return
        if outputs:
            self.problem(f"{stage}: party {name} failed ({code}) but wrote {outputs}")
        if killed:
            return  # a SIGKILLed host says nothing
        errors = party.errors()
        if len(errors) != 1 or party.traceback():
            self.problem(
                f"{stage}: party {name} failed ({code}) with {len(errors)} error lines"
                f"{' and a traceback' if party.traceback() else ''}: {party.lines[-3:]}"
            )

    def _recover(self, codes: dict[str, int | None]) -> str:
        """Resume what can be resumed; else a fresh run. Returns how the result was reached."""
        # A host killed after its outputs were in place has finished (checked in _settle).
        finished = {
            name
            for name, code in codes.items()
            if code == 0 or (code is not None and len(_outputs(self.out, name)) == len(OUTPUTS))
        }
        if finished == set(NAMES):
            self._check_same_order("first run")
            return "completed"
        if self.trial.mode == "bucketed":
            resumable = {
                name
                for name in NAMES
                if name not in finished and (self.out / f"run-{name}" / "manifest.json").exists()
            }
            failed = set(NAMES) - finished
            if resumable != failed:
                self.events.append(f"no run to resume for {sorted(failed - resumable)}")
            elif self._resume(finished):
                return "resumed" if not finished else "resumed alone"
        return self._fresh_run()

    def _resume(self, finished: set[str]) -> bool:
        chaos = self.chaos
        if finished:
            (name,) = set(NAMES) - finished
            commands: dict[str, list[str] | None] = {"a": None, "b": None}
            commands[name] = chaos.resume_command(name, self.out, None, alone=True)
        else:
            commands = {
                "a": chaos.resume_command("a", self.out, None, alone=False),
                "b": chaos.resume_command("b", self.out, "{a}", alone=False),
            }
        processes = chaos.launch(self.out, commands)
        codes = self._settle(processes, "resume")
        self.events.append(f"resumed {sorted(processes)}: exit codes {codes}")
        if all(code == 0 for code in codes.values()):
            self._check_same_order("resume")
            return True
        return False

    def _fresh_run(self) -> str:
        for name in NAMES:
            for path in _outputs(self.out, name):
                path.unlink()
            run_dir = self.out / f"run-{name}"
            if run_dir.exists():
                subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        processes = self.chaos.both(self.out, self.trial.mode)
        codes = self._settle(processes, "fresh run")
        if any(code != 0 for code in codes.values()):
            self.problem(f"a fresh run after the kill failed: {codes}")
            return "failed"
        self._check_same_order("fresh run")
        return "fresh run"

    def _check_same_order(self, stage: str) -> None:
        a, b = (_aligned_ids(self.out, name) for name in NAMES)
        if a != b:
            self.problem(f"{stage}: the parties' aligned tables are not in the same order")

    def _check_no_process_left(self) -> None:
        deadline = time.monotonic() + 15
        alive = self._alive()
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = self._alive()
        if alive:
            self.problem(f"processes left running: {alive}")
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _alive(self) -> list[int]:
        alive = []
        for pid in sorted(self.pids):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return alive


def run_chaos(settings: ChaosSettings, directory: Path) -> dict[str, Any]:
    """Every trial of ``settings`` in ``directory``; the report (``ok`` says if all held)."""
    started = time.monotonic()
    chaos = Chaos(settings, directory)
    for mode in MODES:
        chaos.measure_reference(mode)
    trials = [TrialRun(chaos, trial).run() for trial in plan_trials(settings)]
    problems = [problem for trial in trials for problem in trial["problems"]]
    outcomes: dict[str, int] = {}
    for trial in trials:
        outcomes[trial["outcome"]] = outcomes.get(trial["outcome"], 0) + 1
    return {
        "settings": asdict(settings),
        "cpu": cpu_model(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "reference": chaos.reference,
        "stages": {f"{mode}/{name}": stages for (mode, name), stages in chaos.stages.items()},
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": outcomes,
        "kills": sum(1 for t in trials for e in t["events"] if e.startswith("SIGKILLed")),
        "problems": problems,
        "ok": not problems,
        "trials": trials,
    }


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field_name in ("trials", "rows", "buckets", "seed"):
        parser.add_argument(f"--{field_name}", type=int, default=getattr(defaults, field_name))
    parser.add_argument("--timeout", type=float, default=defaults.timeout)
    parser.add_argument(
        "--patience",
        type=float,
        default=defaults.patience,
        help="the parties' --connect-timeout and --idle-timeout (seconds)",
    )
    parser.add_argument("--keep", type=Path, help="keep the trials' files in this new folder")
    args = parser.parse_args(argv)
    settings = ChaosSettings(
        trials=args.trials, rows=args.rows, buckets=args.buckets, seed=args.seed,
        timeout=args.timeout, patience=args.patience,
    )  # fmt: skip
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        report = run_chaos(settings, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="accord-align-chaos-") as folder:
            report = run_chaos(settings, Path(folder))
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
