"""Datasets, partitioners and faulty-node recipes."""

from __future__ import annotations

import numpy as np
import pytest

from accord.data import FaultSpec, PartitionSpec, corrupt_gradient, flip_labels, partition
from accord.data.datasets import load_dataset, split_holdout
from accord.errors import ConfigurationError
from accord.scenario import ScenarioSettings, build_scenario


@pytest.mark.parametrize("name", ["digits", "breast-cancer", "wine", "synthetic"])
def test_embedded_datasets_load_without_a_download(name: str) -> None:
    data = load_dataset(name)
    assert data.features.dtype == np.float32
    assert data.features.shape[0] == data.labels.shape[0] > 100
    assert data.n_classes == len(np.unique(data.labels))


def test_holdout_split_is_disjoint_and_stratified() -> None:
    data = load_dataset("digits")
    split = split_holdout(data, np.random.default_rng(0), 0.1, 0.2)
    total = split.train.labels.size + split.validation.labels.size + split.test.labels.size
    assert total == data.labels.size
    assert set(np.unique(split.test.labels)) == set(range(10))
    assert split.test.labels.size == pytest.approx(0.2 * data.labels.size, abs=10)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_every_sample_goes_to_exactly_one_node(kind: str) -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 10, PartitionSpec(kind=kind), np.random.default_rng(1))
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(labels.size))
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_is_skewed_and_iid_is_not() -> None:
    labels = np.repeat(np.arange(10), 200)
    rng = np.random.default_rng(2)
    skewed = partition(labels, 10, PartitionSpec(kind="dirichlet", alpha=0.1), rng)
    even = partition(labels, 10, PartitionSpec(kind="iid"), rng)

    def classes_held(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.sum(np.bincount(labels[p], minlength=10) > 5) for p in parts]))

    assert classes_held(skewed) < 6 < classes_held(even)


def test_shards_give_each_node_few_labels() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(
        labels, 5, PartitionSpec(kind="shards", shards_per_node=2), np.random.default_rng(3)
    )
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_too_many_nodes_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="nodes"):
        partition(np.arange(50), 10, PartitionSpec(kind="iid"), np.random.default_rng(0))


def test_label_flip_changes_every_label_of_an_even_class_count() -> None:
    labels = np.array([0, 1, 2, 3, 9])
    flipped = flip_labels(labels, 10)
    np.testing.assert_array_equal(flipped, [9, 8, 7, 6, 0])
    assert np.all(flipped != labels)


def test_gradient_faults_do_what_they_say() -> None:
    honest = np.array([3.0, -4.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    noise = corrupt_gradient(FaultSpec("noise", 1), honest, rng)
    assert np.linalg.norm(noise) == pytest.approx(5.0, rel=1e-5)  # honest norm kept
    assert abs(float(noise @ honest)) / 25.0 < 0.999  # not the honest direction
    np.testing.assert_allclose(
        corrupt_gradient(FaultSpec("sign-flip", 1, 2.0), honest, rng), [-6.0, 8.0]
    )
    np.testing.assert_allclose(
        corrupt_gradient(FaultSpec("scale", 1, 10.0), honest, rng), [30.0, -40.0]
    )
    np.testing.assert_array_equal(
        corrupt_gradient(FaultSpec("free-rider", 1), honest, rng), [0.0, 0.0]
    )


def test_scenario_flips_labels_only_on_the_faulty_nodes() -> None:
    clean = build_scenario(ScenarioSettings(fault=FaultSpec("label-flip", 0)))
    faulty = build_scenario(ScenarioSettings(fault=FaultSpec("label-flip", 3)))
    assert len(faulty.faulty_nodes) == 3
    for a, b in zip(clean.nodes, faulty.nodes, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        if b.faulty:
            np.testing.assert_array_equal(b.labels, 9 - a.labels)
        else:
            np.testing.assert_array_equal(b.labels, a.labels)


def test_more_faulty_nodes_than_nodes_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="faulty"):
        ScenarioSettings(nodes=2, fault=FaultSpec("noise", 3))
    with pytest.raises(ConfigurationError, match="fault: expected one of"):
        FaultSpec("byzantine", 1)


@pytest.mark.parametrize(
    ("name", "loader", "scale"),
    [
        ("digits", "load_digits", 16.0),
        ("wine", "load_wine", 1.0),
        ("breast-cancer", "load_breast_cancer", 1.0),
    ],
)
def test_shipped_files_equal_scikit_learns_loaders(name: str, loader: str, scale: float) -> None:
    from sklearn import datasets as sk

    bunch = getattr(sk, loader)()
    data = load_dataset(name)
    np.testing.assert_allclose(data.features, (bunch.data / scale).astype(np.float32))
    np.testing.assert_array_equal(data.labels, bunch.target)


def test_loading_digits_does_not_import_scikit_learn() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from accord.data.datasets import load_dataset; load_dataset('digits'); "
        "print('sklearn.datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
