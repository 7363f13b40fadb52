"""``accord vertical label|feature``: the parties as real processes on 127.0.0.1 over mutual
TLS with tokens; the same rounds as the in-process simulation, with two and three parties;
refusals, a party that never comes back and Ctrl-C each end in one line; a party killed in
the middle of an epoch and restarted, or a cut connection, is rejoined and the run equals
the uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from benchmark_support import load_benchmark

from accord.cli import main
from accord.commands.exit_codes import ExitCode
from accord.vertical import ModelSettings, VerticalResult, VerticalSettings, simulate_vertical
from accord.vertical.inputs import read_party_table

ROWS = 600
SETTINGS = [
    "--seed", "3", "--epochs", "4", "--batch-size", "64", "--learning-rate", "0.01",
    "--bottom", "mlp", "--bottom-hidden", "8", "--embedding-dim", "4",
    "--top", "concat", "--top-hidden", "8", "--patience", "2",
]  # fmt: skip
EXPECTED = VerticalSettings(
    model=ModelSettings(
        bottom="mlp", bottom_hidden=(8,), embedding_dim=4, top="concat", top_hidden=(8,)
    ),
    seed=3,
    epochs=4,
    batch_size=64,
    learning_rate=0.01,
    patience=2,
)
FINGERPRINT = "ab" * 32


def _write_world(
    folder: Path, widths: dict[str, int], weights: list[float], threshold: float, seed: int
) -> Path:
    """Aligned tables of ``ROWS`` rows, one per party of ``widths`` (its column count; the
    first party also holds the label ``y``), their alignment summaries and credentials."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(ROWS, sum(widths.values())))
    logits = features @ np.array(weights) + rng.normal(size=ROWS)
    labels = (logits > threshold).astype(np.float64)
    start = 0
    for index, (name, width) in enumerate(widths.items()):
        columns = {f"{name[0]}{i}": features[:, start + i] for i in range(width)}
        columns |= {"y": labels} if index == 0 else {}
        start += width
        lines = [",".join(["id", *columns])]
        for row in range(ROWS):
            lines.append(",".join([f"id{row}", *(f"{columns[c][row]:.6f}" for c in columns)]))
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
        summary = {"party": name, "parties": list(widths), "intersection": ROWS}
        (folder / f"{name}.summary.json").write_text(
            json.dumps({**summary, "fingerprint": FINGERPRINT})
        )
    names = ",".join(widths)
    assert main(["--quiet", "certs", str(folder / "creds"), "--names", names]) == 0
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bank (labels, 3 columns) and insurer (3 columns)."""
    weights = [1.5, -1.0, 0.5, 1.0, -1.5, 0.8]
    return _write_world(
        tmp_path_factory.mktemp("vertical"), {"bank": 3, "insurer": 3}, weights, 0.5, seed=0
    )


@pytest.fixture(scope="module")
def world3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three aligned tables: bank (labels, 2 columns), insurer (2) and merchant (2)."""
    widths = {"bank": 2, "insurer": 2, "merchant": 2}
    weights = [1.0, -1.0, 1.5, 0.8, -1.2, 1.0]
    return _write_world(tmp_path_factory.mktemp("vertical3"), widths, weights, 0.3, seed=1)


def _label(
    world: Path, run_dir: Path, *extra: str, listen: str = "127.0.0.1:0", die_in: int | None = None
) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "accord.cli", "vertical", "label",
        "--table", str(world / "bank.csv"), "--alignment", str(world / "bank.summary.json"),
        "--label-column", "y", "--ignore-columns", "id", "--listen", listen,
        "--credentials", str(world / "creds"), "--run-dir", str(run_dir), *SETTINGS, *extra,
    ]  # fmt: skip
    return _start(command, die_in)


