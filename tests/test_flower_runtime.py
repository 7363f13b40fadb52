"""accord.flower under Flower's own runtimes, offline, with telemetry off.

- Simulation (``flwr.simulation.run_simulation`` on Ray): one ServerApp runs Accord's
  strategy with ``fedavg``, Flower's own ``FedAvg`` and Accord's ``actor-critic`` one after
  the other on the same nodes. Oracles: Accord's fedavg equals Flower's FedAvg and the
  in-process ``accord`` Simulation of the same scenario (same weights to float tolerance).
- Deployment: ``flower-superlink --insecure``, two ``flower-supernode --insecure`` processes
  on 127.0.0.1 and ``flwr run`` of ``examples/flower_app`` (the Actor-Critic).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray otherwise warns (a FutureWarning, an error under pytest) about GPU variables.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}.items():
    os.environ.setdefault(_key, _value)


from accord.flower import ScenarioClientSettings  # noqa: E402
from accord.scenario import ScenarioSettings  # noqa: E402
from accord.simulation.driver import Simulation, SimulationSettings  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NODES = 4
ROUNDS = 3
SEED = 2


def test_simulation_fedavg_equals_flower_fedavg_and_accord_simulate(tmp_path: Path) -> None:
    out = tmp_path / "simulation.npz"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    script = ROOT / "tests" / "flower_sim_support.py"
    run = subprocess.run(
        [sys.executable, str(script), str(out), str(NODES), str(ROUNDS), str(SEED)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    got = np.load(out)

    settings = ScenarioClientSettings(scenario=ScenarioSettings(nodes=NODES, seed=SEED))
    reference = Simulation(
        SimulationSettings(scenario=settings.scenario, model=settings.model, local=settings.local),
        "fedavg",
    )
    records = [reference.run_round().record for _ in range(ROUNDS)]
    # Accord's fedavg through Flower = Flower's FedAvg = accord's own simulation.
    np.testing.assert_allclose(got["accord_weights"], got["flower_weights"], atol=2e-6)
    np.testing.assert_allclose(got["accord_weights"], reference.engine.global_weights, atol=2e-6)
    np.testing.assert_allclose(
        got["accord_validation_loss"], [r.validation_loss_after for r in records], rtol=1e-5
    )
    np.testing.assert_allclose(
        got["accord_probabilities"][0],
        [records[0].probabilities[n] for n in sorted(records[0].probabilities)],
    )
    assert float(got["flower_test_accuracy"]) == pytest.approx(records[-1].test_accuracy, abs=1e-6)
    # The Actor-Critic trains through Flower as well: the model improves round by round.
    losses = got["actor_critic_validation_loss"]
    assert losses.shape == (ROUNDS,) and losses[-1] < losses[0]
    np.testing.assert_allclose(got["actor_critic_probability_sums"], 1.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


#: Flower's binaries take a port number, not a bound socket: a port found free can be taken
#: before they bind it. A launch that fails on it is retried on another port.
PORT_ATTEMPTS = 5


def _launch_on_a_free_port(
    args_for: Callable[[int], list[str]],
    log: Path,
    env: dict[str, str],
    started: Callable[[], bool],
    what: str,
    logs: list[Path],
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``args_for(port)`` on a free port until ``started()``; a process that exits
    because its port was taken meanwhile is started again on another (the race that
    binding port 0 avoids, which these binaries do not offer)."""
    for _ in range(PORT_ATTEMPTS):
        port = _free_port()
        process = _start(args_for(port), log, env)
        _wait_for(lambda p=process: started() or p.poll() is not None, what, 120, logs)
        if started():
            return process, port
        _stop(process)
        if "address already in use" not in log.read_text(errors="replace").lower():
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-2000:]}")
    pytest.fail(f"{what}: every one of {PORT_ATTEMPTS} free ports was taken before it bound")


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            args, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process we started and the children in its session (Flower's SuperExec and
    app processes): SIGTERM, then SIGKILL after a grace period."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)


def _wait_for(condition: Any, what: str, deadline_seconds: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)
            pytest.fail(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.2)


@pytest.fixture
def flower_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    yield env


def test_deployment_superlink_two_supernodes_and_flwr_run(
    tmp_path: Path, flower_env: dict[str, str]
) -> None:
    home = Path(flower_env["FLWR_HOME"])
    home.mkdir()
    bin_dir = Path(sys.executable).parent
    logs = [tmp_path / "superlink.log", tmp_path / "node-0.log", tmp_path / "node-1.log"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        superlink, port = _launch_on_a_free_port(
            lambda free: [
                str(bin_dir / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(free),
                "--disable-runtime-dependency-installation",
            ],
            logs[0],
            flower_env,
            lambda: "Uvicorn running" in logs[0].read_text(),
            "the SuperLink",
            logs,
        )
        processes.append(superlink)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        for index in (0, 1):
            supernode, _ = _launch_on_a_free_port(
                lambda free, index=index: [
                    str(bin_dir / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(free),
                    "--node-config",
                    f"partition-id={index} num-partitions=2",
                ],
                logs[1 + index],
                flower_env,
                lambda index=index: logs[0].read_text().count("Activated node_id") >= index + 1,
                f"SuperNode {index}",
                logs,
            )
            processes.append(supernode)
        run = subprocess.run(
            [
                str(bin_dir / "flwr"),
                "run",
                str(ROOT / "examples" / "flower_app"),
                "test",
                "--stream",
                "--run-config",
                "nodes=2 faulty=1 num-server-rounds=2",
            ],
            env=flower_env,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
    finally:
        for process in reversed(processes):
            _stop(process)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    line = next((row for row in output.splitlines() if row.startswith("accord-flower-app:")), None)
    assert line is not None, output[-4000:]
    assert "policy actor-critic, 2 rounds" in line
    accuracy = float(line.split("test accuracy ")[1].split(",")[0])
    assert 0.2 < accuracy <= 1.0  # chance is 0.1 on ten digits; two rounds already learn
