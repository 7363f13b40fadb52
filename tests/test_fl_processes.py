"""A user's app over gRPC: `accord server --app` and `accord node --app` processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import test_federation_processes as federation_processes
from test_federation_processes import Processes, listening_port, run_records

from accord.commands.exit_codes import ExitCode
from accord.simulation import run_app

# The real-process fixtures of the federation tests, shared.
zygote = federation_processes.zygote
processes = federation_processes.processes

APP = "examples.cnn_digits.app"
CONFIG: dict[str, Any] = {"seed": 0, "nodes": 3, "flippers": ["node-0"]}


def server_args(run_dir: Path, port: int, rounds: int, *extra: str) -> list[str]:
    config = [f"--app-config={key}={json.dumps(value)}" for key, value in CONFIG.items()]
    return [
        "server",
        "--insecure",
        "--out",
        str(run_dir),
        "--port",
        str(port),
        "--app",
        f"{APP}:server_app",
        *config,
        "--rounds",
        str(rounds),
        "--expected-nodes",
        "3",
        *extra,
    ]


def node_args(name: str, port: int, *extra: str) -> list[str]:
    return [
        "node",
        "--insecure",
        "--server",
        f"127.0.0.1:{port}",
        "--node-id",
        name,
        "--app",
        f"{APP}:node_app",
        "--give-up-after",
        "60",
        *extra,
    ]


@pytest.mark.slow
def test_the_cnn_app_over_grpc_equals_the_in_process_run(
    processes: Processes, tmp_path: Path
) -> None:
    # Arrange: the same factories, in this process
    from examples.cnn_digits.app import node_app, server_app

    rounds = 3
    nodes = {f"node-{i}": node_app(f"node-{i}", CONFIG) for i in range(3)}
    expected = run_app(server_app(CONFIG), nodes, "actor-critic", rounds=rounds, config=CONFIG)
    run_dir = tmp_path / "run"

    # Act: a server and three node processes
    processes.start("server", server_args(run_dir, 0, rounds))
    port = listening_port(processes, "server", run_dir)
    processes.wait_for_text("server", "waiting for 3 nodes", timeout=120)
    for i in range(3):
        processes.start(f"node-{i}", node_args(f"node-{i}", port))
    server_code = processes.wait("server", timeout=240)
    node_codes = [processes.wait(f"node-{i}", timeout=60) for i in range(3)]

    # Assert: the same metrics, round by round, with BatchNorm buffers travelling
    assert server_code == ExitCode.OK, processes.log("server")[-3000:]
    assert node_codes == [ExitCode.OK] * 3
    records = run_records(run_dir)
    assert len(records) == len(expected.rounds) == rounds
    for got, timed in zip(records, expected.rounds, strict=True):
        want = timed.record
        assert got["test_accuracy"] == pytest.approx(want.test_accuracy, abs=1e-6)
        assert got["validation_loss_after"] == pytest.approx(want.validation_loss_after, abs=1e-6)
        for node, probability in want.probabilities.items():
            assert got["probabilities"][node] == pytest.approx(probability, abs=1e-6)


def test_a_node_whose_model_differs_is_refused_with_one_line_and_no_round_starts(
    processes: Processes, tmp_path: Path
) -> None:
    # Arrange
    run_dir = tmp_path / "run"
    processes.start("server", server_args(run_dir, 0, 2))
    port = listening_port(processes, "server", run_dir)
    processes.wait_for_text("server", "waiting for 3 nodes", timeout=120)

    # Act: a node whose CNN is half as wide
    processes.start("wide", node_args("node-0", port, "--app-config", "width=4"))
    code = processes.wait("wide", timeout=120)
    os.kill(processes.started["server"], signal.SIGINT)
    server_code = processes.wait("server", timeout=60)

    # Assert
    assert code == ExitCode.REFUSED
    errors = [line for line in processes.log("wide").splitlines() if line.startswith("accord")]
    assert errors == [
        "accord node: error: the server refused this node: this node's model differs from the "
        "server's: features.0.weight has shape [4, 1, 3, 3] here, [8, 1, 3, 3] on the server"
    ]
    assert server_code == ExitCode.INTERRUPTED
    assert "node node-0 cannot join: this node's model differs" in processes.log("server")
    assert not (run_dir / "metrics.jsonl").exists() or run_records(run_dir) == []


@pytest.mark.slow
def test_an_app_run_killed_after_round_2_resumes_with_its_buffers_to_the_same_metrics(
    processes: Processes, tmp_path: Path
) -> None:
    # Arrange: the uninterrupted run, in this process; the server SIGKILLs itself after the
    # checkpoint of round 2
    from examples.cnn_digits.app import node_app, server_app

    rounds = 4
    nodes = {f"node-{i}": node_app(f"node-{i}", CONFIG) for i in range(3)}
    expected = run_app(server_app(CONFIG), nodes, "actor-critic", rounds=rounds, config=CONFIG)
    run_dir = tmp_path / "run"
    processes.start(
        "server",
        server_args(run_dir, 0, rounds),
        env={"ACCORD_FAILPOINT": "crash-after-round@2"},
    )
    port = listening_port(processes, "server", run_dir)
    processes.wait_for_text("server", "waiting for 3 nodes", timeout=120)
    for i in range(3):
        processes.start(f"node-{i}", node_args(f"node-{i}", port))
    assert processes.wait("server", timeout=240) == -signal.SIGKILL
    assert len(run_records(run_dir)) == 2

    # Act: a new server continues the run from its folder; the nodes reconnect
    processes.start("resumed", ["server", "--resume", str(run_dir), "--insecure"])
    resumed_code = processes.wait("resumed", timeout=240)

    # Assert
    assert resumed_code == ExitCode.OK, processes.log("resumed")[-3000:]
    records = run_records(run_dir)
    assert len(records) == rounds
    for got, timed in zip(records, expected.rounds, strict=True):
        assert got["test_accuracy"] == pytest.approx(timed.record.test_accuracy, abs=1e-6)
        assert got["validation_loss_after"] == pytest.approx(
            timed.record.validation_loss_after, abs=1e-6
        )
