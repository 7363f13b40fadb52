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
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from accord.commands.exit_codes import ExitCode
from accord.credentials.issue import make_credentials, renew_node_credentials
from accord.data.faults import FaultSpec
from accord.run import StopConditions
from accord.scenario import ScenarioSettings
from accord.simulation.driver import Simulation, SimulationSettings

pytestmark = pytest.mark.slow

SEED = 5
NODES = 4


ZYGOTE = textwrap.dedent(
    """
    # Imports and warms up once what every process needs, then forks one child per request:
    # {"op": "start", "args": [...], "env": {...}, "log": path} -> {"pid": n};
    # {"op": "poll", "pid": n} -> {"code": exit code or null}.
    import json, os, signal, sys
    from accord.federation.launcher import prepare_process, warm_up_torch
    prepare_process()
    warm_up_torch()
    from accord.scenario import ScenarioSettings, build_scenario
    build_scenario(ScenarioSettings(nodes=4, seed=5))
    import accord.cli, accord.commands.node, accord.commands.server, accord.commands.simulate
    import accord.federation.client, accord.federation.server
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                code = 70
                try:
                    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    null = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(null, 0)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    os.environ.update(request["env"])
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    code = accord.cli.main(request["args"])
                except BaseException as error:
                    os.write(2, f"child failed: {error!r}\\n".encode())
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            answer = {"pid": pid}
        else:
            done, status = os.waitpid(request["pid"], os.WNOHANG)
            answer = {"code": os.waitstatus_to_exitcode(status) if done else None}
        print(json.dumps(answer), flush=True)
    """
)


def process_environment() -> dict[str, str]:
    """The environment for the ``accord`` processes: this one's without GRPC_VERBOSITY.
    Importing flwr (the Flower tests, collected in the same pytest process) sets
    GRPC_VERBOSITY=error in os.environ, and a server that finds GRPC_VERBOSITY set leaves
    gRPC's lines alone (the user asked for them): it would no longer report a plaintext
    client on its TLS port."""
    return {key: value for key, value in os.environ.items() if key != "GRPC_VERBOSITY"}


class Zygote:
    """A clean, single-threaded process that has imported torch, gRPC and the scenario data
    once and forks the test's ``accord`` processes: each starts in milliseconds, and none
    inherits anything from the pytest process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=process_environment(),
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


class Processes:
    """Runs ``accord`` commands as separate processes and makes sure none outlives the test.

    ``start`` has the zygote fork a process that calls ``accord.cli.main``: a real process
    with its own sockets and memory, without paying seconds of imports per process;
    ``exec`` runs the installed command from scratch instead.
    """

    def __init__(self, directory: Path, zygote: Zygote) -> None:
        self.directory = directory
        self.zygote = zygote
        self.started: dict[str, int] = {}
        self.codes: dict[int, int] = {}
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> int:
        log = str(self.directory / f"{name}.log")
        answer = self.zygote.ask({"op": "start", "args": list(args), "env": env or {}, "log": log})
        pid = int(answer["pid"])
        self.started[name] = pid
        return pid

    def exec(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> int:
        with open(self.directory / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "accord.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**process_environment(), **(env or {})},
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
            code = self.zygote.ask({"op": "poll", "pid": pid})["code"]
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

    def wait_for_text(self, name: str, text: str, timeout: float = 60.0) -> None:
        """Wait until ``text`` appears in the process's output (it must still run)."""
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if self.poll(name) is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} never printed {text!r}:\n{self.log(name)[-3000:]}")
            time.sleep(0.02)

    def stop_all(self) -> None:
        for name, pid in self.started.items():
            if self.poll(name) is None:
                os.kill(pid, signal.SIGKILL)
                self.wait(name, 10)


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    process = Zygote()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def processes(tmp_path: Path, zygote: Zygote) -> Iterator[Processes]:
    running = Processes(tmp_path, zygote)
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


def listening_port(processes: Processes, name: str, run_dir: Path, timeout: float = 120.0) -> int:
    """The port a server started with ``--port 0`` bound, read from its run folder's
    ``server.json`` (written once it listens); fails if the server ends first."""
    address = run_dir / "server.json"
    deadline = time.monotonic() + timeout
    while True:
        if address.exists():
            try:
                return int(json.loads(address.read_text())["port"])
            except (ValueError, KeyError):
                pass  # being written: read again
        if processes.poll(name) is not None or time.monotonic() > deadline:
            pytest.fail(f"{name} never listened:\n{processes.log(name)[-3000:]}")
        time.sleep(0.02)


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
    # Arrange: 4 KiB chunks, so every 9640-byte tensor travels in three messages
    run_dir = tmp_path / "run"
    chunks = ["--chunk-bytes", "4096"]
    processes.start("server", server_args(run_dir, 0, credentials, *scenario_args(5), *chunks))
    port = listening_port(processes, "server", run_dir)
    for i in range(NODES):
        processes.start(f"node-{i}", [*node_args(i, port, credentials), *chunks])

    # Act
    server_code = processes.wait("server")
    node_codes = [processes.wait(f"node-{i}") for i in range(NODES)]

    # Assert
    assert server_code == 0, processes.log("server")
    assert node_codes == [0] * NODES
    assert_same_metrics(run_records(run_dir), simulation_records(5))


