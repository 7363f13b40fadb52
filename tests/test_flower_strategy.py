"""accord.flower's strategy driven in this process, message by message (no Ray, no sockets).

Flower messages are built as Flower builds them; the nodes' replies come from small torch
models trained here. Oracles: FedAvg's weighted mean of the trained weights (computed by
hand from the replies), the weighted mean of float buffers and the maximum of integer ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from flwr.app import (
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from accord.aggregation.registry import POLICIES
from accord.errors import ConfigurationError, PeerError, ProtocolError
from accord.flower import (
    AccordStrategy,
    HeldOutData,
    ScenarioClientSettings,
    StrategySettings,
    arrays_to_weights,
    weights_to_arrays,
)
from accord.training.weights import WeightLayout as Layout
from accord.training.weights import combine_buffers


class FakeGrid:
    """The part of Flower's ``Grid`` a strategy's ``configure_*`` uses."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def bn_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """Flower stamps messages with the run's identity; give them one outside a run."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def train_node(message: Message, seed: int, batches: int) -> tuple[dict[str, Any], int]:
    """A node's local training: ``batches`` SGD steps on its own random data (BatchNorm in
    train mode, so its running statistics and counter move)."""
    model = bn_model()
    state = {
        k: torch.from_numpy(v.copy())
        for k, v in arrays_to_weights(message.content.array_records["arrays"]).items()
    }
    model.load_state_dict(state)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    count = 0
    for _ in range(batches):
        x = torch.randn(8, 4, generator=generator) * (1 + seed)
        y = torch.randint(0, 3, (8,), generator=generator)
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
        count += 8
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, count


def reply(message: Message, weights: dict[str, Any], count: int, **metrics: int) -> Message:
    TaskIdentity.node_id = message.metadata.dst_node_id
    content = RecordDict(
        {
            "arrays": weights_to_arrays(weights),
            "metrics": MetricRecord({"num-examples": count, **metrics}),
        }
    )
    return Message(content=content, reply_to=message)


