"""Batched local training (accord.training.batched, accord.simulation.batched): the loop
(LocalTrainer.first_gradient, node by node) is the reference; the stack must give the same
first gradients to float rounding, for uneven sample counts, momentum, several epochs, any
subset of nodes, chunks, faulty nodes and node sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from accord.cli import build_parser
from accord.commands.run_options import config_from_args
from accord.config import SimulateConfig, load_simulate_config, simulate_config_to_toml
from accord.data.faults import FAULT_KINDS, FaultSpec, NodeFault, labels_trained_on
from accord.data.partition import PartitionSpec
from accord.errors import ConfigurationError
from accord.federation.grid import InMemoryGrid
from accord.rounds import RoundSettings
from accord.scenario import ScenarioSettings
from accord.simulation import Simulation, SimulationSettings, StopConditions
from accord.simulation.batched import BATCHED_FROM_NODES, BatchedGrid
from accord.training.batched import NodeBatch, stacking_problem
from accord.training.local import LocalTrainer, LocalTrainingSettings, batch_schedule
from accord.training.models import FlatModel, ModelSpec, build_model

# float32 sums in another order: a few ulps of the step, never more
ATOL = 1e-6


def _trainers(
    sizes: list[int],
    *,
    seed: int = 0,
    settings: LocalTrainingSettings | None = None,
    hidden: tuple[int, ...] = (8, 4),
) -> list[LocalTrainer]:
    rng = np.random.default_rng(seed)
    trainers = []
    for i, n in enumerate(sizes):
        features = rng.standard_normal((n, 5)).astype(np.float32)
        labels = rng.integers(0, 3, n)
        model = build_model(ModelSpec(hidden=hidden), 5, 3, seed)
        trainers.append(
            LocalTrainer(model, features, labels, settings or LocalTrainingSettings(), seed + i)
        )
    return trainers


def _weights(trainer: LocalTrainer, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    return (0.3 * rng.standard_normal(trainer.flat.dim)).astype(np.float32)


@pytest.mark.parametrize(
    ("seed", "sizes", "settings"),
    [
        (0, [16, 16, 16], LocalTrainingSettings()),
        (1, [1, 7, 33, 100, 17], LocalTrainingSettings()),
        (2, [5, 40, 3, 64, 9, 21, 2], LocalTrainingSettings(momentum=0.9, epochs=2)),
        (3, [50], LocalTrainingSettings(batch_size=7, learning_rate=0.05, epochs=3)),
    ],
)
def test_batched_first_gradients_equal_the_loop(
    seed: int, sizes: list[int], settings: LocalTrainingSettings
) -> None:
    trainers = _trainers(sizes, seed=seed, settings=settings)
    weights = _weights(trainers[0], seed)
    batched = NodeBatch(trainers).first_gradients(weights, 4)
    looped = [trainer.first_gradient(weights, 4) for trainer in trainers]
    for got, expected in zip(batched, looped, strict=True):
        assert got.dtype == np.float32
        assert np.abs(expected).max() > 1e-3  # the nodes did train
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_a_subset_in_any_order_and_chunks_give_the_loop_results() -> None:
    trainers = _trainers([3, 30, 12, 16, 45, 8], seed=5)
    weights = _weights(trainers[0], 5)
    members = [trainers[4], trainers[0], trainers[2]]
    # chunks of two nodes: the stack is cut by parameter count
    chunked = NodeBatch(trainers, max_floats=2 * trainers[0].flat.dim)
    assert chunked.nodes_per_chunk == 2
    for batch in (NodeBatch(trainers), chunked):
        got = batch.first_gradients(weights, 7, members)
        for gradient, trainer in zip(got, members, strict=True):
            np.testing.assert_allclose(
                gradient, trainer.first_gradient(weights, 7), rtol=0, atol=ATOL
            )


def test_every_node_follows_its_own_batch_schedule() -> None:
    # the same node with another seed (or round) visits other batches: another gradient
    trainers = _trainers([40, 40], seed=0)
    trainers[1].features, trainers[1].labels = trainers[0].features, trainers[0].labels
    weights = _weights(trainers[0], 0)
    first, second = NodeBatch(trainers).first_gradients(weights, 0)
    assert not np.allclose(first, second)
    orders = [np.concatenate(batch_schedule(40, t.settings, t.seed, 0)) for t in trainers]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(40))
    assert list(orders[0]) != list(orders[1])


def test_a_small_cnn_stacks_like_its_loop() -> None:
    rng = np.random.default_rng(0)

    def cnn() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 3),
        )

    trainers = [
        LocalTrainer(
            cnn(),
            rng.standard_normal((n, 1, 8, 8)).astype(np.float32),
            rng.integers(0, 3, n),
            LocalTrainingSettings(learning_rate=0.1),
            seed=i,
        )
        for i, n in enumerate([20, 9])
    ]
    weights = FlatModel(cnn()).get_flat()
    batched = NodeBatch(trainers).first_gradients(weights, 1)
    for got, trainer in zip(batched, trainers, strict=True):
        np.testing.assert_allclose(got, trainer.first_gradient(weights, 1), rtol=0, atol=ATOL)


def test_models_that_cannot_stack_are_named() -> None:
    base = _trainers([4, 4])
    other_width = _trainers([4], hidden=(9, 4))
    assert stacking_problem(base + other_width) == "the nodes' models differ"
    other_settings = _trainers([4], settings=LocalTrainingSettings(batch_size=8))
    assert stacking_problem(base + other_settings) == "the nodes' local training settings differ"
    norm = LocalTrainer(
        nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3)),
        np.zeros((4, 5), np.float32),
        np.zeros(4, np.int64),
        LocalTrainingSettings(),
        0,
    )
    assert stacking_problem([norm]) == "layer 1 is a BatchNorm1d, which is not stacked"
    with pytest.raises(ConfigurationError, match="batched local training: the nodes' models"):
        NodeBatch(base + other_width)
    with pytest.raises(ConfigurationError, match="not in this batch"):
        NodeBatch(base).first_gradients(_weights(base[0], 0), 0, other_width)


def test_a_provided_result_is_used_once_and_only_for_its_round_and_weights() -> None:
    (trainer,) = _trainers([20])
    weights = _weights(trainer, 0)
    reference = trainer.first_gradient(weights, 2)
    marker = np.full(trainer.flat.dim, 7.0, dtype=np.float32)
    trainer.provide(2, weights, marker)
    np.testing.assert_array_equal(trainer.first_gradient(weights, 2), marker)
    np.testing.assert_array_equal(trainer.first_gradient(weights, 2), reference)  # used once
    trainer.provide(3, weights, marker)  # another round: trains
    assert not np.array_equal(trainer.first_gradient(weights, 2), marker)
    trainer.provide(2, weights + 1, marker)  # other weights: trains
    np.testing.assert_array_equal(trainer.first_gradient(weights, 2), reference)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_labels_trained_on_follow_the_recipe(kind: str) -> None:
    fault = NodeFault(FaultSpec(kind, 1, start=2), scenario_seed=0, node_index=0)
    assert labels_trained_on(None, 0) is False
    assert labels_trained_on(fault, 1) is False  # honest before start
    expected = {"free-rider": None, "label-flip": True}.get(kind, False)
    assert labels_trained_on(fault, 2) is expected


def _simulation(
    node_training: str,
    *,
    nodes: int = 12,
    faults: tuple[FaultSpec, ...] = (),
) -> Simulation:
    settings = SimulationSettings(
        scenario=ScenarioSettings(
            dataset="synthetic",
            nodes=nodes,
            samples=40 * nodes,
            partition=PartitionSpec(kind="iid"),
            fault=FaultSpec("label-flip", 0) if not faults else FaultSpec(),
            faults=faults,
        ),
        model=ModelSpec(hidden=(16, 8)),
        rounds=RoundSettings(nodes_per_round=9),
        stop=StopConditions(max_rounds=3),
        node_training=node_training,
    )
    return Simulation(settings, "hedge-loo")


@pytest.mark.parametrize(
    "faults",
    [
        (FaultSpec("label-flip", 3),),
        (FaultSpec("free-rider", 2), FaultSpec("noise", 2), FaultSpec("label-flip", 1)),
    ],
)
def test_a_batched_simulation_runs_the_loops_rounds(faults: tuple[FaultSpec, ...]) -> None:
    loop, batched = _simulation("loop", faults=faults), _simulation("batched", faults=faults)
    assert isinstance(batched._driver.grid, BatchedGrid)
    assert not isinstance(loop._driver.grid, BatchedGrid)
    # the first round's first gradients, as the engine receives them
    weights = np.array(batched.engine.global_weights)
    targets = batched.engine.roster
    replies = batched._driver.grid.collect_first_gradients(0, weights, targets, 10.0)
    reference = loop.first_gradients(weights, 0)
    assert set(replies.values) == set(reference) and not replies.failures
    for node, gradient in reference.items():
        sent = replies.values[node]
        assert isinstance(sent, np.ndarray)
        np.testing.assert_allclose(sent, gradient, rtol=1e-5, atol=ATOL)
    # whole runs: the same nodes sampled, the same weights to float rounding
    for a, b in zip(
        _simulation("loop", faults=faults).run().rounds,
        _simulation("batched", faults=faults).run().rounds,
        strict=True,
    ):
        assert a.record.present == b.record.present
        assert a.record.probabilities.keys() == b.record.probabilities.keys()
        for node, probability in a.record.probabilities.items():
            assert b.record.probabilities[node] == pytest.approx(probability, abs=1e-4)
        assert a.record.validation_loss_after == pytest.approx(
            b.record.validation_loss_after, abs=1e-4
        )


def test_auto_batches_from_the_threshold_on() -> None:
    assert isinstance(_simulation("auto")._driver.grid, InMemoryGrid)
    assert not isinstance(_simulation("auto")._driver.grid, BatchedGrid)
    many = _simulation("auto", nodes=BATCHED_FROM_NODES)
    assert isinstance(many._driver.grid, BatchedGrid)


def test_node_training_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="node_training: expected one of auto, batched"):
        SimulationSettings(node_training="vmap")


def test_the_option_and_the_config_key_set_node_training(tmp_path: Path) -> None:
    argv = ["simulate", "--node-training", "loop"]
    assert config_from_args(build_parser(argv).parse_args(argv)).simulation.node_training == "loop"
    config_file = tmp_path / "run.toml"
    config_file.write_text('node_training = "batched"\n[scenario]\nnodes = 4\n')
    assert load_simulate_config(config_file).simulation.node_training == "batched"
    argv = ["simulate", "--config", str(config_file), "--node-training", "auto"]
    assert config_from_args(build_parser(argv).parse_args(argv)).simulation.node_training == "auto"
    config_file.write_text('node_training = "gpu"\n')
    with pytest.raises(
        ConfigurationError, match=r'run\.toml: node_training = "gpu": expected one of'
    ):
        load_simulate_config(config_file)
    # written back into a run folder's config.toml, and read again
    settings = SimulationSettings(node_training="batched")
    text = simulate_config_to_toml(SimulateConfig(simulation=settings))
    config_file.write_text(text)
    assert load_simulate_config(config_file).simulation == settings
