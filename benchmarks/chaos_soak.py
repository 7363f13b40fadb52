"""Chaos soak of a networked run (issue 13, item 6): real ``accord server`` and ``accord node``
processes on 127.0.0.1, every node behind a TCP proxy that delays, refuses and cuts its
connections at random; nodes SIGKILLed and restarted at random; the server SIGKILLed at
random rounds and resumed with ``--resume``.

It checks what a user must be able to rely on after such a run:

- the run completes (the last server exits 0 with every round recorded);
- every round is recorded exactly once, in order, across the server's deaths;
- every round's record is consistent: the probabilities are a distribution over the nodes
  present, and every node of the roster that is not present is named with a reason;
- the final checkpoint loads;
- no process is left running;
- the last server's RSS stays flat (growth at most 10 %) from the round in which the
  Actor-Critic's replay buffer is full to the last round.

Prints one JSON report; exits 1 when a check fails. The suite runs a short version
(``tests/test_chaos_soak.py``); the full soak is the default here::

    python benchmarks/chaos_soak.py                         # 10 nodes, 300 rounds
    python benchmarks/chaos_soak.py --nodes 4 --rounds 40 --server-kills 1 --node-kills 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from machine import machine_record

#: Growth of the last server's RSS allowed from the round the replay is full to the end.
RSS_GROWTH_LIMIT = 0.10


@dataclass(frozen=True)
class SoakSettings:
    """One soak: its size, its faults and its patience."""

    nodes: int = 10
    rounds: int = 300
    server_kills: int = 2
    node_kills: int = 10
    #: Each forwarded chunk waits a uniform delay up to this (seconds).
    max_delay: float = 0.02
    #: A proxied connection lives an exponential time of this mean (seconds), then is cut.
    cut_after: float = 20.0
    #: Share of new connections the proxy refuses outright.
    refuse: float = 0.05
    #: The Actor-Critic's replay capacity: small, so the buffer is full early in the run.
    replay_capacity: int = 40
    round_deadline: float = 5.0
    seed: int = 0
    #: The whole soak must end within this (seconds).
    timeout: float = 1800.0

    def __post_init__(self) -> None:
        if self.nodes < 2 or self.rounds < 4:
            raise ValueError("a soak needs at least 2 nodes and 4 rounds")
        if self.server_kills >= self.rounds // 2:
            raise ValueError("--server-kills: at most one per two rounds")


# ----------------------------------------------------------------------------- the proxy


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0
    cuts: int = 0
    upstream_failures: int = 0
    bytes: int = 0


class ChaosProxy:
    """A TCP proxy on 127.0.0.1 in its own thread: delays every chunk, refuses some new
    connections, and cuts each connection (abort, no FIN) after a random lifetime."""

    def __init__(self, target_port: int, settings: SoakSettings, seed: int) -> None:
        self.target_port = target_port
        self.settings = settings
        self.rng = random.Random(seed)
        self.stats = ProxyStats()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="chaos-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        #: The transports of the connections open now, both sides (for :meth:`cut`).
        self._open: set[asyncio.BaseTransport] = set()

    def start(self) -> int:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the chaos proxy did not start")
        return self.port

    def cut(self) -> None:
        """Cut every connection open now (abort, no FIN), as a network failure would; new
        connections are still proxied."""

        def abort() -> None:
            for transport in list(self._open):
                transport.abort()
            self.stats.cuts += 1

        self._loop.call_soon_threadsafe(abort)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.rng.random() < self.settings.refuse:
            self.stats.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self.stats.upstream_failures += 1  # the server is down (killed, restarting)
            writer.transport.abort()
            return
        lifetime = self.rng.expovariate(1.0 / self.settings.cut_after)
        ends = {writer.transport, up_writer.transport}
        self._open |= ends
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        done, _ = await asyncio.wait(pumps, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            self.stats.cuts += 1
        for pump in pumps:
            pump.cancel()
        self._open -= ends
        writer.transport.abort()
        up_writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            await asyncio.sleep(self.rng.uniform(0.0, self.settings.max_delay))
            writer.write(chunk)
            await writer.drain()
            self.stats.bytes += len(chunk)


# ----------------------------------------------------------------------------- processes


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Soak:
    """The processes and observations of one soak."""

    settings: SoakSettings
    directory: Path
    run_dir: Path = field(init=False)
    credentials: Path = field(init=False)
    server: subprocess.Popen[bytes] | None = None
    servers: list[int] = field(default_factory=list)
    nodes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    every_process: list[subprocess.Popen[bytes]] = field(default_factory=list)
    rss_by_round: dict[int, dict[int, int]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.run_dir = self.directory / "run"
        self.credentials = self.directory / "credentials"

    def log(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:7.1f} s  {text}")

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.directory / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "accord.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_environment(),
            )
        self.every_process.append(process)
        return process

    def start_server(self, resume: bool) -> None:
        s = self.settings
        if resume:
            args = ["server", "--resume", str(self.run_dir), "--credentials", str(self.credentials)]
        else:
            config = self.directory / "soak.toml"
            config.write_text(
                f"[actor_critic]\nreplay_capacity = {s.replay_capacity}\n", encoding="utf-8"
            )
            args = [
                "server",
                "--out",
                str(self.run_dir),
                "--port",
                "0",
                "--credentials",
                str(self.credentials),
                "--config",
                str(config),
                "--nodes",
                str(s.nodes),
                "--rounds",
                str(s.rounds),
                "--seed",
                str(s.seed),
                "--policy",
                "actor-critic",
                "--quorum",
                str(max(1, s.nodes // 2)),
                "--quorum-timeout",
                "60",
                "--round-deadline",
                str(s.round_deadline),
                "--registration-timeout",
                "120",
            ]
        self.server = self._spawn("server", args)
        self.servers.append(self.server.pid)
        self.log(f"server {'resumed' if resume else 'started'} (pid {self.server.pid})")

    def start_node(self, index: int, proxy_port: int) -> None:
        self.nodes[index] = self._spawn(
            f"node-{index:02d}",
            [
                "node",
                "--server",
                f"127.0.0.1:{proxy_port}",
                "--scenario-node",
                str(index),
                "--credentials",
                str(self.credentials / f"node-{index:02d}"),
                "--nodes",
                str(self.settings.nodes),
                "--seed",
                str(self.settings.seed),
                "--give-up-after",
                "30",
            ],
        )

    def server_port(self) -> int:
        deadline = time.monotonic() + 120
        address = self.run_dir / "server.json"
        while time.monotonic() < deadline:
            if self.server is not None and self.server.poll() is not None:
                raise RuntimeError(f"the server exited {self.server.returncode} before listening")
            with contextlib.suppress(OSError, ValueError, KeyError):
                return int(json.loads(address.read_text())["port"])
            time.sleep(0.05)
        raise RuntimeError("the server never listened")

    def rounds_recorded(self) -> int:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return 0
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())

    def sample_rss(self, round_count: int) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        with contextlib.suppress(psutil.Error):
            rss = psutil.Process(self.server.pid).memory_info().rss
            self.rss_by_round.setdefault(self.server.pid, {}).setdefault(round_count, rss)


def _kill_points(settings: SoakSettings, rng: random.Random) -> list[int]:
    """Round counts at which the server is killed: one in each of ``server_kills`` equal
    stretches of the run's middle, never in the first or last 10 %."""
    low, high = max(2, settings.rounds // 10), settings.rounds - max(2, settings.rounds // 10)
    width = (high - low) / settings.server_kills if settings.server_kills else 0
    return [
        int(low + width * k + rng.uniform(0.2, 0.8) * width) for k in range(settings.server_kills)
    ]


@dataclass
class _Plan:
    """When the soak strikes: the recorded-round counts at which the server and nodes are
    killed, and the nodes waiting to be restarted (time, index)."""

    server_kills: list[int]
    node_kills: list[int]
    restarts: list[tuple[float, int]] = field(default_factory=list)


def _strike(soak: Soak, plan: _Plan, rng: random.Random, proxy_port: int) -> None:
    """One look at the run: kill the server or a node when their round has come, restart
    the nodes whose pause is over."""
    done = soak.rounds_recorded()
    soak.sample_rss(done)
    if plan.server_kills and done >= plan.server_kills[0] and soak.server is not None:
        plan.server_kills.pop(0)
        soak.server.send_signal(signal.SIGKILL)
        soak.server.wait(30)
        soak.log(f"server SIGKILLed after {done} recorded rounds")
        time.sleep(rng.uniform(0.0, 2.0))
        soak.start_server(resume=True)
    while plan.node_kills and done >= plan.node_kills[0]:
        plan.node_kills.pop(0)
        index = rng.randrange(soak.settings.nodes)
        node = soak.nodes[index]
        if node.poll() is None:
            node.send_signal(signal.SIGKILL)
            node.wait(30)
            soak.log(f"node-{index:02d} SIGKILLed after {done} recorded rounds")
            plan.restarts.append((time.monotonic() + rng.uniform(0.5, 3.0), index))
    for when, index in list(plan.restarts):
        if time.monotonic() >= when:
            plan.restarts.remove((when, index))
            soak.start_node(index, proxy_port)
            soak.log(f"node-{index:02d} restarted")


def run_soak(settings: SoakSettings, directory: Path) -> dict[str, Any]:
    """Run one soak in ``directory``; the report of :func:`check_soak` plus what happened."""
    from accord.credentials.issue import make_credentials

    rng = random.Random(settings.seed)
    soak = Soak(settings, directory)
    make_credentials(
        soak.credentials,
        [f"node-{i:02d}" for i in range(settings.nodes)],
        now=dt.datetime.now(dt.UTC),
        days=1,
    )
    # Node kills spread over the first two thirds of the run, at random: a node restarted
    # after the last round finds no server and gives up (exit 3) after --give-up-after.
    plan = _Plan(
        server_kills=_kill_points(settings, rng),
        node_kills=sorted(
            rng.randrange(2, max(3, 2 * settings.rounds // 3)) for _ in range(settings.node_kills)
        ),
    )
    soak.start_server(resume=False)
    proxy = ChaosProxy(soak.server_port(), settings, seed=settings.seed + 1)
    proxy_port = proxy.start()
    for index in range(settings.nodes):
        soak.start_node(index, proxy_port)
    deadline = time.monotonic() + settings.timeout
    finished: int | None = None
    try:
        while time.monotonic() < deadline and finished is None:
            _strike(soak, plan, rng, proxy_port)
            server = soak.server
            if server is not None and server.poll() is not None and not plan.server_kills:
                finished = server.returncode
                soak.log(f"server exited {finished}")
            time.sleep(0.05)
        if finished is None:
            soak.log("timed out")
        # Every node ends by itself once the server has finished: it is told, or gives up.
        node_deadline = time.monotonic() + 60
        for node in soak.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(max(0.1, node_deadline - time.monotonic()))
    finally:
        proxy.stop()
        left = [p.pid for p in soak.every_process if p.poll() is None]
        for process in soak.every_process:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    report = check_soak(soak, finished, left)
    report["proxy"] = dataclasses.asdict(proxy.stats)
    report["events"] = soak.events
    report["node_exit_codes"] = {f"node-{i:02d}": p.returncode for i, p in soak.nodes.items()}
    return report


# ----------------------------------------------------------------------------- checks


def _record_problems(records: list[dict[str, Any]], roster: list[str]) -> list[str]:
    problems = []
    for position, record in enumerate(records):
        where = f"round {position + 1}"
        if record.get("round") != position:
            problems.append(f"{where}: recorded as round index {record.get('round')}")
        present = set(record.get("present", []))
        dropped = record.get("dropped", {})
        probabilities = record.get("probabilities", {})
        total = sum(probabilities.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            problems.append(f"{where}: probabilities sum to {total}")
        if any(v < 0 or not math.isfinite(v) for v in probabilities.values()):
            problems.append(f"{where}: a probability is negative or not finite")
        outside = [n for n, v in probabilities.items() if v > 0 and n not in present]
        if outside:
            problems.append(f"{where}: weight on nodes not present: {outside}")
        for node in roster:
            if node not in present and not str(dropped.get(node, "")).strip():
                problems.append(f"{where}: {node} is neither present nor named with a reason")
    return problems


def check_soak(soak: Soak, finished: int | None, left: list[int]) -> dict[str, Any]:
    """The checks of the module docstring, each with what it found."""
    from accord.federation.driver import load_run_checkpoint
    from accord.federation.run_files import CHECKPOINT_FILE

    s = soak.settings
    lines = (soak.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    roster = [f"node-{i:02d}" for i in range(s.nodes)]
    checks: dict[str, Any] = {}
    checks["completed"] = finished == 0 and len(records) == s.rounds
    problems = _record_problems(records, roster)
    checks["records_consistent"] = not problems
    try:
        load_run_checkpoint(soak.run_dir / CHECKPOINT_FILE)
        checks["checkpoint_loads"] = True
    except Exception as error:  # reported as the check's failure
        checks["checkpoint_loads"] = f"{type(error).__name__}: {error}"
    checks["no_process_left"] = not left
    last = soak.rss_by_round.get(soak.servers[-1], {})
    resumed_at = min(last) if last else 0
    full_from = max(s.replay_capacity + 1, resumed_at + 5)
    after_full = {r: v for r, v in last.items() if r >= full_from}
    rss: dict[str, Any] = {"from_round": None, "to_round": None, "growth": None}
    if len(after_full) >= 2:
        first, final = min(after_full), max(after_full)
        growth = after_full[final] / after_full[first] - 1.0
        rss = {
            "from_round": first,
            "to_round": final,
            "rss_from_mb": after_full[first] / 2**20,
            "rss_to_mb": after_full[final] / 2**20,
            "growth": growth,
        }
        checks["server_rss_flat"] = growth <= RSS_GROWTH_LIMIT
    else:
        checks["server_rss_flat"] = "too few rounds after the replay is full to judge"
    dropped_rounds = sum(1 for r in records if r.get("dropped"))
    return {
        "ok": all(v is True for v in checks.values()),
        "checks": checks,
        "problems": problems[:20],
        "rounds_recorded": len(records),
        "rounds_with_dropped_nodes": dropped_rounds,
        "server_processes": len(soak.servers),
        "server_rss": rss,
        "final_test_accuracy": records[-1].get("test_accuracy") if records else None,
    }


def main(argv: list[str] | None = None) -> int:
    defaults = SoakSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(SoakSettings):
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)), default=None
        )
    parser.add_argument("--keep", type=Path, help="keep the run's files in this new folder")
    args = parser.parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(SoakSettings)
        if getattr(args, f.name) is not None
    }
    settings = SoakSettings(**overrides)
    started = time.perf_counter()
    load = os.getloadavg()
    if args.keep:
        args.keep.mkdir(parents=True)
        report = run_soak(settings, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="accord-soak-") as folder:
            report = run_soak(settings, Path(folder))
    report["settings"] = dataclasses.asdict(settings)
    report["wall_seconds"] = time.perf_counter() - started
    report["machine"] = machine_record(load)
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
