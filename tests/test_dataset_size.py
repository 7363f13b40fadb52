"""The size of a generated dataset (``samples``, ``--samples``) and ``synthetic-hard``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accord.cli import main
from accord.data import FaultSpec, PartitionSpec
from accord.data.datasets import (
    DATASETS,
    DEFAULT_SYNTHETIC_SAMPLES,
    SYNTHETIC,
    SyntheticSpec,
    load_dataset,
)
from accord.errors import ConfigurationError
from accord.scenario import ScenarioSettings, build_scenario


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_a_generated_dataset_has_the_samples_asked_for(name: str) -> None:
    default = load_dataset(name, seed=1)
    sized = load_dataset(name, seed=1, samples=1234)
    assert default.labels.shape == (DEFAULT_SYNTHETIC_SAMPLES,)
    assert sized.features.shape == (1234, SYNTHETIC[name].features)
    assert sized.n_classes == SYNTHETIC[name].classes == len(np.unique(sized.labels))
    again = load_dataset(name, seed=1, samples=1234)
    np.testing.assert_array_equal(sized.features, again.features)  # seeded


def test_synthetic_hard_is_the_documented_problem() -> None:
    data = load_dataset("synthetic-hard")
    assert "synthetic-hard" in DATASETS
    assert data.n_features == 40 and data.n_classes == 10
    # Only 8 of the 40 columns carry the classes: most columns are weakly related to them.
    means = np.stack([data.features[data.labels == c].mean(axis=0) for c in range(10)])
    spread = means.std(axis=0) / data.features.std(axis=0)
    assert np.sum(spread > 0.2) <= 16  # informative + redundant, of 40


def test_the_shipped_datasets_refuse_a_size() -> None:
    with pytest.raises(ConfigurationError, match="samples: only a generated dataset"):
        load_dataset("wine", samples=100)
    with pytest.raises(ConfigurationError, match="samples: only a generated dataset"):
        ScenarioSettings(dataset="digits", samples=5000)


def test_scenario_samples_are_checked_against_the_nodes() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ScenarioSettings(dataset="synthetic", nodes=100, samples=1000)
    assert str(caught.value) == (
        "samples: expected at least 1429 for 100 nodes of 10 samples each after the "
        "validation and test shares, got 1000"
    )
    with pytest.raises(ConfigurationError, match="samples: expected an integer >= 1, got 0"):
        ScenarioSettings(dataset="synthetic", samples=0)
    with pytest.raises(ConfigurationError, match="samples: expected at most 1000000"):
        ScenarioSettings(dataset="synthetic", samples=2_000_000)


def test_a_hundred_node_scenario_on_generated_data() -> None:
    settings = ScenarioSettings(
        dataset="synthetic",
        nodes=100,
        samples=5000,
        partition=PartitionSpec(kind="iid"),
        fault=FaultSpec("noise", 10),
    )
    data = build_scenario(settings)
    counts = [node.sample_count for node in data.nodes]
    assert len(counts) == 100 and min(counts) >= 10
    total = sum(counts) + data.holdout.validation.labels.size + data.holdout.test.labels.size
    assert total == 5000
    assert len(data.faulty_nodes) == 10


def test_synthetic_spec_rejects_an_impossible_problem() -> None:
    with pytest.raises(ConfigurationError, match="classes: expected classes x clusters"):
        SyntheticSpec(classes=10, informative=2, redundant=0, features=4)
    with pytest.raises(ConfigurationError, match="features: expected an integer >= 14"):
        SyntheticSpec(features=10)


def test_samples_option_of_accord_simulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["simulate", "--dataset", "synthetic", "--samples", "600", "--nodes", "4"]
    argv += ["--faulty", "1", "--rounds", "1", "--policies", "fedavg", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "samples = 600" in (out / "config.toml").read_text()
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["simulate", "--samples", "600", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "accord simulate: error: --samples: only a generated dataset (synthetic, "
        "synthetic-hard) can be resized; got samples=600 with dataset 'digits'\n"
    )
    assert not bad.exists()
