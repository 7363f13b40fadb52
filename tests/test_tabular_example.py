"""``examples/tabular_csv``: raw digits pixels (0-16) in one CSV file per node, split
non-IID, trained over gRPC by real ``accord server`` and ``accord node`` processes with the
default global standardisation, then scored by ``accord predict``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from accord.cli import main
from accord.data.standardise import FeatureMoments, Standardisation

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tabular_csv"


@pytest.mark.slow
def test_the_tabular_example_trains_on_raw_pixels_and_predict_reproduces_its_accuracy(
    tmp_path: Path,
) -> None:
    # Arrange: the example's own script, 20 rounds (the default is 30)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    # Act
    result = subprocess.run(
        ["bash", str(EXAMPLE / "run.sh"), str(tmp_path), "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )

    # Assert: the run trains on raw pixels, and predict gives the run's test accuracy
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    final = summary["results"]["actor-critic"]["final_test_accuracy"]
    assert final > 0.85
    assert f"accuracy {final:.4f} on column 'label'" in result.stdout
    pixels = np.loadtxt(tmp_path / "data" / "node-0.csv", delimiter=",", skiprows=1)
    assert pixels[:, :-1].max() == 16.0  # raw, not scaled
    # The run's transform is the one of the pooled node files (not the server's files)
    nodes = [
        np.loadtxt(tmp_path / "data" / f"node-{i}.csv", delimiter=",", skiprows=1)[:, :-1]
        for i in range(4)
    ]
    pooled = Standardisation.from_moments(
        FeatureMoments.combine([FeatureMoments.of(part) for part in nodes])
    )
    saved = json.loads((tmp_path / "run" / "model.json").read_text())["standardisation"]
    np.testing.assert_allclose(saved["mean"], pooled.mean, rtol=1e-12)
    np.testing.assert_allclose(saved["scale"], pooled.scale, rtol=1e-12)
    for i in range(4):
        assert (
            "standardised with the run's global statistics"
            in (tmp_path / f"node-{i}.log").read_text()
        )


def test_a_node_with_standardise_off_warns_about_raw_pixels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: a node file of raw pixels, as the example writes them
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "make_node_files.py"),
            "--out",
            str(tmp_path),
            "--nodes",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    argv = [
        "node", "--insecure", "--server", "127.0.0.1:9", "--node-id", "node-0",
        "--data", str(tmp_path / "node-0.csv"), "--give-up-after", "0.3",
    ]  # fmt: skip

    # Act: the node loads its data, warns, then gives up on the unreachable server
    code_off = main([*argv, "--standardise", "off"])
    off = capsys.readouterr().err
    main([*argv, "--standardise", "own"])
    own = capsys.readouterr().err

    # Assert
    assert code_off == 3
    assert "features are far from unit scale" in off and "node-0.csv" in off
    assert "--standardise own: this node scales its data with its own statistics" in own
    assert "non-IID" in own
