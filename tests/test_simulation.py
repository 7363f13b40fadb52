"""The in-process driver: stop conditions, determinism, faulty nodes in a real run."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import pytest

from accord.data.faults import FaultSpec
from accord.rounds import RoundSettings
from accord.scenario import ScenarioSettings
from accord.simulation import Simulation, SimulationSettings, StopConditions, StopTracker


def _settings(stop: StopConditions, fault: FaultSpec | None = None) -> SimulationSettings:
    return SimulationSettings(
        scenario=ScenarioSettings(fault=fault or FaultSpec("label-flip", 0)), stop=stop
    )


def test_max_rounds_stops_the_run() -> None:
    result = Simulation(_settings(StopConditions(max_rounds=3)), "fedavg").run()
    assert len(result.rounds) == 3
    assert result.stop_reason == "3 rounds done"


def test_target_accuracy_stops_early() -> None:
    result = Simulation(
        _settings(StopConditions(max_rounds=50, target_accuracy=0.5)), "fedavg"
    ).run()
    assert len(result.rounds) < 50
    assert result.rounds[-1].record.validation_accuracy_after >= 0.5
    assert all(r.record.validation_accuracy_after < 0.5 for r in result.rounds[:-1])
    assert "target accuracy" in result.stop_reason


def test_patience_fires_without_improvement() -> None:
    tracker = StopTracker(StopConditions(max_rounds=100, patience=2), started_at=0.0)
    assert tracker.update(0.5, 1.0) is None
    assert tracker.update(0.5, 2.0) is None
    assert tracker.update(0.4, 3.0) == "no improvement for 2 rounds"


def test_time_budget_uses_the_clock_passed_in() -> None:
    ticks = itertools.count(start=0.0, step=10.0)
    result = Simulation(
        _settings(StopConditions(max_rounds=100, time_budget_seconds=25.0)), "fedavg"
    ).run(clock=lambda: next(ticks))
    assert len(result.rounds) == 3  # clock reads 0 at start, then 10, 20, 30 after rounds
    assert "time budget" in result.stop_reason


def test_same_seed_same_metrics_and_another_seed_differs() -> None:
    def run(seed: int) -> list[float | None]:
        settings = SimulationSettings(
            scenario=ScenarioSettings(seed=seed), stop=StopConditions(max_rounds=3)
        )
        return [r.record.test_accuracy for r in Simulation(settings, "hedge-loo").run().rounds]

    assert run(0) == run(0)
    assert run(0) != run(1)


@pytest.mark.parametrize("kind", ["noise", "sign-flip", "scale", "free-rider"])
def test_gradient_faults_reach_the_server(kind: str) -> None:
    sim = Simulation(_settings(StopConditions(max_rounds=1), FaultSpec(kind, 2, 3.0)), "fedavg")
    weights = np.array(sim.engine.global_weights)
    sent = sim.first_gradients(weights, 0)
    for node, tabular in zip(sim.data.nodes, sim.nodes, strict=True):
        honest = tabular.trainer.first_gradient(weights, 0)
        if not node.faulty:
            np.testing.assert_array_equal(sent[node.node_id], honest)
        elif kind == "free-rider":
            assert not sent[node.node_id].any()
        elif kind == "scale":
            np.testing.assert_allclose(sent[node.node_id], 3.0 * honest, rtol=1e-5)
        elif kind == "sign-flip":
            np.testing.assert_allclose(sent[node.node_id], -3.0 * honest, rtol=1e-5)
        else:
            assert np.linalg.norm(sent[node.node_id]) == pytest.approx(
                np.linalg.norm(honest), rel=1e-4
            )
            assert not np.allclose(sent[node.node_id], honest)


def test_fedavg_learns_digits() -> None:
    result = Simulation(_settings(StopConditions(max_rounds=15)), "fedavg").run()
    assert result.rounds[-1].record.test_accuracy > 0.8


def test_nodes_per_round_samples_the_same_nodes_for_the_same_seed_and_weighs_only_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def run(seed: int) -> list[Any]:
        settings = SimulationSettings(
            scenario=ScenarioSettings(seed=seed),
            rounds=RoundSettings(nodes_per_round=4),
            stop=StopConditions(max_rounds=6),
        )
        return [t.record for t in Simulation(settings, "fedavg").run().rounds]

    with caplog.at_level(logging.WARNING):
        records = run(0)
    # A node left out of a round holds no copy of w_t: no second gradient is sent to it,
    # and nothing warns.
    assert [r.getMessage() for r in caplog.records] == []
    assert [len(r.present) for r in records] == [4] * 6
    assert len({r.present for r in records}) > 1  # another sample each round
    assert all(r.dropped == {} for r in records)  # not asked is not a failure
    assert [r.present for r in run(0)] == [r.present for r in records]
    assert [r.present for r in run(1)] != [r.present for r in records]
    data = Simulation(SimulationSettings(), "fedavg").data
    counts = {node.node_id: node.sample_count for node in data.nodes}
    first = records[0]
    total = sum(counts[n] for n in first.present)
    for node, probability in first.probabilities.items():
        expected = counts[node] / total if node in first.present else 0.0
        assert probability == pytest.approx(expected)