def test_fedavg_round_equals_the_weighted_mean_and_combines_buffers() -> None:
    strategy = AccordStrategy(bn_model, StrategySettings(policy="fedavg", min_nodes=3))
    grid = FakeGrid([30, 10, 20])
    w0 = strategy.initial_arrays()

    messages = list(strategy.configure_train(1, w0, ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [10, 20, 30]
    assert all(m.content.config_records["config"]["server-round"] == 1 for m in messages)
    trained = {
        m.metadata.dst_node_id: train_node(m, m.metadata.dst_node_id, m.metadata.dst_node_id // 10)
        for m in messages
    }
    replies = [reply(m, *trained[m.metadata.dst_node_id]) for m in messages]
    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is not None and metrics is not None
    got = arrays_to_weights(arrays)
    counts = {node: float(count) for node, (_, count) in trained.items()}
    total = sum(counts.values())
    for name, value in got.items():
        stacked = [trained[node][0][name] for node in sorted(trained)]
        if name.endswith("num_batches_tracked"):
            assert value == max(stacked)  # 3 batches: the node with the most
            assert value.dtype == np.int64
        else:
            mean = sum(counts[node] / total * trained[node][0][name] for node in sorted(trained))
            np.testing.assert_allclose(value, mean, rtol=1e-5, atol=1e-6)
    assert metrics["present-nodes"] == 3
    probabilities = {k: v for k, v in metrics.items() if k.startswith("probability/")}
    np.testing.assert_allclose(
        sorted(probabilities.values()), sorted(c / total for c in counts.values())
    )
    # The validation copy of the model is not the user's module: nothing was mutated.
    assert len(strategy.records) == 1


def test_bad_replies_are_left_out_and_the_roster_is_fixed_by_round_one() -> None:
    strategy = AccordStrategy(bn_model, StrategySettings(policy="fedavg", min_nodes=3))
    grid = FakeGrid([1, 2, 3])
    arrays = strategy.initial_arrays()
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    replies = [
        reply(m, *train_node(m, i, 1), **{"partition-id": i}) for i, m in enumerate(messages)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert tuple(strategy.node_ids) == ("node-00", "node-01", "node-02")

    grid.node_ids = [1, 2, 3, 4]  # a newcomer is not trained
    messages = list(strategy.configure_train(2, arrays, ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3]
    by_node = {m.metadata.dst_node_id: m for m in messages}
    good, _ = train_node(by_node[1], 1, 1)
    bad = dict(good)
    bad["0.weight"] = np.full_like(good["0.weight"], np.nan)
    TaskIdentity.node_id = 3
    replies = [
        reply(by_node[1], good, 8),
        reply(by_node[2], bad, 8),
        Message(Error(code=0, reason="node crashed"), reply_to=by_node[3]),
    ]
    new_arrays, metrics = strategy.aggregate_train(2, replies)

    assert new_arrays is not None and metrics is not None
    record = strategy.records[-1]
    assert record.present == ("node-00",)
    assert "NaN or Inf" in record.dropped["node-01"]
    assert "node crashed" in record.dropped["node-02"]
    assert record.probabilities == {"node-00": 1.0, "node-01": 0.0, "node-02": 0.0}
    got = arrays_to_weights(new_arrays)
    for name, value in good.items():  # the only node used: its weights are the new ones
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_configure_train_refuses_arrays_it_did_not_return() -> None:
    strategy = AccordStrategy(bn_model, StrategySettings(policy="fedavg", min_nodes=1))
    grid = FakeGrid([7])
    w0 = strategy.initial_arrays()
    (message,) = strategy.configure_train(1, w0, ConfigRecord(), grid)
    strategy.aggregate_train(1, [reply(message, *train_node(message, 1, 1))])
    with pytest.raises(ProtocolError, match="arrays of round 2: expected the weights"):
        strategy.configure_train(2, w0, ConfigRecord(), grid)
    wrong = arrays_to_weights(w0)
    del wrong["3.bias"]
    with pytest.raises(ConfigurationError, match=r"missing \['3.bias'\]"):
        strategy.configure_train(2, weights_to_arrays(wrong), ConfigRecord(), grid)


def test_the_first_round_waits_for_min_nodes_with_a_deadline() -> None:
    now = [0.0]
    strategy = AccordStrategy(
        bn_model,
        StrategySettings(policy="fedavg", min_nodes=3, node_wait_seconds=5.0),
        clock=lambda: now[0],
        sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
    )
    with pytest.raises(PeerError, match="min_nodes: expected 3 connected nodes within 5 s, got 2"):
        strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), FakeGrid([1, 2]))


def test_settings_and_policies_are_checked_early() -> None:
    with pytest.raises(ConfigurationError, match=r"policy: expected one of .*got 'fedsgd'"):
        StrategySettings(policy="fedsgd")
    with pytest.raises(ConfigurationError, match="min_nodes"):
        StrategySettings(min_nodes=0)
    with pytest.raises(ConfigurationError, match="validation: policy 'actor-critic' scores"):
        AccordStrategy(bn_model, StrategySettings(policy="actor-critic"))
    with pytest.raises(ConfigurationError, match=r"model: expected a torch\.nn\.Module"):
        AccordStrategy(lambda: "not a model", StrategySettings(policy="fedavg"))  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match=r"held-out labels: expected shape \(3,\)"):
        HeldOutData(np.zeros((3, 4), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ConfigurationError, match="run config: expected a number"):
        ScenarioClientSettings.from_run_config({"nodes": "ten"})


def test_layout_flattens_parameters_in_validation_order_and_combines_buffers() -> None:
    model = bn_model()
    layout = Layout.of_module(model)
    assert [e.name for e in layout.buffers] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    flat = layout.flatten(weights)
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    np.testing.assert_array_equal(flat, expected)
    joined = layout.join(flat, layout.buffers_of(weights))
    assert all(np.array_equal(joined[k], weights[k]) for k in weights)

    a = {
        "1.running_mean": np.ones(6, np.float32),
        "1.running_var": np.ones(6, np.float32),
        "1.num_batches_tracked": np.array(4),
    }
    b = {
        "1.running_mean": np.full(6, 4.0, np.float32),
        "1.running_var": np.zeros(6, np.float32),
        "1.num_batches_tracked": np.array(9),
    }
    combined = combine_buffers([a, b], [1.0, 3.0], layout)
    np.testing.assert_allclose(combined["1.running_mean"], 3.25)  # (1·1 + 3·4) / 4
    np.testing.assert_allclose(combined["1.running_var"], 0.25)
    assert combined["1.num_batches_tracked"] == 9


def test_actor_critic_with_validation_runs_rounds_and_reports_metrics() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=40)
    strategy = AccordStrategy(
        bn_model,
        StrategySettings(policy="hedge-loo", min_nodes=3),
        validation=HeldOutData(features, labels),
        test=HeldOutData(features, labels),
    )
    grid = FakeGrid([1, 2, 3])
    arrays = strategy.initial_arrays()
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        replies = [reply(m, *train_node(m, m.metadata.dst_node_id, 2)) for m in messages]
        new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        assert new_arrays is not None and metrics is not None
        arrays = new_arrays
        assert 0.0 <= float(metrics["validation-accuracy"]) <= 1.0
        assert "test-loss" in metrics
    assert [r.round_index for r in strategy.records] == [0, 1]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_accord_policy_runs_through_the_strategy(policy: str) -> None:
    rng = np.random.default_rng(1)
    held_out = HeldOutData(rng.normal(size=(30, 4)).astype(np.float32), rng.integers(0, 3, 30))
    strategy = AccordStrategy(
        bn_model, StrategySettings(policy=policy, min_nodes=4), validation=held_out
    )
    grid = FakeGrid([1, 2, 3, 4])
    arrays = strategy.initial_arrays()
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        replies = [reply(m, *train_node(m, m.metadata.dst_node_id, 1)) for m in messages]
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        assert new_arrays is not None
        arrays = new_arrays
    assert strategy.policy.name == policy
    for record in strategy.records:
        assert sum(record.probabilities.values()) == pytest.approx(1.0)
        assert record.validation_loss_after is not None


def test_only_accord_flower_imports_flwr() -> None:
    """Flower is an optional extra: no module outside ``accord.flower`` may import it."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "src" / "accord"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.is_relative_to(package / "flower"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name == "flwr" or name.startswith(("flwr.", "accord.flower")) for name in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []
