"""The networked federation as real processes on 127.0.0.1: ``accord server``, ``accord
node`` and ``accord federate`` started as subprocesses, with real TLS and tokens.

Reference metrics come from the in-process :class:`Simulation` with the same settings.
Misbehaving nodes use the node's testing failpoints (``ACCORD_FAILPOINT``); credential
attacks are small gRPC clients that speak the protocol with wrong credentials.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from accord.data.faults import FaultSpec
from accord.federation.auth import make_credentials
from accord.federation.launcher import free_port
from accord.scenario import ScenarioSettings
from accord.simulation.driver import Simulation, SimulationSettings
from accord.simulation.stop import StopConditions

pytestmark = pytest.mark.slow

SEED = 5
NODES = 4


class Processes:
    """Runs ``accord`` commands as separate processes and makes sure none outlives the test.

    ``start`` forks this (torch-importing) test process and calls ``accord.cli.main`` in
    the child: a real process with its own sockets and memory, without paying two seconds
    of imports per process; ``exec`` runs the installed command from scratch instead.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: dict[str, int] = {}
        self.codes: dict[int, int] = {}
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> int:
        log_path = self.directory / f"{name}.log"
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 70
            try:
                descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(descriptor, 1)
                os.dup2(descriptor, 2)
                os.environ.update(env or {})
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                from accord.cli import main

                code = main(list(args))
            except BaseException as error:
                os.write(2, f"child failed: {error!r}\n".encode())
            finally:
                os._exit(code)
        self.started[name] = pid
        return pid

    def exec(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> int:
        with open(self.directory / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "accord.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        self.started[name] = process.pid
        self._popen[process.pid] = process
        return process.pid

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def poll(self, name: str) -> int | None:
        pid = self.started[name]
        if pid in self.codes:
            return self.codes[pid]
        if pid in self._popen:
            code = self._popen[pid].poll()
        else:
            done, status = os.waitpid(pid, os.WNOHANG)
            code = os.waitstatus_to_exitcode(status) if done else None
        if code is not None:
            self.codes[pid] = code
        return code

    def wait(self, name: str, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll(name)) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not finish within {timeout} s:\n{self.log(name)[-3000:]}")
            time.sleep(0.02)
        return code

    def stop_all(self) -> None:
        for name, pid in self.started.items():
            if self.poll(name) is None:
                os.kill(pid, signal.SIGKILL)
                self.wait(name, 10)


@pytest.fixture(scope="module")
def warm() -> None:
    """Import and warm up once what every forked process needs (torch's optimiser stack,
    scikit-learn's datasets), so forks start in milliseconds."""
    from accord.federation.launcher import prepare_process, warm_up_torch
    from accord.scenario import build_scenario

    prepare_process()
    warm_up_torch()
    build_scenario(ScenarioSettings(nodes=NODES, seed=SEED))


@pytest.fixture
def processes(tmp_path: Path, warm: None) -> Iterator[Processes]:
    running = Processes(tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("credentials")
    make_credentials(
        directory, [f"node-{i:02d}" for i in range(NODES)], now=dt.datetime.now(dt.UTC), days=1
    )
    return directory


def scenario_args(rounds: int, policy: str = "actor-critic") -> list[str]:
    return [
        "--nodes",
        str(NODES),
        "--faulty",
        "1",
        "--fault",
        "label-flip",
        "--seed",
        str(SEED),
        "--rounds",
        str(rounds),
        "--policy",
        policy,
    ]


def simulation_records(rounds: int, policy: str = "actor-critic") -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    settings = SimulationSettings(
        scenario=ScenarioSettings(nodes=NODES, fault=FaultSpec("label-flip", 1), seed=SEED),
        stop=StopConditions(max_rounds=rounds),
    )
    result = Simulation(settings, policy).run()
    return [timed.record.to_json() for timed in result.rounds]


def run_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_same_metrics(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got["round"] == want["round"]
        assert got["present"] == want["present"]
        assert got["dropped"] == want["dropped"]
        for key in (
            "test_accuracy",
            "test_loss",
            "validation_accuracy_after",
            "validation_loss_after",
        ):
            assert got[key] == pytest.approx(want[key], abs=1e-6), (got["round"], key)
        assert got["probabilities"].keys() == want["probabilities"].keys()
        for node, probability in want["probabilities"].items():
            assert got["probabilities"][node] == pytest.approx(probability, abs=1e-6)


def server_args(run_dir: Path, port: int, credentials: Path, *extra: str) -> list[str]:
    return [
        "server",
        "--out",
        str(run_dir),
        "--port",
        str(port),
        "--credentials",
        str(credentials),
        *extra,
    ]


def node_args(index: int, port: int, credentials: Path) -> list[str]:
    return [
        "node",
        "--server",
        f"127.0.0.1:{port}",
        "--scenario-node",
        str(index),
        "--credentials",
        str(credentials / f"node-{index:02d}"),
        "--give-up-after",
        "60",
        *scenario_args(1)[:-4],  # the scenario options, without --rounds and --policy
    ]


def test_server_and_four_nodes_reach_the_simulation_metrics(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange
    port = free_port()
    run_dir = tmp_path / "run"
    processes.start("server", server_args(run_dir, port, credentials, *scenario_args(5)))
    for i in range(NODES):
        processes.start(f"node-{i}", node_args(i, port, credentials))

    # Act
    server_code = processes.wait("server")
    node_codes = [processes.wait(f"node-{i}") for i in range(NODES)]

    # Assert
    assert server_code == 0, processes.log("server")
    assert node_codes == [0] * NODES
    assert_same_metrics(run_records(run_dir), simulation_records(5))
