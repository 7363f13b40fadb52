"""The public training API: named weights, buffers, scoring, TorchNode, run_app."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from accord.errors import ConfigurationError, InputDataError
from accord.fl import (
    FitResult,
    TorchNode,
    TorchServerApp,
    WeightLayout,
    combine_buffers,
    module_weights,
)
from accord.simulation import run_app
from accord.training.evaluation import make_validation_fn
from accord.training.models import FlatModel, ModelSpec, build_model
from accord.training.scoring import ModuleScorer, batches_of_arrays


class SmallBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _data(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 4)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64) + (features[:, 1] > 1).astype(np.int64)
    return features, labels


def _loader(seed: int) -> DataLoader[Any]:
    features, labels = _data(seed)
    dataset = TensorDataset(torch.from_numpy(features), torch.from_numpy(labels))
    return DataLoader(dataset, batch_size=8, shuffle=True)


def test_a_layout_splits_parameters_from_buffers_and_round_trips() -> None:
    torch.manual_seed(0)
    model = SmallBN()
    layout = WeightLayout.of_module(model)
    weights = module_weights(model)
    assert [e.name for e in layout.buffers] == [
        "body.1.running_mean",
        "body.1.running_var",
        "body.1.num_batches_tracked",
    ]
    assert layout.dim == 4 * 6 + 6 + 6 + 6 + 6 * 3 + 3
    flat = layout.flatten(weights)
    joined = layout.join(flat, layout.buffers_of(weights))
    assert list(joined) == list(weights)
    for name, array in weights.items():
        np.testing.assert_array_equal(joined[name], array)
        assert joined[name].dtype == array.dtype


def test_a_layout_check_names_the_array_that_differs() -> None:
    layout = WeightLayout.of_module(SmallBN())
    weights = dict(module_weights(SmallBN()))
    weights["head.bias"] = np.zeros(4, dtype=np.float32)
    with pytest.raises(InputDataError, match=r"head\.bias: expected shape \(3,\), got \(4,\)"):
        layout.check(weights)
    del weights["head.bias"]
    with pytest.raises(InputDataError, match=r"missing \['head\.bias'\]"):
        layout.check(weights)


def test_buffers_combine_by_sample_weighted_mean_and_counters_by_maximum() -> None:
    layout = WeightLayout.of_module(SmallBN())
    first = {
        "body.1.running_mean": np.full(6, 1.0, dtype=np.float32),
        "body.1.running_var": np.full(6, 2.0, dtype=np.float32),
        "body.1.num_batches_tracked": np.array(5, dtype=np.int64),
    }
    second = {
        "body.1.running_mean": np.full(6, 5.0, dtype=np.float32),
        "body.1.running_var": np.full(6, 6.0, dtype=np.float32),
        "body.1.num_batches_tracked": np.array(3, dtype=np.int64),
    }
    combined = combine_buffers([first, second], [1, 3], layout)
    np.testing.assert_allclose(combined["body.1.running_mean"], 4.0)  # (1·1 + 3·5) / 4
    np.testing.assert_allclose(combined["body.1.running_var"], 5.0)  # (1·2 + 3·6) / 4
    assert combined["body.1.num_batches_tracked"] == 5
    assert combined["body.1.num_batches_tracked"].dtype == np.int64
    assert combined["body.1.running_mean"].dtype == np.float32


def test_the_module_scorer_batched_equals_one_candidate_at_a_time_in_eval_mode() -> None:
    torch.manual_seed(1)
    model = SmallBN()
    layout = WeightLayout.of_module(model)
    features, labels = _data(7)
    weights = module_weights(model)
    buffers = layout.buffers_of(weights)
    buffers["body.1.running_mean"] = np.linspace(-1, 1, 6).astype(np.float32)
    rng = np.random.default_rng(0)
    flat = layout.flatten(weights)
    candidates = np.stack([flat + rng.normal(scale=0.1, size=flat.shape) for _ in range(3)])
    candidates = candidates.astype(np.float32)
    scorer = ModuleScorer(SmallBN(), batches_of_arrays(features, labels, batch_size=16))
    scorer.set_buffers(buffers)
    batched = scorer(candidates)
    looped_scorer = ModuleScorer(SmallBN(), batches_of_arrays(features, labels))
    looped_scorer.set_buffers(buffers)
    looped_scorer._vectorised = False
    looped = looped_scorer(candidates)
    np.testing.assert_allclose(batched.losses, looped.losses, rtol=1e-5)
    for k in range(3):  # the oracle: the module itself, in eval mode, with those buffers
        reference = SmallBN()
        reference.load_state_dict(
            {
                n: torch.from_numpy(np.array(a))
                for n, a in layout.join(candidates[k], buffers).items()
            }
        )
        reference.eval()
        with torch.no_grad():
            logits = reference(torch.from_numpy(features))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(labels))
        accuracy = float((logits.argmax(1) == torch.from_numpy(labels)).float().mean())
        assert batched.losses[k] == pytest.approx(float(loss), rel=1e-5)
        assert batched.accuracies[k] == pytest.approx(accuracy)


def test_the_module_scorer_equals_the_built_in_validation_function_on_the_mlp() -> None:
    model = build_model(ModelSpec(), 4, 3, seed=0)
    features, labels = _data(3)
    flat = FlatModel(model).get_flat()
    candidates = np.stack([flat, flat * 0.5]).astype(np.float32)
    built_in = make_validation_fn(FlatModel(model), features, labels)(candidates)
    scored = ModuleScorer(model, batches_of_arrays(features, labels))(candidates)
    np.testing.assert_allclose(scored.losses, built_in.losses, rtol=1e-5)
    np.testing.assert_allclose(scored.accuracies, built_in.accuracies)


def test_torch_node_fit_is_reproducible_and_updates_the_batch_norm_buffers() -> None:
    torch.manual_seed(0)
    weights = module_weights(SmallBN())
    node = TorchNode(SmallBN(), _loader(1), seed=4, validation=_data(2))
    first = node.fit(weights, {"round": 3})
    again = node.fit(weights, {"round": 3})
    other_round = node.fit(weights, {"round": 4})
    assert first.weights is not None and again.weights is not None
    assert other_round.weights is not None
    for name in weights:
        np.testing.assert_array_equal(first.weights[name], again.weights[name])
    assert not np.array_equal(first.weights["head.weight"], other_round.weights["head.weight"])
    assert first.weights["body.1.num_batches_tracked"] == 5  # 40 samples in batches of 8
    assert not np.allclose(first.weights["body.1.running_mean"], 0.0)
    assert first.sample_count == 40
    evaluation = node.evaluate(first.weights, {})
    assert evaluation.sample_count == 40 and 0.0 <= evaluation.accuracy <= 1.0


def test_a_fit_result_needs_exactly_one_of_weights_and_first_gradient() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        FitResult(sample_count=1)


def test_fedavg_over_user_nodes_averages_parameters_and_float_buffers_and_maxes_counters() -> None:
    """One FedAvg round with η_server = 1 gives Σ p_i w_i for every trained array and every
    float buffer, and the maximum of the counters (the documented buffer rule)."""
    features, labels = _data(9)
    app = TorchServerApp(SmallBN, validation=(features, labels), seed=0)
    loaders = {
        "a": _loader(1),
        "b": DataLoader(TensorDataset(*map(torch.from_numpy, _data(2, 24))), batch_size=8),
    }
    nodes = {
        name: TorchNode(SmallBN(), loader, seed=i)
        for i, (name, loader) in enumerate(loaders.items())
    }
    initial = app.initial_weights()
    expected_fits = {name: node.fit(initial, {"round": 0}) for name, node in nodes.items()}
    result = run_app(app, nodes, "fedavg", rounds=1)
    assert len(result.rounds) == 1
    record = result.rounds[0].record
    assert record.probabilities == pytest.approx({"a": 40 / 64, "b": 24 / 64})
    fits = {name: fit.weights for name, fit in expected_fits.items()}
    assert fits["a"] is not None and fits["b"] is not None
    layout = app.layout()
    # The run's final weights: read back through the node-side copy the grid keeps.
    scorer = app.validation()
    assert scorer is not None
    expected = {
        name: (40 * fits["a"][name].astype(np.float64) + 24 * fits["b"][name]) / 64
        for name in initial
        if name != "body.1.num_batches_tracked"
    }
    flat_expected = layout.flatten(
        {**initial, **{k: v.astype(np.float32) for k, v in expected.items()}}
    )
    buffers_expected = {
        "body.1.running_mean": expected["body.1.running_mean"].astype(np.float32),
        "body.1.running_var": expected["body.1.running_var"].astype(np.float32),
        "body.1.num_batches_tracked": np.array(5, dtype=np.int64),  # max(5, 3)
    }
    scorer.set_buffers(buffers_expected)
    scores = scorer(flat_expected[None, :])
    assert record.validation_loss_after == pytest.approx(float(scores.losses[0]), rel=1e-4)


def test_run_app_refuses_a_node_whose_model_differs() -> None:
    class Wider(SmallBN):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(6, 4)

    features, labels = _data(9)
    app = TorchServerApp(SmallBN, validation=(features, labels))
    nodes = {"a": TorchNode(SmallBN(), _loader(1)), "b": TorchNode(Wider(), _loader(2))}
    with pytest.raises(ConfigurationError, match=r"nodes \['b'\] were refused"):
        run_app(app, nodes, "fedavg", rounds=1)


def test_every_public_name_of_the_api_is_on_its_reference_page() -> None:
    from pathlib import Path

    import accord.fl

    page = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    missing = [name for name in accord.fl.__all__ if f"`{name}" not in page]
    assert missing == []


def test_a_run_folder_or_checkpoint_of_an_older_format_is_refused_naming_both_versions(
    tmp_path: Any,
) -> None:
    import json

    from accord.federation.checkpoint import write_checkpoint
    from accord.federation.driver import CHECKPOINT_FORMAT, load_run_checkpoint
    from accord.federation.run_files import RUN_FILE, RUN_FORMAT, read_run_file

    (tmp_path / RUN_FILE).write_text(
        json.dumps({"format": RUN_FORMAT, "version": 1, "run_id": "x", "settings": {}})
    )
    with pytest.raises(InputDataError, match="format version 1; this Accord reads version 2"):
        read_run_file(tmp_path)
    write_checkpoint(tmp_path / "checkpoint.npz", {"format": CHECKPOINT_FORMAT, "version": 1})
    with pytest.raises(InputDataError, match="format version 1; this Accord reads version 2"):
        load_run_checkpoint(tmp_path / "checkpoint.npz")


def test_the_welcome_carries_a_run_both_ways() -> None:
    from accord.federation.grid import RunSpec
    from accord.federation.welcome import spec_from_welcome, welcome_message
    from accord.training.local import LocalTrainingSettings

    layout = WeightLayout.of_module(SmallBN())
    app = RunSpec(
        "run", None, 0, 0, layout.dim, LocalTrainingSettings(), 0.5, False,
        layout=layout, config={"seed": 3, "flippers": ["a"]},
    )  # fmt: skip
    built_in = RunSpec("run", ModelSpec(hidden=(8,)), 4, 3, 67, LocalTrainingSettings(), 1.0, True)
    assert spec_from_welcome(welcome_message(app, "a", 2)) == app
    assert spec_from_welcome(welcome_message(built_in, "a", 0)) == built_in


class WithUnusedHead(SmallBN):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(3, 2)  # trained by nobody: no gradient


def test_first_order_gradients_of_a_model_with_an_unused_parameter_are_zero_there() -> None:
    features, labels = _data(4)
    scorer = ModuleScorer(WithUnusedHead(), batches_of_arrays(features, labels))
    layout = scorer.layout
    flat = layout.flatten(module_weights(WithUnusedHead()))
    gradient = scorer.gradient(flat)
    pieces = layout.unflatten(gradient.gradient)
    assert not pieces["unused.weight"].any() and pieces["head.weight"].any()


def test_a_validation_loader_that_reshuffles_is_held_in_one_order() -> None:
    features, labels = _data(5)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(features), torch.from_numpy(labels)),
        batch_size=8,
        shuffle=True,
    )
    scorer = ModuleScorer(SmallBN(), loader)
    flat = scorer.layout.flatten(module_weights(SmallBN()))[None, :]
    first, second = scorer(flat), scorer(flat)
    assert first.sample_losses is not None and second.sample_losses is not None
    np.testing.assert_array_equal(first.sample_losses, second.sample_losses)


def test_a_user_fit_that_returns_unusable_arrays_fails_the_round_not_the_node() -> None:
    from accord.federation.grid import RunSpec
    from accord.federation.tensors import state_digest
    from accord.federation.worker import NodeWorker
    from accord.training.local import LocalTrainingSettings

    class Broken(TorchNode):
        def fit(self, weights: Any, config: Any) -> FitResult:
            grads = {
                e.name: torch.ones(e.shape, requires_grad=True) for e in self.layout().trainable
            }
            return FitResult(sample_count=1, first_gradient=grads, buffers={})  # type: ignore[arg-type]

    node = Broken(SmallBN(), _loader(1), validation=_data(2))
    layout = node.layout()
    spec = RunSpec("r", None, 0, 0, layout.dim, LocalTrainingSettings(), 1.0, True, layout=layout)
    worker = NodeWorker.of_app("n", lambda _spec: node)
    info = worker.configure(spec)
    assert info.sample_count == 40 and info.validation_sample_count == 40
    weights = module_weights(SmallBN())
    flat, buffers = layout.flatten(weights), layout.buffers_of(weights)
    with pytest.raises(InputDataError, match="fit raised RuntimeError"):
        worker.start_round(0, flat, state_digest(flat, buffers), buffers)


def test_an_app_whose_buffers_cannot_travel_is_refused_before_any_node() -> None:
    from accord.federation.engine import prepare_app_run

    class WithMask(SmallBN):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mask", torch.ones(1600, 1600, dtype=torch.bool))

    features, labels = _data(9)
    with pytest.raises(ConfigurationError, match="MiB of buffers; at most 2 MiB"):
        prepare_app_run(TorchServerApp(WithMask, validation=(features, labels)), "fedavg", "r")


def test_loading_a_user_module_leaves_grpc_logging_as_the_user_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accord.fl.loading import load_factory

    # A module that, like flwr, sets GRPC_VERBOSITY when imported.
    (tmp_path / "loud_app.py").write_text(
        "import os\nos.environ['GRPC_VERBOSITY'] = 'error'\nos.environ['GRPC_TRACE'] = 'all'\n"
        "def factory(config):\n    return config\n",
        encoding="utf-8",
    )
    (tmp_path / "broken_app.py").write_text(
        "import os\nos.environ['GRPC_VERBOSITY'] = 'error'\nraise RuntimeError('boom')\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRPC_VERBOSITY", "INFO")
    monkeypatch.delenv("GRPC_TRACE", raising=False)
    assert load_factory("loud_app:factory")({"a": 1}) == {"a": 1}
    assert os.environ["GRPC_VERBOSITY"] == "INFO"
    assert "GRPC_TRACE" not in os.environ
    with pytest.raises(ConfigurationError, match="raised RuntimeError: boom"):
        load_factory("broken_app:factory")
    assert os.environ["GRPC_VERBOSITY"] == "INFO"