def _feature(
    world: Path,
    port: int,
    *extra: str,
    creds: str = "insurer",
    name: str = "insurer",
    die_in: int | None = None,
) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "accord.cli", "vertical", "feature",
        "--table", str(world / f"{name}.csv"),
        "--alignment", str(world / f"{name}.summary.json"), "--ignore-columns", "id",
        "--connect", f"127.0.0.1:{port}", "--credentials", str(world / "creds" / creds),
        "--connect-timeout", "60", *SETTINGS, *extra,
    ]  # fmt: skip
    return _start(command, die_in)


def _start(command: list[str], die_in: int | None) -> subprocess.Popen[str]:
    """``command``, killing itself in the middle of epoch ``die_in`` (a failpoint)."""
    env = {key: value for key, value in os.environ.items() if key != "ACCORD_FAILPOINT"}
    if die_in is not None:
        env["ACCORD_FAILPOINT"] = f"vertical-exit@{die_in}"
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _port(run_dir: Path, label: subprocess.Popen[str]) -> int:
    """The port the label party wrote to RUN_DIR/label.json (generous deadline)."""
    deadline = time.monotonic() + 120
    endpoint = run_dir / "label.json"
    while not endpoint.exists():
        if label.poll() is not None:
            pytest.fail(f"the label party ended: {label.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("the label party did not write label.json")
        time.sleep(0.05)
    port = json.loads(endpoint.read_text())["port"]
    assert isinstance(port, int)
    return port


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=180)
    return process.returncode, out, err


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Every process a test starts; any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


def _pair(
    world: Path,
    run_dir: Path,
    processes: list[subprocess.Popen[str]],
    label_flags: tuple[str, ...] = (),
    feature_flags: tuple[str, ...] = (),
    creds: str = "insurer",
) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """The label party, then the feature party dialling the port it wrote."""
    label = _label(world, run_dir, *label_flags)
    processes.append(label)
    feature = _feature(world, _port(run_dir, label), *feature_flags, creds=creds)
    processes.append(feature)
    return label, feature


def _simulated(world: Path, settings: VerticalSettings) -> VerticalResult:
    """The same run in one process, on the same tables."""
    bank = read_party_table(world / "bank.csv", "bank", label_column="y", ignore=["id"])
    insurer = read_party_table(world / "insurer.csv", "insurer", ignore=["id"])
    return simulate_vertical(bank, [insurer], settings)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