def fedavg_probabilities(present: Sequence[str]) -> dict[str, float]:
    """The FedAvg oracle: data-size weights over the nodes that answered, 0 elsewhere."""
    from accord.scenario import build_scenario

    data = build_scenario(
        ScenarioSettings(nodes=NODES, fault=FaultSpec("label-flip", 1), seed=SEED)
    )
    counts = {node.node_id: node.sample_count for node in data.nodes}
    total = sum(counts[node] for node in present)
    return {node: (counts[node] / total if node in present else 0.0) for node in counts}


def test_failing_nodes_are_dropped_with_reasons_and_the_run_goes_on(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: node-01 sends NaN in round 1, node-02 a short gradient in round 2, node-00 is
    # 14 s late in round 2, node-03 is killed when round 3 starts. The 10 s deadline leaves
    # the healthy nodes ample time on a loaded machine; node-00 misses it by seconds, and is
    # back, with time to spare, for round 3 (which starts at the deadline).
    run_dir = tmp_path / "run"
    processes.start(
        "server",
        server_args(
            run_dir,
            0,
            credentials,
            *scenario_args(6, policy="fedavg"),
            "--quorum",
            "3",
            "--round-deadline",
            "10",
        ),
    )
    port = listening_port(processes, "server", run_dir)
    failpoints = {0: "stall@2:14", 1: "nan@1", 2: "shape@2", 3: "exit@3"}
    for i in range(NODES):
        processes.start(
            f"node-{i}",
            node_args(i, port, credentials),
            env={"ACCORD_FAILPOINT": failpoints[i]},
        )

    # Act
    server_code = processes.wait("server")
    node_codes = [processes.wait(f"node-{i}") for i in range(NODES)]

    # Assert
    assert server_code == 0, processes.log("server")
    assert node_codes == [0, 0, 0, -signal.SIGKILL]
    records = run_records(run_dir)
    assert [r["round"] for r in records] == list(range(6))
    dropped = [r["dropped"] for r in records]
    assert dropped[0] == {}
    assert dropped[1] == {"node-01": "malformed first gradient: contains NaN or Inf"}
    assert dropped[2]["node-02"].startswith("malformed first gradient: expected shape (")
    assert dropped[2]["node-00"] == "no first gradient within the 10 s round deadline"
    # the killed node's stream end is seen at once (never waited out to the deadline; see
    # test_a_node_whose_stream_ends_twice_is_still_dropped_at_once for the race it once lost)
    assert dropped[3]["node-03"] == "node disconnected"
    assert dropped[4] == dropped[5] == {"node-03": "not connected"}
    # the late node rejoined, and the probabilities are FedAvg's over those who answered
    assert records[4]["present"] == records[5]["present"] == ["node-00", "node-01", "node-02"]
    for record in records:
        expected = fedavg_probabilities(record["present"])
        assert record["probabilities"] == pytest.approx(expected, abs=1e-9)
    assert "failed round 2" not in processes.log("server")  # NaN was the server's finding


def test_a_node_killed_between_registration_and_its_first_update_is_dropped_at_once(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: node-02 registers, then is SIGKILLed as round 1 reaches it; the deadline is
    # long, so a server that missed the stream's end would name the deadline instead
    run_dir = tmp_path / "run"
    args = [*scenario_args(2, policy="fedavg"), "--quorum", "3", "--round-deadline", "60"]
    processes.start("server", server_args(run_dir, 0, credentials, *args))
    port = listening_port(processes, "server", run_dir)
    for i in range(NODES):
        env = {"ACCORD_FAILPOINT": "exit@0"} if i == 2 else None
        processes.start(f"node-{i}", node_args(i, port, credentials), env=env)

    # Act
    server_code = processes.wait("server")

    # Assert
    assert server_code == 0, processes.log("server")
    assert processes.wait("node-2") == -signal.SIGKILL
    dropped = [record["dropped"] for record in run_records(run_dir)]
    assert dropped == [{"node-02": "node disconnected"}, {"node-02": "not connected"}]


def test_server_killed_after_round_3_resumes_to_the_uninterrupted_metrics(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: the server SIGKILLs itself right after writing the checkpoint of round 3.
    run_dir = tmp_path / "run"
    processes.start(
        "server",
        server_args(run_dir, 0, credentials, *scenario_args(6), "--quorum", "3"),
        env={"ACCORD_FAILPOINT": "crash-after-round@3"},
    )
    port = listening_port(processes, "server", run_dir)
    for i in range(NODES):
        processes.start(f"node-{i}", node_args(i, port, credentials))
    assert processes.wait("server") == -signal.SIGKILL
    assert len(run_records(run_dir)) == 3
    assert all(processes.poll(f"node-{i}") is None for i in range(NODES))  # still waiting

    # Act: a new server process continues the run on its saved address (no --port)
    resume = ["server", "--resume", str(run_dir), "--credentials", str(credentials)]
    processes.start("resumed", resume)
    resumed_code = processes.wait("resumed")
    node_codes = [processes.wait(f"node-{i}") for i in range(NODES)]

    # Assert
    assert resumed_code == 0, processes.log("resumed")
    assert node_codes == [0] * NODES
    log = processes.log("resumed")
    assert "resuming run" in log
    # with --quorum 3, the first resumed round still waits for all four nodes
    assert "waiting for the 4 nodes of the roster" in log
    assert "nodes are back after" not in log
    for i in range(NODES):  # the same node processes reconnected to the new server
        assert f"node node-{i:02d} registered" in log
    stats = json.loads((run_dir / "federation_stats.json").read_text())
    assert stats["resumed_at"] == 3
    assert_same_metrics(run_records(run_dir), simulation_records(6))


ATTACKS = textwrap.dedent(
    """
    import json, sys
    import grpc
    from accord.federation.proto import federation_pb2 as pb
    from accord.federation.proto import federation_pb2_grpc as pb_grpc

    address, good, rogue, revoked = sys.argv[1:5]

    def read(path):
        with open(path, "rb") as handle:
            return handle.read()

    def token(node):
        return read(f"{good}/{node}/token").decode().strip()

    def attempt(node_id, cert_dir=None, bearer=None, plaintext=False, version=2):
        if plaintext:
            channel = grpc.insecure_channel(address)
        else:
            key = cert = None
            if cert_dir is not None:
                key, cert = read(f"{cert_dir}/node.key"), read(f"{cert_dir}/node.pem")
            creds = grpc.ssl_channel_credentials(read(f"{good}/ca.pem"), key, cert)
            channel = grpc.secure_channel(address, creds)
        metadata = () if bearer is None else (("authorization", "Bearer " + bearer),)
        register = pb.NodeMessage(register=pb.Register(
            protocol_version=version, node_id=node_id, sample_count=100, n_features=64,
            n_classes=10))
        try:
            stub = pb_grpc.FederationStub(channel)
            for reply in stub.Session(iter([register]), metadata=metadata, timeout=10):
                return "JOINED:" + reply.WhichOneof("body")
            return "CLOSED"
        except grpc.RpcError as error:
            if version != 2:
                return error.code().name + ": " + error.details()
            return error.code().name
        finally:
            channel.close()

    print(json.dumps({
        "no client certificate": attempt("node-02", bearer=token("node-02")),
        "no token": attempt("node-02", cert_dir=f"{good}/node-02"),
        "another node's token": attempt(
            "node-02", cert_dir=f"{good}/node-02", bearer=token("node-03")),
        "another node's certificate": attempt(
            "node-00", cert_dir=f"{good}/node-02", bearer=token("node-00")),
        "certificate from another CA": attempt(
            "node-02", cert_dir=f"{rogue}/node-02", bearer=token("node-02")),
        "revoked certificate, current token": attempt(
            "node-02", cert_dir=revoked, bearer=token("node-02")),
        "plaintext": attempt("node-02", plaintext=True),
        "protocol version 1": attempt(
            "node-02", cert_dir=f"{good}/node-02", bearer=token("node-02"), version=1),
    }))
    """
)


def test_nodes_without_valid_credentials_are_refused_while_the_others_train(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: a run of node-00 and node-01 (quorum 1); node-01 hangs in round 1 until the
    # test kills it, so the attacks below surely happen while the run is in round 1.
    run_dir = tmp_path / "run"
    rogue_ca = tmp_path / "rogue"
    make_credentials(rogue_ca, ["node-02"], now=dt.datetime.now(dt.UTC), days=1)
    # node-02's folder leaked and was renewed (`accord certs --renew`) before the run.
    leaked = tmp_path / "leaked-node-02"
    shutil.copytree(credentials, tmp_path / "creds")
    credentials = tmp_path / "creds"
    shutil.copytree(credentials / "node-02", leaked)
    renew_node_credentials(credentials, ["node-02"], now=dt.datetime.now(dt.UTC), days=1)
    processes.start(
        "server",
        server_args(
            run_dir,
            0,
            credentials,
            *scenario_args(3, policy="fedavg"),
            "--expected-nodes",
            "2",
            "--quorum",
            "1",
            "--round-deadline",
            "120",
        ),
    )
    port = listening_port(processes, "server", run_dir)
    processes.start("node-0", node_args(0, port, credentials))
    processes.start(
        "node-1", node_args(1, port, credentials), env={"ACCORD_FAILPOINT": "stall@1:600"}
    )
    deadline = time.monotonic() + 60
    # Round 0 recorded: the roster is fixed (node-03 is out of it) and round 1 is stalled.
    while not (run_dir / "metrics.jsonl").exists() or not run_records(run_dir):
        assert time.monotonic() < deadline, processes.log("server")
        time.sleep(0.02)
    wrong_token = tmp_path / "wrong-token"
    wrong_token.write_text("not-the-token\n")

    # Act: a real node process with a valid certificate but a wrong token, and protocol-level
    # attempts with missing or borrowed credentials
    processes.start(
        "rogue-node",
        [
            "node",
            "--server",
            f"127.0.0.1:{port}",
            "--scenario-node",
            "2",
            "--tls-ca",
            str(credentials / "ca.pem"),
            "--tls-cert",
            str(credentials / "node-02" / "node.pem"),
            "--tls-key",
            str(credentials / "node-02" / "node.key"),
            "--token-file",
            str(wrong_token),
            *scenario_args(1)[:-4],
        ],
    )
    processes.start("late-node", node_args(3, port, credentials))  # valid, not in the roster
    script = tmp_path / "attacks.py"
    script.write_text(ATTACKS)
    attacks = subprocess.run(
        [
            sys.executable,
            str(script),
            f"127.0.0.1:{port}",
            str(credentials),
            str(rogue_ca),
            str(leaked),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rogue_code = processes.wait("rogue-node")
    late_code = processes.wait("late-node")
    rounds_during_attacks = len(run_records(run_dir))
    os.kill(processes.started["node-1"], signal.SIGKILL)  # end round 1
    server_code = processes.wait("server")

    # Assert
    assert json.loads(attacks.stdout) == {
        "no client certificate": "UNAVAILABLE",  # the TLS handshake fails
        "no token": "UNAUTHENTICATED",
        "another node's token": "UNAUTHENTICATED",
        "another node's certificate": "UNAUTHENTICATED",
        "certificate from another CA": "UNAVAILABLE",
        "revoked certificate, current token": "UNAUTHENTICATED",
        "plaintext": "UNAVAILABLE",
        "protocol version 1": "FAILED_PRECONDITION: protocol version 1 is not supported; "
        "this server speaks version 2",
    }
    assert rogue_code == ExitCode.REFUSED
    assert "refused this node's credentials: credentials refused" in processes.log("rogue-node")
    assert late_code == ExitCode.REFUSED
    assert "node node-03 is not in this run's roster" in processes.log("late-node")
    assert rounds_during_attacks == 1  # round 1 was going on all along
    assert server_code == 0, processes.log("server")
    records = run_records(run_dir)
    assert [r["present"] for r in records] == [["node-00", "node-01"]] + [["node-00"]] * 2
    assert records[1]["dropped"] == {"node-01": "node disconnected"}
    assert all(set(r["probabilities"]) == {"node-00", "node-01"} for r in records)
    server_log = processes.log("server")
    assert "wrong token for node id 'node-02'" in server_log  # precise reasons stay local
    assert "client certificate is for 'node-02', not 'node-00'" in server_log


def test_a_node_whose_credentials_are_revoked_mid_run_is_cut_at_the_next_round(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: nodes 0, 1 and 2 (quorum 1); node-00 hangs in round 1, so the run is surely in
    # round 1 when node-01's credentials are renewed (`accord certs --renew`)
    run_dir = tmp_path / "run"
    shutil.copytree(credentials, tmp_path / "creds")
    credentials = tmp_path / "creds"
    extra = ["--expected-nodes", "3", "--quorum", "1", "--round-deadline", "600"]
    processes.start(
        "server", server_args(run_dir, 0, credentials, *scenario_args(5, "fedavg"), *extra)
    )
    port = listening_port(processes, "server", run_dir)
    processes.start(
        "node-0", node_args(0, port, credentials), env={"ACCORD_FAILPOINT": "stall@1:600"}
    )
    processes.start("node-1", node_args(1, port, credentials))
    processes.start("node-2", node_args(2, port, credentials))
    processes.wait_for_text("node-0", "failpoint: stalling", timeout=120)

    # Act: renew node-01 (its folder's certificate revoked, its token replaced), then end
    # node-00, so round 1 finishes and round 2 starts
    renew_node_credentials(credentials, ["node-01"], now=dt.datetime.now(dt.UTC), days=1)
    os.kill(processes.started["node-0"], signal.SIGKILL)
    revoked_code = processes.wait("node-1", timeout=120)
    server_code = processes.wait("server", timeout=240)

    # Assert: node-01 is cut with one line; the run finishes with node-02
    assert revoked_code == ExitCode.REFUSED
    errors = [line for line in processes.log("node-1").splitlines() if line.startswith("accord")]
    assert errors == [
        "accord node: error: the server refused this node's credentials: credentials refused"
    ]
    assert server_code == ExitCode.OK, processes.log("server")[-3000:]
    assert "node node-01: its credentials are no longer accepted" in processes.log("server")
    records = run_records(run_dir)
    assert len(records) == 5
    cut = [r for r in records if "revoked since it registered" in r["dropped"].get("node-01", "")]
    assert len(cut) == 1
    assert all("node-01" not in r["present"] for r in records[records.index(cut[0]) :])
    assert all("node-02" in r["present"] for r in records)


def test_accord_federate_writes_the_run_folder_of_accord_simulate(
    processes: Processes, tmp_path: Path
) -> None:
    # Arrange
    federated, simulated = tmp_path / "federated", tmp_path / "simulated"
    processes.start("simulate", ["simulate", "--out", str(simulated), *scenario_args(3)])
    assert processes.wait("simulate") == 0, processes.log("simulate")

    # Act: the installed command, from scratch
    processes.exec("federate", ["federate", "--out", str(federated), *scenario_args(3)])
    code = processes.wait("federate", timeout=120)

    # Assert
    assert code == 0, processes.log("federate")
    simulate_files = {path.name for path in simulated.iterdir()}
    assert simulate_files <= {path.name for path in federated.iterdir()}
    assert (federated / "config.toml").read_text() == (simulated / "config.toml").read_text()
    timing = ("round_seconds", "local_training_seconds", "aggregate_seconds", "learn_seconds")
    for got, want in zip(run_records(federated), run_records(simulated), strict=True):
        assert {k: v for k, v in got.items() if k not in timing and k != "diagnostics"} == {
            k: v for k, v in want.items() if k not in timing and k != "diagnostics"
        }
    ours = json.loads((federated / "summary.json").read_text())
    theirs = json.loads((simulated / "summary.json").read_text())
    assert set(ours) == set(theirs) | {"federation"}
    assert (
        ours["results"]["actor-critic"]["final_test_accuracy"]
        == (theirs["results"]["actor-critic"]["final_test_accuracy"])
    )
    # the same table as accord simulate
    table = [line for line in processes.log("federate").splitlines() if line.startswith("    ")]
    assert table == [
        line for line in processes.log("simulate").splitlines() if line.startswith("    ")
    ]
    stats = json.loads((federated / "federation_stats.json").read_text())
    assert stats["node_exit_codes"] == {f"node-{i:02d}": 0 for i in range(NODES)}


def in_memory_records(rounds: int, policy: str, node_validation_fraction: float) -> list[Any]:
    """The same run through the in-memory grid: nodes 0 and 1 with validation splits."""
    from accord.federation.driver import FederatedRun
    from accord.federation.engine import load_server_data, prepare_run
    from accord.federation.grid import InMemoryGrid
    from accord.federation.node_data import split_validation
    from accord.federation.settings import FederationSettings, ServerSettings
    from accord.federation.worker import NodeWorker
    from accord.scenario import build_scenario, node_seed

    scenario = ScenarioSettings(nodes=NODES, fault=FaultSpec("label-flip", 1), seed=SEED)
    settings = ServerSettings(
        run=SimulationSettings(scenario=scenario, stop=StopConditions(max_rounds=rounds)),
        policy=policy,
        federation=FederationSettings(expected_nodes=2, evaluation="federated"),
    )
    data = build_scenario(scenario)
    workers = {}
    for node in data.nodes[:2]:
        seed = node_seed(SEED, node.index)
        x, y, held = split_validation(node.features, node.labels, node_validation_fraction, seed)
        workers[node.node_id] = NodeWorker(
            node.node_id, x, y, seed=seed, validation=held, fault=data.node_fault(node)
        )
    spec, factory = prepare_run(settings, load_server_data(settings, data), "run")
    run = FederatedRun(
        InMemoryGrid(spec, workers),
        factory,
        policy,
        settings.run.stop,
        settings.federation,
        expected_nodes=2,
        quorum=2,
        run_id="run",
    )
    return [timed.record.to_json() for timed in run.run().rounds]


def test_federated_evaluation_over_grpc_equals_the_in_memory_grid(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: the patent Actor-Critic learns from the nodes' validation accuracy
    run_dir = tmp_path / "run"
    processes.start(
        "server",
        server_args(
            run_dir,
            0,
            credentials,
            *scenario_args(3, policy="actor-critic-patent"),
            "--expected-nodes",
            "2",
            "--evaluation",
            "federated",
        ),
    )
    port = listening_port(processes, "server", run_dir)
    for i in range(2):
        processes.start(
            f"node-{i}", [*node_args(i, port, credentials), "--node-validation-fraction", "0.25"]
        )

    # Act
    server_code = processes.wait("server")

    # Assert
    assert server_code == 0, processes.log("server")
    records = run_records(run_dir)
    assert all(0.0 < r["validation_accuracy_after"] < 1.0 for r in records)
    assert_same_metrics(records, in_memory_records(3, "actor-critic-patent", 0.25))
    assert [r["validation_accuracy_before"] for r in records[1:]] == [
        r["validation_accuracy_after"] for r in records[:-1]
    ]


def test_a_server_that_cannot_listen_leaves_no_folder_and_ctrl_c_while_waiting_is_clean(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: the port is taken
    run_dir = tmp_path / "run"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        processes.start("busy", server_args(run_dir, busy, credentials, *scenario_args(3)))
        busy_code = processes.wait("busy")
    left_behind = run_dir.exists()

    # Act: the same --out on a free port, then Ctrl-C while it waits for its nodes
    processes.start("server", server_args(run_dir, 0, credentials, *scenario_args(3)))
    processes.wait_for_text("server", "waiting for 4 nodes")
    os.kill(processes.started["server"], signal.SIGINT)
    code = processes.wait("server")
    saved = json.loads((run_dir / "federation.json").read_text())["transport"]
    processes.start(
        "moved",
        [
            "server",
            "--resume",
            str(run_dir),
            "--port",
            str(saved["port"] + 1),
            "--credentials",
            str(credentials),
        ],
    )
    moved_code = processes.wait("moved")

    # Assert
    assert busy_code == ExitCode.USAGE
    assert f"error: cannot listen on 127.0.0.1:{busy}" in processes.log("busy")
    assert not left_behind  # nothing half-made: the same --out works
    log = processes.log("server")
    assert code == ExitCode.INTERRUPTED, log
    for noise in ("Traceback", "Task was destroyed", "Lock is not acquired", "Exception"):
        assert noise not in log
    assert (
        f"stopped before the first round; continue with: accord server --resume {run_dir} "
        f"--credentials {credentials}\n"
    ) in log
    assert saved["host"] == "127.0.0.1" and saved["port"] > 0  # the port actually bound
    assert moved_code == ExitCode.USAGE
    errors = [line for line in processes.log("moved").splitlines() if "error" in line]
    assert errors == [
        f"accord server: error: --port: this run listened on {saved['port']}, where its nodes "
        f"dial; got {saved['port'] + 1} (drop --port to resume on {saved['port']})"
    ]


def test_sigterm_finishes_the_round_writes_the_summary_and_the_printed_command_resumes(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: node-00 answers round 3 eight seconds late (within the stop's 10 s grace, and
    # long enough that the signal surely arrives meanwhile on a loaded machine)
    run_dir = tmp_path / "run"
    processes.start("server", server_args(run_dir, 0, credentials, *scenario_args(5)))
    port = listening_port(processes, "server", run_dir)
    for i in range(NODES):
        env = {"ACCORD_FAILPOINT": "stall@2:8"} if i == 0 else None
        processes.start(f"node-{i}", node_args(i, port, credentials), env=env)
    processes.wait_for_text("node-0", "failpoint: stalling")

    # Act
    os.kill(processes.started["server"], signal.SIGTERM)
    code = processes.wait("server")
    log = processes.log("server")
    stopped = [line for line in log.splitlines() if line.startswith("stopped after round")]

    # Assert: round 3 finished with every node, then the run stopped, resumable
    assert code == ExitCode.TERMINATED, log
    assert "Traceback" not in log and "Task was destroyed" not in log
    records = run_records(run_dir)
    assert len(records) == 3 and records[2]["dropped"] == {}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["results"]["actor-critic"]["stop_reason"] == "interrupted"
    assert summary["plots"] and all((run_dir / name).exists() for name in summary["plots"])
    assert "    3 |" in log  # the table's last row, numbered from 1
    assert len(stopped) == 1 and stopped[0].startswith("stopped after round 3; continue with: ")
    command = shlex.split(stopped[0].split("continue with: ")[1])
    resume = ["--resume", str(run_dir), "--credentials", str(credentials)]
    assert command == ["accord", "server", *resume]

    # Act: the printed command continues the run with the same node processes
    processes.start("resumed", command[1:])

    # Assert
    assert processes.wait("resumed") == 0, processes.log("resumed")
    assert [processes.wait(f"node-{i}") for i in range(NODES)] == [0] * NODES
    assert_same_metrics(run_records(run_dir), simulation_records(5))


def test_accord_federate_killed_after_round_2_resumes_to_the_uninterrupted_metrics(
    processes: Processes, tmp_path: Path
) -> None:
    # Arrange: the federation's server (the accord federate process) dies after round 2
    run_dir = tmp_path / "run"
    args = ["federate", "--out", str(run_dir), "--insecure", *scenario_args(4, policy="fedavg")]
    processes.start("killed", args, env={"ACCORD_FAILPOINT": "crash-after-round@2"})
    assert processes.wait("killed") == -signal.SIGKILL
    assert len(run_records(run_dir)) == 2

    # Act: new node processes, the same partitions, the run's saved settings
    processes.start("resumed", ["federate", "--resume", str(run_dir), "--insecure"])
    code = processes.wait("resumed")

    # Assert
    assert code == 0, processes.log("resumed")
    assert_same_metrics(run_records(run_dir), simulation_records(4, policy="fedavg"))
    assert "    3 |" in processes.log("resumed")  # the table goes on from round 3


def test_nodes_of_another_scenario_or_transport_are_refused_with_one_line_each(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: a TLS server of the 4-node scenario, started from scratch (gRPC's own
    # logging is set up at its first import)
    processes.exec("server", server_args(tmp_path / "run", 0, credentials, *scenario_args(3)))
    port = listening_port(processes, "server", tmp_path / "run")
    processes.wait_for_text("server", "waiting for 4 nodes", timeout=120)
    ten_nodes = node_args(0, port, credentials)
    ten_nodes[ten_nodes.index("--nodes") + 1] = "10"
    plaintext = [
        "node",
        "--server",
        f"127.0.0.1:{port}",
        "--scenario-node",
        "1",
        "--insecure",
        *scenario_args(1)[:-4],
    ]

    # Act
    processes.start("ten", ten_nodes)
    processes.start("plaintext", plaintext)
    codes = [processes.wait("ten"), processes.wait("plaintext")]
    os.kill(processes.started["server"], signal.SIGINT)
    server_code = processes.wait("server")

    # Assert: refused (exit 3), one line each, and gRPC's handshake errors stay quiet
    assert codes == [ExitCode.REFUSED, ExitCode.REFUSED]
    assert server_code == ExitCode.INTERRUPTED
    errors = [line for line in processes.log("ten").splitlines() if line.startswith("accord")]
    assert len(errors) == 1
    assert errors[0].startswith(
        "accord node: error: the server refused this node: the node's scenario options "
        "differ from the server's (dataset digits, nodes 4, "
    )
    server_log = processes.log("server")
    assert server_log.count("node node-00 cannot join: the node's scenario options differ") == 1
    errors = [line for line in processes.log("plaintext").splitlines() if line.startswith("accord")]
    assert errors == [
        f"accord node: error: the server at 127.0.0.1:{port} speaks TLS and this node runs "
        "--insecure (plaintext): give it --credentials DIR or --tls-ca with a token or client "
        "certificate"
    ]
    assert "SSL_ERROR_SSL" not in server_log and "WRONG_VERSION_NUMBER" not in server_log
    assert server_log.count("a client spoke plaintext to this TLS port (a node started with") == 1
    assert "without a client certificate" not in server_log  # the node's TLS check


def test_a_tls_node_against_a_plaintext_server_names_the_cause(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    args = ["server", "--out", str(tmp_path / "run"), "--port", "0", "--insecure"]
    processes.start("server", [*args, *scenario_args(3)])
    port = listening_port(processes, "server", tmp_path / "run")
    processes.wait_for_text("server", "waiting for 4 nodes")

    processes.start("node", node_args(2, port, credentials))
    code = processes.wait("node")
    os.kill(processes.started["server"], signal.SIGINT)
    processes.wait("server")

    assert code == ExitCode.REFUSED
    errors = [line for line in processes.log("node").splitlines() if line.startswith("accord")]
    assert errors == [
        f"accord node: error: the server at 127.0.0.1:{port} does not speak TLS (is it "
        "running --insecure?); TLS handshake failed: WRONG_VERSION_NUMBER"
    ]


@pytest.mark.skipif(
    not hasattr(__import__("accord.data.faults").data.faults, "default_faulty_count"),
    reason="the default --faulty below the node count comes with the scenario change (sim)",
)
def test_the_three_node_example_without_faulty_trains(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: the documented example, with neither --faulty nor --seed
    run_dir = tmp_path / "run"
    three = ["--nodes", "3", "--rounds", "10"]
    processes.start("server", server_args(run_dir, 0, credentials, *three))
    port = listening_port(processes, "server", run_dir)
    for i in range(3):
        processes.start(
            f"node-{i}",
            [
                "node",
                "--server",
                f"127.0.0.1:{port}",
                "--credentials",
                str(credentials / f"node-{i:02d}"),
                "--scenario-node",
                str(i),
                "--nodes",
                "3",
            ],
        )

    # Act
    code = processes.wait("server")

    # Assert
    assert code == 0, processes.log("server")
    assert [processes.wait(f"node-{i}") for i in range(3)] == [0, 0, 0]
    assert "3 nodes, Dirichlet 0.5, no faulty node" in processes.log("server")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["faulty_nodes"] == []
    assert summary["results"]["actor-critic"]["final_test_accuracy"] > 0.85


def test_a_second_signal_stops_the_server_at_once(
    processes: Processes, credentials: Path, tmp_path: Path
) -> None:
    # Arrange: node-00 stalls 60 s in round 1, so the first signal's grace (10 s) runs
    run_dir = tmp_path / "run"
    processes.start("server", server_args(run_dir, 0, credentials, *scenario_args(3)))
    port = listening_port(processes, "server", run_dir)
    for i in range(NODES):
        env = {"ACCORD_FAILPOINT": "stall@0:60"} if i == 0 else None
        processes.start(f"node-{i}", node_args(i, port, credentials), env=env)
    processes.wait_for_text("node-0", "failpoint: stalling")
    os.kill(processes.started["server"], signal.SIGINT)
    processes.wait_for_text("server", "Ctrl-C: stopping after this round")

    # Act
    os.kill(processes.started["server"], signal.SIGINT)
    code = processes.wait("server")

    # Assert: gone before the round ended; the run folder has no round and no summary
    log = processes.log("server")
    assert code == ExitCode.INTERRUPTED, log
    assert "Ctrl-C again: stopping at once (the last checkpoint is kept)" in log
    assert "Traceback" not in log
    assert run_records(run_dir) == [] and not (run_dir / "summary.json").exists()


def test_a_second_signal_to_accord_federate_leaves_no_private_keys_behind(
    processes: Processes, tmp_path: Path
) -> None:
    # Arrange: every node stalls 60 s in round 1; the run's throw-away CA and node keys
    # live in a private folder under TMPDIR
    run_dir, private = tmp_path / "run", tmp_path / "tmp"
    private.mkdir()
    env = {"ACCORD_FAILPOINT": "stall@0:60", "TMPDIR": str(private)}
    processes.exec("federate", ["federate", "--out", str(run_dir), *scenario_args(3)], env=env)
    deadline = time.monotonic() + 120
    while not (run_dir / "server.json").exists() or not list(private.glob("accord-federate-*")):
        assert processes.poll("federate") is None, processes.log("federate")
        assert time.monotonic() < deadline, processes.log("federate")
        time.sleep(0.05)
    # Signalled before round 1 started, the run would stop at once, and the second signal
    # would find the run over (this raced once).
    processes.wait_for_text("federate", "failpoint: stalling")
    os.kill(processes.started["federate"], signal.SIGINT)
    processes.wait_for_text("federate", "Ctrl-C: stopping after this round")

    # Act
    os.kill(processes.started["federate"], signal.SIGINT)
    code = processes.wait("federate")

    # Assert: stopped at once, and the keys went with it
    log = processes.log("federate")
    assert code == ExitCode.INTERRUPTED, log
    assert "Ctrl-C again: stopping at once" in log
    assert list(private.glob("accord-federate-*")) == [], log


def test_a_diverging_federated_run_stops_with_the_reason_and_exit_code_4(
    processes: Processes, tmp_path: Path
) -> None:
    # Arrange: sign-flipping nodes with 35 % of the data make FedAvg's model diverge
    # (at round 65 in accord simulate with the same options)
    run_dir = tmp_path / "diverged"
    options = ["--dataset", "breast-cancer", "--nodes", "8", "--fault", "sign-flip"]
    options += ["--faulty", "2", "--seed", "0", "--policy", "fedavg", "--rounds", "100"]

    # Act
    processes.exec("federate", ["federate", "--out", str(run_dir), "--insecure", *options])
    code = processes.wait("federate", timeout=180)

    # Assert: stopped at the divergence, not after retries, and said so
    log = processes.log("federate")
    assert code == ExitCode.DIVERGED, log
    summary = json.loads((run_dir / "summary.json").read_text())
    reason = summary["results"]["fedavg"]["stop_reason"]
    assert reason == "diverged: validation loss is not finite at round 65", reason
    assert "attempt" not in log and "Traceback" not in log, log


def test_one_process_hosts_twenty_node_sessions_and_every_one_is_in_every_round(
    processes: Processes, tmp_path: Path
) -> None:
    # Arrange: credentials for 20 nodes; a server of a 20-node scenario; one process with
    # 20 sessions (the load-test mode: the node client's code, a channel, credentials and
    # registration each). Eight registrations at a time from one address: the rest retry.
    credentials = tmp_path / "credentials"
    node_ids = [f"node-{i:02d}" for i in range(20)]
    make_credentials(credentials, node_ids, now=dt.datetime.now(dt.UTC), days=1)
    scenario = ["--nodes", "20", "--seed", str(SEED)]
    run_dir = tmp_path / "run"
    processes.start(
        "server",
        server_args(run_dir, 0, credentials, *scenario, "--rounds", "3", "--policy", "fedavg"),
    )
    port = listening_port(processes, "server", run_dir)

    # Act
    host = ["node", "--server", f"127.0.0.1:{port}", "--scenario-node", "0", "--sessions"]
    host += ["20", "--credentials", str(credentials), "--give-up-after", "60", *scenario]
    processes.start("host", host)
    server_code, host_code = processes.wait("server"), processes.wait("host")

    # Assert
    assert server_code == 0, processes.log("server")
    assert host_code == 0, processes.log("host")
    records = run_records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    from accord.scenario import build_scenario

    counts = {
        n.node_id: n.sample_count
        for n in build_scenario(ScenarioSettings(nodes=20, seed=SEED)).nodes
    }
    fedavg = {node: count / sum(counts.values()) for node, count in counts.items()}
    for record in records:
        assert record["present"] == node_ids and record["dropped"] == {}
        assert record["probabilities"] == pytest.approx(fedavg, abs=1e-9)
