"""Datasets, partitioners and faulty-node recipes."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from accord.data import FaultSpec, PartitionSpec, corrupt_gradient, flip_labels, partition
from accord.data.datasets import load_dataset, split_holdout
from accord.data.faults import NodeFault, node_first_gradient
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


@pytest.mark.parametrize(
    ("fractions", "field"), [((0.02, 0.2), "validation_fraction"), ((0.2, 0.02), "test_fraction")]
)
def test_a_holdout_share_that_rounds_to_no_sample_is_refused(
    fractions: tuple[float, float], field: str
) -> None:
    # 200 samples in 10 classes: 2 % of each class's 20 rounds to 0. The empty validation
    # set scored NaN, and the run stopped as "diverged" at round 1.
    data = load_dataset("synthetic-hard", seed=47, samples=200)
    with pytest.raises(ConfigurationError, match=rf"^{field}: .* holds out no sample"):
        split_holdout(data, np.random.default_rng(0), *fractions)
    split = split_holdout(data, np.random.default_rng(0), 0.05, 0.2)
    assert split.validation.labels.size == 10


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


def test_shards_too_small_for_min_samples_are_a_clear_error() -> None:
    labels = np.repeat(np.arange(2), 50)
    # 4 nodes x 3 shards of 100 samples: shards of 8 or 9, every node at least 24.
    parts = partition(
        labels,
        4,
        PartitionSpec("shards", shards_per_node=3, min_samples=24),
        np.random.default_rng(0),
    )
    assert min(len(p) for p in parts) >= 24
    # 4 x 30 shards: 100 of the 120 shards hold one sample, the rest none: a node can get
    # nothing at all.
    with pytest.raises(
        ConfigurationError,
        match=r"^shards_per_node: 30 shards per node of 100 "
        r"samples over 4 nodes can leave a node 0 samples; expected at least 1 each",
    ):
        partition(
            labels,
            4,
            PartitionSpec("shards", shards_per_node=30, min_samples=1),
            np.random.default_rng(0),
        )


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
    # A factor past float32's range sends inf (the server leaves such a node out), with no
    # numpy warning (warnings are errors here).
    for kind, sign in (("scale", 1.0), ("sign-flip", -1.0)):
        huge = corrupt_gradient(FaultSpec(kind, 1, 3e38), honest, rng)
        np.testing.assert_array_equal(huge, [sign * np.inf, -sign * np.inf])


def test_scenario_flips_labels_only_on_the_faulty_nodes() -> None:
    clean = build_scenario(ScenarioSettings(fault=FaultSpec("label-flip", 0)))
    faulty = build_scenario(ScenarioSettings(fault=FaultSpec("label-flip", 3)))
    assert len(faulty.faulty_nodes) == 3
    for a, b in zip(clean.nodes, faulty.nodes, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(b.labels, a.labels)  # a node's own labels
        if b.faulty:
            assert b.flipped_labels is not None
            np.testing.assert_array_equal(b.flipped_labels, 9 - a.labels)
        else:
            assert b.flipped_labels is None


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


# ------------------------------------------------------------ time-varying and mixed faults


def test_a_fault_window_makes_a_node_faulty_only_inside_it() -> None:
    data = build_scenario(
        ScenarioSettings(nodes=6, fault=FaultSpec("scale", 1, 10.0, start=3, end=6))
    )
    (faulty,) = data.faulty_nodes
    rounds = [round_index for round_index in range(10) if data.faulty_in_round(round_index)]
    assert rounds == [3, 4, 5]
    assert data.faulty_in_round(4) == frozenset({faulty})
    assert data.time_varying


def test_a_fault_from_round_r_on_never_switches_off() -> None:
    data = build_scenario(ScenarioSettings(nodes=6, fault=FaultSpec("noise", 2, start=30)))
    assert all(not data.faulty_in_round(t) for t in range(30))
    assert all(data.faulty_in_round(t) == frozenset(data.faulty_nodes) for t in range(30, 200))


def test_a_per_round_fault_is_drawn_from_seed_node_and_round_only() -> None:
    settings = ScenarioSettings(nodes=5, fault=FaultSpec("sign-flip", 2, probability=0.3))
    first, again = build_scenario(settings), build_scenario(settings)
    rounds = range(400)
    assert [first.faulty_in_round(t) for t in rounds] == [again.faulty_in_round(t) for t in rounds]
    for node in first.nodes:
        if node.fault is None:
            continue
        draws = [node.fault.active(settings.seed, node.index, t) for t in rounds]
        # Binomial(400, 0.3): mean 120, std 9.2; the bounds are more than 4 std away.
        assert 80 < sum(draws) < 160
        assert draws == [node.node_id in first.faulty_in_round(t) for t in rounds]
    other = build_scenario(dataclasses.replace(settings, seed=1))
    assert [other.faulty_in_round(t) for t in rounds] != [first.faulty_in_round(t) for t in rounds]


def test_mixed_fault_groups_in_one_run() -> None:
    groups = (FaultSpec("label-flip", 2), FaultSpec("scale", 1, 10.0), FaultSpec("free-rider", 1))
    data = build_scenario(ScenarioSettings(nodes=8, faults=groups))
    kinds = sorted(node.fault.kind for node in data.nodes if node.fault is not None)
    assert kinds == ["free-rider", "label-flip", "label-flip", "scale"]
    assert len(data.faulty_nodes) == 4
    assert data.faulty_in_round(0) == frozenset(data.faulty_nodes)
    for node in data.nodes:
        assert (node.flipped_labels is not None) == (
            node.fault is not None and node.fault.kind == "label-flip"
        )
        if node.fault is not None:
            assert data.settings.fault_groups[data.fault_group_of(node) or 0] == node.fault


def test_one_group_chooses_the_same_nodes_as_before_groups_existed() -> None:
    # A single group draws exactly as the single fault did, so published figures hold.
    single = build_scenario(ScenarioSettings(fault=FaultSpec("noise", 3)))
    grouped = build_scenario(ScenarioSettings(faults=(FaultSpec("noise", 3),)))
    assert single.faulty_nodes == grouped.faulty_nodes == ("node-04", "node-07", "node-09")


@pytest.mark.parametrize(("nodes", "expected"), [(3, 0), (4, 1), (8, 2), (10, 3), (20, 6)])
def test_the_default_faulty_count_is_30_percent_rounded_down(nodes: int, expected: int) -> None:
    assert ScenarioSettings(nodes=nodes).faulty_count == expected
    assert ScenarioSettings(nodes=nodes, fault=FaultSpec("noise", 1)).faulty_count == 1


def test_a_three_node_scenario_has_no_faulty_node_by_default() -> None:
    assert build_scenario(ScenarioSettings(nodes=3)).faulty_nodes == ()


def test_every_node_faulty_in_every_round_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigurationError, match=r"^faulty: 3 faulty nodes of 3 leaves no honest"):
        ScenarioSettings(nodes=3, fault=FaultSpec("label-flip", 3))
    with pytest.raises(ConfigurationError, match="leaves no honest node"):
        ScenarioSettings(nodes=2, faults=(FaultSpec("noise", 1), FaultSpec("scale", 1)))
    # Honest in some rounds: allowed.
    ScenarioSettings(nodes=3, fault=FaultSpec("label-flip", 3, start=10))


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        (lambda: FaultSpec(start=-1), r"^fault_start: expected an integer >= 0, got -1$"),
        (lambda: FaultSpec(start=5, end=5), r"^fault_end: expected end > start"),
        (lambda: FaultSpec(probability=0.0), r"^fault_probability: expected a number > 0.0"),
        (lambda: FaultSpec(count=-2), r"^faulty: expected an integer >= 0, got -2$"),
    ],
)
def test_bad_fault_specs_give_one_line(spec: Any, pattern: str) -> None:
    with pytest.raises(ConfigurationError, match=pattern):
        spec()


def _recording_train(calls: list[bool]) -> Any:
    def train(flipped: bool) -> np.ndarray:
        calls.append(flipped)
        return np.array([3.0, -4.0], dtype=np.float32) * (-1 if flipped else 1)

    return train


@pytest.mark.parametrize(
    ("kind", "faulty_round"),
    [
        ("scale", [30.0, -40.0]),
        ("sign-flip", [-30.0, 40.0]),
        ("free-rider", [0.0, 0.0]),
        ("label-flip", [-3.0, 4.0]),
    ],
)
def test_node_first_gradient_follows_the_recipe_only_in_faulty_rounds(
    kind: str, faulty_round: list[float]
) -> None:
    fault = NodeFault(FaultSpec(kind, 1, 10.0, start=2, end=3), scenario_seed=0, node_index=1)
    calls: list[bool] = []
    honest = node_first_gradient(fault, 1, _recording_train(calls), 2)
    np.testing.assert_array_equal(honest, [3.0, -4.0])
    assert calls == [False]
    calls.clear()
    sent = node_first_gradient(fault, 2, _recording_train(calls), 2)
    np.testing.assert_allclose(sent, faulty_round)
    assert calls == ({"free-rider": [], "label-flip": [True]}.get(kind, [False]))
    assert node_first_gradient(None, 2, _recording_train([]), 2).tolist() == [3.0, -4.0]


def test_a_dirichlet_draw_too_skewed_for_every_node_tops_up_the_short_nodes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Alpha 0.1 over 100 nodes leaves some node short in every draw: the short nodes get
    # random samples of the largest ones (it was refused: "could not give every one of 100
    # nodes 10 samples"), and the split is still a partition of the pool.
    labels = np.random.default_rng(0).integers(0, 10, size=5000)
    with caplog.at_level("WARNING", logger="accord.data.partition"):
        parts = partition(
            labels, 100, PartitionSpec("dirichlet", alpha=0.1), np.random.default_rng(1)
        )
    assert min(len(part) for part in parts) == 10
    joined = np.concatenate(parts)
    assert joined.size == labels.size and np.unique(joined).size == labels.size
    assert "topped up" in caplog.text
    # Still skewed: most nodes hold few of the classes.
    classes_held = [np.unique(labels[part]).size for part in parts]
    assert np.median(classes_held) <= 5