@pytest.mark.slow
def test_networked_run_equals_the_in_process_simulation(
    world: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run_dir = tmp_path / "run"
    label, feature = _pair(world, run_dir, processes)
    feature_code, feature_out, feature_err = _finish(feature)
    label_code, label_out, label_err = _finish(label)
    assert (label_code, feature_code) == (0, 0), label_err[-3000:] + feature_err[-3000:]
    assert "the label party ended the run: the run is complete" in feature_out

    _check_equal(run_dir, _simulated(world, EXPECTED))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["alignment_fingerprint"] == FINGERPRINT
    assert summary["parties"] == ["bank", "insurer"]
    assert summary["test"]["auc"] is not None
    assert f"test AUC {summary['test']['auc']:.4f}" in label_out
    assert {p.name for p in run_dir.iterdir()} == {
        "label.json", "metrics.jsonl", "summary.json", "loss.png", "auc.png", "checkpoint.npz"
    }  # fmt: skip


def _check_equal(run_dir: Path, expected: VerticalResult) -> None:
    """The run folder holds ``expected``'s epochs and final scores, to float tolerance."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(expected.epochs)
    for line, epoch in zip(lines, expected.epochs, strict=True):
        assert line["epoch"] == epoch.epoch
        assert line["train_loss"] == pytest.approx(epoch.train_loss, rel=1e-5, abs=1e-6)
        assert epoch.validation is not None and epoch.test is not None
        assert line["validation"]["loss"] == pytest.approx(epoch.validation.loss, rel=1e-5)
        assert line["test"]["auc"] == pytest.approx(epoch.test.auc, abs=1e-6)
        assert line["bytes_sent"] > 0 and line["bytes_received"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert expected.test is not None and expected.test.auc is not None
    assert summary["best_epoch"] == expected.best_epoch
    assert summary["test"]["auc"] == pytest.approx(expected.test.auc, abs=1e-6)
    assert summary["test"]["loss"] == pytest.approx(expected.test.loss, rel=1e-5)


#: Runs that a party leaves in the middle of (epochs 2 or 3); the cut needs a longer one.
LONGER = ("--epochs", "8", "--patience", "1000")
LONGEST = ("--epochs", "30", "--patience", "1000")


def _wait_for_epochs(run_dir: Path, count: int, running: subprocess.Popen[str]) -> None:
    """Until RUN_DIR/metrics.jsonl holds ``count`` epochs (generous deadline)."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= count):
        assert time.monotonic() < deadline and running.poll() is None, "no epoch was done"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_label_party_killed_and_resumed_is_rejoined_by_the_running_feature_party(
    world: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run_dir = tmp_path / "run"
    label = _label(world, run_dir, *LONGER, die_in=3)  # SIGKILLed in the middle of epoch 3
    processes.append(label)
    port = _port(run_dir, label)
    feature = _feature(world, port, *LONGER)  # no checkpoint file: it keeps its state in memory
    processes.append(feature)
    assert label.wait(timeout=120) == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()

    # The label party restarted on the same port; the feature party was never restarted.
    (run_dir / "label.json").unlink()
    label = _label(world, run_dir, *LONGER, "--resume", listen=f"127.0.0.1:{port}")
    processes.append(label)
    feature_code, feature_out, feature_err = _finish(feature)
    label_code, _, label_err = _finish(label)
    assert (label_code, feature_code) == (0, 0), label_err[-3000:] + feature_err[-3000:]
    assert "redialling for up to 60 s" in feature_err and "rejoined 'bank''s run" in feature_err
    assert "the run is complete" in feature_out
    settings = dataclasses.replace(EXPECTED, epochs=8, patience=1000)
    _check_equal(run_dir, _simulated(world, settings))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_at_epoch"] == 3


@pytest.mark.slow
def test_a_cut_connection_is_redialled_and_the_run_equals_the_uninterrupted_one(
    world: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    chaos = load_benchmark("chaos_soak")
    quiet = chaos.SoakSettings(server_kills=0, node_kills=0, max_delay=0.0, cut_after=1e9, refuse=0)
    run_dir = tmp_path / "run"
    label = _label(world, run_dir, *LONGEST)
    processes.append(label)
    proxy = chaos.ChaosProxy(_port(run_dir, label), quiet, seed=0)
    try:
        feature = _feature(world, proxy.start(), *LONGEST)  # no checkpoint file: in memory
        processes.append(feature)
        _wait_for_epochs(run_dir, 2, label)
        proxy.cut()  # both processes live on; their TCP connection dies without a FIN
        feature_code, _, feature_err = _finish(feature)
        label_code, _, label_err = _finish(label)
    finally:
        proxy.stop()
    assert (label_code, feature_code) == (0, 0), label_err[-3000:] + feature_err[-3000:]
    assert "redialling for up to 60 s" in feature_err and "rejoined 'bank''s run" in feature_err
    settings = dataclasses.replace(EXPECTED, epochs=30, patience=1000)
    _check_equal(run_dir, _simulated(world, settings))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["party"] for r in summary["reconnections"]] == ["insurer"]


@pytest.mark.slow
def test_three_parties_equal_the_simulation_and_the_others_wait_for_a_restarted_one(
    world3: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run_dir, saved = tmp_path / "run", tmp_path / "merchant.npz"
    label = _label(world3, run_dir, *LONGER)
    processes.append(label)
    port = _port(run_dir, label)
    insurer = _feature(world3, port, *LONGER)
    merchant_flags = (*LONGER, "--checkpoint", str(saved))
    merchant = _feature(world3, port, *merchant_flags, creds="merchant", name="merchant", die_in=2)
    processes += [insurer, merchant]
    # merchant dies in the middle of epoch 2; insurer stays connected: it waits, then rolls
    # back to the end of epoch 1 with the others
    assert merchant.wait(timeout=120) == -signal.SIGKILL
    merchant = _feature(
        world3, port, *merchant_flags, "--resume", creds="merchant", name="merchant"
    )
    processes.append(merchant)
    codes = [_finish(p) for p in (merchant, insurer, label)]
    assert [c[0] for c in codes] == [0, 0, 0], "".join(c[2][-2000:] for c in codes)

    tables = {
        name: read_party_table(
            world3 / f"{name}.csv",
            name,
            label_column="y" if name == "bank" else None,
            ignore=["id"],
        )
        for name in ("bank", "insurer", "merchant")
    }
    settings = dataclasses.replace(EXPECTED, epochs=8, patience=1000)
    expected = simulate_vertical(tables["bank"], [tables["insurer"], tables["merchant"]], settings)
    _check_equal(run_dir, expected)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["parties"] == ["bank", "insurer", "merchant"]
    assert [(r["party"], r["epoch"]) for r in summary["reconnections"]] == [("merchant", 2)]


def test_a_settings_mismatch_is_refused_on_both_sides_and_nothing_is_written(
    world: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run_dir = tmp_path / "run"
    label, feature = _pair(world, run_dir, processes, (), ("--learning-rate", "0.02"))
    feature_code, _, feature_err = _finish(feature)
    label_code, _, label_err = _finish(label)
    assert (label_code, feature_code) == (ExitCode.REFUSED, ExitCode.REFUSED)
    for stderr in (label_err, feature_err):
        (line,) = _errors(stderr)
        assert "party 'insurer': vertical settings differ from 'bank''s" in line
    assert not run_dir.exists()


def test_wrong_credentials_are_refused_and_ctrl_c_ends_the_waiting_label_party(
    world: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run_dir = tmp_path / "run"
    # insurer presenting bank's folder: its certificate and token are bank's
    label, feature = _pair(world, run_dir, processes, creds="bank")
    feature_code, _, feature_err = _finish(feature)
    assert feature_code == ExitCode.REFUSED
    (line,) = _errors(feature_err)
    assert "refused this party's credentials" in line
    assert label.poll() is None  # a refused stranger does not end the run
    label.send_signal(signal.SIGINT)
    label_code, _, label_err = _finish(label)
    assert label_code == ExitCode.INTERRUPTED, label_err[-2000:]
    assert "refused party 'insurer'" in label_err  # the reason, in the label party's log
    assert not run_dir.exists()


def test_a_feature_party_that_dies_and_never_comes_back_ends_the_label_party_in_one_line(
    world: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run_dir = tmp_path / "run"
    many = ("--epochs", "100000", "--patience", "100000")
    label, feature = _pair(world, run_dir, processes, (*many, "--reconnect-timeout", "1.5"), many)
    _wait_for_epochs(run_dir, 1, feature)
    feature.kill()  # and never restarted
    feature.communicate(timeout=60)
    label_code, _, label_err = _finish(label)
    assert label_code == ExitCode.REFUSED
    (line,) = _errors(label_err)
    assert "party 'insurer' did not come back within 1.5 s (party 'insurer' is gone" in line


def test_when_a_party_never_comes_back_the_label_party_tells_the_others_why(
    world3: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    run_dir = tmp_path / "run"
    label = _label(world3, run_dir, *LONGER, "--reconnect-timeout", "1.5")
    processes.append(label)
    port = _port(run_dir, label)
    insurer = _feature(world3, port, *LONGER)  # would redial for 60 s if not told
    merchant = _feature(world3, port, *LONGER, creds="merchant", name="merchant", die_in=2)
    processes += [insurer, merchant]
    assert merchant.wait(timeout=120) == -signal.SIGKILL  # and never restarted
    label_code, _, label_err = _finish(label)
    insurer_code, _, insurer_err = _finish(insurer)
    assert (label_code, insurer_code) == (ExitCode.REFUSED, ExitCode.REFUSED), insurer_err
    (label_line,) = _errors(label_err)
    (insurer_line,) = _errors(insurer_err)
    assert "party 'merchant' did not come back within 1.5 s" in label_line
    assert "the label party ended the run: party 'merchant' did not come back" in insurer_line


@pytest.mark.slow
def test_predict_scores_new_rows_like_the_in_process_model(
    world: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    from accord.vertical import build_parties, run_vertical

    run_dir, saved = tmp_path / "run", tmp_path / "insurer.npz"
    label, feature = _pair(world, run_dir, processes, (), ("--checkpoint", str(saved)))
    assert (_finish(feature)[0], _finish(label)[0]) == (0, 0)
    # new rows, aligned by another alignment: the first 100 of each table, no label column
    new = tmp_path / "new"
    new.mkdir()
    for name, drop in (("bank", "y"), ("insurer", None)):
        lines = (world / f"{name}.csv").read_text().splitlines()[:101]
        header = lines[0].split(",")
        keep = [i for i, column in enumerate(header) if column != drop]
        rows = [",".join(line.split(",")[i] for i in keep) for line in lines]
        (new / f"{name}.csv").write_text("\n".join(rows) + "\n")
        summary = {"party": name, "parties": ["bank", "insurer"], "intersection": 100}
        (new / f"{name}.summary.json").write_text(json.dumps({**summary, "fingerprint": "ef" * 32}))
    common = ["--ignore-columns", "id", "--idle-timeout", "120"]
    out = tmp_path / "scores.csv"
    label = subprocess.Popen(
        [
            sys.executable, "-m", "accord.cli", "vertical", "predict", "label",
            "--run-dir", str(run_dir), "--train-table", str(world / "bank.csv"),
            "--train-alignment", str(world / "bank.summary.json"), "--label-column", "y",
            "--table", str(new / "bank.csv"), "--alignment", str(new / "bank.summary.json"),
            "--listen", "127.0.0.1:0", "--credentials", str(world / "creds"),
            "--out", str(out), *common,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    processes.append(label)
    port = None
    deadline = time.monotonic() + 120
    assert label.stderr is not None
    for line in label.stderr:  # "listening on 127.0.0.1:PORT (mutual TLS)"
        if "listening on 127.0.0.1:" in line:
            port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
            break
        assert time.monotonic() < deadline
    assert port is not None
    feature = subprocess.Popen(
        [
            sys.executable, "-m", "accord.cli", "vertical", "predict", "feature",
            "--checkpoint", str(saved), "--train-table", str(world / "insurer.csv"),
            "--train-alignment", str(world / "insurer.summary.json"),
            "--table", str(new / "insurer.csv"),
            "--alignment", str(new / "insurer.summary.json"),
            "--connect", f"127.0.0.1:{port}",
            "--credentials", str(world / "creds" / "insurer"), *common, *SETTINGS,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    processes.append(feature)
    feature_code, _, feature_err = _finish(feature)
    assert feature_code == 0, feature_err[-3000:]
    label_code, label_out, _ = _finish(label)
    assert label_code == 0 and f"scored 100 rows: {out}" in label_out

    bank = read_party_table(world / "bank.csv", "bank", label_column="y", ignore=["id"])
    insurer = read_party_table(world / "insurer.csv", "insurer", ignore=["id"])
    label_party, parties = build_parties(bank, [insurer], EXPECTED)
    run_vertical(label_party, parties)
    new_bank = read_party_table(new / "bank.csv", "bank", ignore=["id"])
    new_insurer = read_party_table(new / "insurer.csv", "insurer", ignore=["id"])
    expected = label_party.predict(new_bank, {"insurer": parties["insurer"].embed_new(new_insurer)})
    scores = np.loadtxt(out, delimiter=",", skiprows=1)
    assert scores.shape == (100, 2) and (scores[:, 0] == np.arange(100)).all()
    np.testing.assert_allclose(scores[:, 1], expected, rtol=1e-5, atol=1e-6)
