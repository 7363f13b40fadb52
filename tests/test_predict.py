"""The trained model leaves the run: model files in the run folder and ``accord predict``."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

from accord.cli import main
from accord.reporting.model_files import load_model, read_model_info
from accord.scenario import ScenarioSettings, build_scenario


def _run(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


def _metrics(run_dir: Path, policy: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["policy"] == policy]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 6-round FedAvg run on digits, and its test split written as a CSV file."""
    directory = tmp_path_factory.mktemp("predict")
    run_dir = directory / "run"
    code, _ = _run(["simulate", "--rounds", "6", "--policies", "fedavg", "--out", str(run_dir)])
    assert code == 0
    test = build_scenario(ScenarioSettings()).holdout.test
    columns: dict[str, Any] = {f"x{i}": test.features[:, i] for i in range(test.n_features)}
    columns["label"] = test.labels
    test_file = directory / "test.csv"
    pcsv.write_csv(pa.table(columns), test_file)
    return run_dir, test_file


def test_predict_reproduces_the_runs_final_and_best_test_accuracy(
    simulated: tuple[Path, Path], tmp_path: Path
) -> None:
    # Arrange
    run_dir, test_file = simulated
    records = _metrics(run_dir, "fedavg")
    best = max(records, key=lambda r: r["validation_accuracy_after"])  # the first of ties
    n_test = 359

    # Act
    code, final_line = _run(
        [
            "predict",
            "--model",
            str(run_dir),
            "--data",
            str(test_file),
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    best_code, best_line = _run(
        [
            "predict", "--model", str(run_dir), "--data", str(test_file),
            "--out", str(tmp_path / "b.parquet"), "--which", "best",
        ]
    )  # fmt: skip

    # Assert: the same accuracy as the run's metrics, from files that say it
    assert code == 0 and best_code == 0
    assert f"accuracy {records[-1]['test_accuracy']:.4f} on column 'label'" in final_line
    assert f"accuracy {best['test_accuracy']:.4f} on column 'label'" in best_line
    final = pcsv.read_csv(tmp_path / "p.csv")
    labels = pcsv.read_csv(test_file).column("label").to_numpy()
    assert final.num_rows == n_test
    predicted = final.column("predicted").to_numpy()
    correct = int((predicted == labels).sum())
    assert correct == round(records[-1]["test_accuracy"] * n_test)
    probabilities = np.stack([final.column(f"probability_{k}").to_numpy() for k in range(10)], 1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert (probabilities.argmax(axis=1) == predicted).all()
    best_table = pq.read_table(tmp_path / "b.parquet")
    assert best_table.num_rows == n_test
    info = read_model_info(run_dir)
    assert info.policies["fedavg"]["best_round"] == best["round"]
    assert info.policies["fedavg"]["final_round"] == records[-1]["round"] == 5
    assert info.standardisation is None and info.feature_names[:2] == ("x0", "x1")


def test_the_model_files_are_plain_state_dicts(simulated: tuple[Path, Path]) -> None:
    run_dir, _ = simulated

    state = torch.load(run_dir / "model.pt", weights_only=True)
    module, info = load_model(run_dir)

    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert tuple(state["0.weight"].shape) == (32, info.n_features)
    assert torch.equal(module.state_dict()["2.bias"], state["2.bias"])


def test_predict_errors_are_one_line_naming_the_problem(
    simulated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, test_file = simulated
    table = pcsv.read_csv(test_file)
    renamed = tmp_path / "renamed.parquet"
    pq.write_table(table.drop(["x3"]).append_column("extra", table.column("x4")), renamed)
    no_labels = tmp_path / "no_labels.csv"
    pcsv.write_csv(table.drop(["label"]), no_labels)
    out = str(tmp_path / "o.csv")
    cases = [
        (["--model", str(tmp_path / "none"), "--data", str(test_file), "--out", out], 3,
         "no such run folder"),
        (["--model", str(tmp_path), "--data", str(test_file), "--out", out], 3, "no model.json"),
        (["--model", str(run_dir), "--data", str(renamed), "--out", out], 3,
         "missing column(s) x3; extra column(s) extra"),
        (["--model", str(run_dir), "--data", str(run_dir / "config.toml"), "--out", out], 3,
         "expected a .csv, .csv.gz, .tsv or .parquet file"),
        (["--model", str(run_dir), "--data", str(test_file), "--out", str(tmp_path / "o.txt")],
         2, "expected a file name ending in .csv, .parquet or .pq"),
        (["--model", str(run_dir), "--data", str(test_file), "--out", out, "--policy", "x"], 3,
         "--policy: expected one of fedavg"),
    ]  # fmt: skip
    for argv, expected_code, message in cases:
        capsys.readouterr()
        assert main(["predict", *argv]) == expected_code, argv
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0], (argv, error)
    code, line = _run(["predict", "--model", str(run_dir), "--data", str(no_labels), "--out", out])
    assert code == 0 and "accuracy" not in line and "scored 359 rows" in line


def test_a_run_of_several_policies_names_a_model_per_policy(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, _ = _run(
        ["simulate", "--rounds", "1", "--policies", "fedavg,median", "--out", str(run_dir)]
    )
    assert code == 0
    assert {"model-fedavg.pt", "model-median.pt", "best_model-median.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    with pytest.raises(Exception, match="several policies \\(fedavg, median\\); choose one"):
        load_model(run_dir)
    module, _ = load_model(run_dir, policy="median", which="best")
    assert not module.training


def test_the_best_model_follows_validation_accuracy_across_a_resume(tmp_path: Path) -> None:
    # Arrange: rounds 0-2 scored 0.5, 0.7, 0.6 before an interruption
    from accord.reporting.model_files import ModelExport
    from accord.training.models import ModelSpec

    def export() -> ModelExport:
        return ModelExport(
            tmp_path,
            model=ModelSpec("logistic"),
            n_features=2,
            n_classes=2,
            feature_names=("a", "b"),
            policies=("fedavg",),
        )

    def weights(value: float) -> np.ndarray:
        return np.full(6, value, dtype=np.float32)

    first = export()
    for round_index, accuracy in enumerate((0.5, 0.7, 0.6)):
        first.round_done("fedavg", round_index, weights(round_index), accuracy)

    # Act: the resumed run knows the earlier rounds; round 3 is worse, round 4 better
    resumed = export()
    resumed.restart("fedavg", [(0, 0.5), (1, 0.7), (2, 0.6)])
    resumed.round_done("fedavg", 3, weights(3.0), 0.65)
    best_before_round_4 = torch.load(tmp_path / "best_model.pt", weights_only=True)
    resumed.round_done("fedavg", 4, weights(4.0), float("nan"))  # a diverged score
    resumed.finish("fedavg", 4, weights(4.0))

    # Assert
    assert best_before_round_4["bias"].tolist() == [1.0, 1.0]  # round 1's weights
    info = read_model_info(tmp_path)
    assert info.policies["fedavg"]["best_round"] == 1
    assert info.policies["fedavg"]["final_round"] == 4
    final, _ = load_model(tmp_path)
    assert final.state_dict()["bias"].tolist() == [4.0, 4.0]


def test_a_user_apps_model_is_saved_as_its_modules_state_dict(tmp_path: Path) -> None:
    # Arrange: a model with BatchNorm buffers (float running statistics, an int64 counter)
    from accord.reporting.model_files import ModelExport
    from accord.training.weights import WeightLayout

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    module.train()
    module(torch.randn(8, 3))  # moves the running statistics off their initial values
    layout = WeightLayout.of_module(module)
    state = {name: tensor.numpy().copy() for name, tensor in module.state_dict().items()}
    flat = layout.flatten(state)
    export = ModelExport(
        tmp_path, policies=("fedavg",), layout=layout, app="my_app:server", input_note="app"
    )

    # Act
    export.finish("fedavg", 0, flat, layout.buffers_of(state))

    # Assert: the user's own module loads it, buffers included; predict says what to do
    rebuilt = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    for name, tensor in module.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    assert rebuilt.state_dict()["1.num_batches_tracked"].dtype == torch.int64
    with pytest.raises(Exception, match=r"user app 'my_app:server'.*load_state_dict"):
        read_model_info(tmp_path)
