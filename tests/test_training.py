"""Local training against torch's own SGD, and batched validation against a plain loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from accord.training import (
    FlatModel,
    LocalTrainer,
    LocalTrainingSettings,
    ModelSpec,
    build_model,
    make_validation_fn,
)


def _data(n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int64)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_first_gradient_equals_torch_sgd(momentum: float) -> None:
    features, labels = _data()
    settings = LocalTrainingSettings(learning_rate=0.1, epochs=2, batch_size=8, momentum=momentum)
    trainer = LocalTrainer(build_model(ModelSpec(), 6, 3, 1), features, labels, settings, seed=3)
    start = trainer.flat.get_flat()
    ours = trainer.first_gradient(start, round_index=4)

    oracle = FlatModel(build_model(ModelSpec(), 6, 3, 1))
    oracle.set_flat(start)
    optimizer = torch.optim.SGD(oracle.module.parameters(), lr=0.1, momentum=momentum)
    rng = np.random.default_rng([3, 4])
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(2):
        order = torch.from_numpy(rng.permutation(50))
        for s in range(0, 50, 8):
            index = order[s : s + 8]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(oracle.module(x[index]), y[index]).backward()
            optimizer.step()
    np.testing.assert_allclose(ours, start - oracle.get_flat(), rtol=1e-5, atol=1e-7)


def test_first_gradient_leaves_the_global_weights_untouched() -> None:
    features, labels = _data()
    trainer = LocalTrainer(
        build_model(ModelSpec(), 6, 3, 0), features, labels, LocalTrainingSettings(), seed=0
    )
    weights = trainer.flat.get_flat()
    copy = weights.copy()
    gradient = trainer.first_gradient(weights, 0)
    np.testing.assert_array_equal(weights, copy)
    assert np.linalg.norm(gradient) > 0


@pytest.mark.parametrize("kind", ["mlp", "logistic"])
def test_batched_validation_equals_one_model_at_a_time(kind: str) -> None:
    features, labels = _data()
    flat = FlatModel(build_model(ModelSpec(kind=kind), 6, 3, 0))
    rng = np.random.default_rng(1)
    stack = rng.standard_normal((5, flat.dim)).astype(np.float32)
    scores = make_validation_fn(flat, features, labels, chunk=2)(stack)
    for i in range(5):
        flat.set_flat(stack[i])
        with torch.no_grad():
            logits = flat.module(torch.from_numpy(features))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).item()
        accuracy = (logits.argmax(1).numpy() == labels).mean()
        assert scores.losses[i] == pytest.approx(loss, rel=1e-5)
        assert scores.accuracies[i] == pytest.approx(accuracy)


def test_adam_matches_torch_adam_step_for_step() -> None:
    from accord.optim import Adam

    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    oracle_model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    )
    oracle_model.load_state_dict(ours_model.state_dict())
    ours = Adam(ours_model.parameters(), lr=0.01)
    oracle = torch.optim.Adam(oracle_model.parameters(), lr=0.01, foreach=True)
    x = torch.randn(16, 4)
    for _ in range(20):
        for model, optimizer in ((ours_model, ours), (oracle_model, oracle)):
            optimizer.zero_grad()
            (model(x) ** 2).mean().backward()
            optimizer.step()
    for a, b in zip(ours_model.parameters(), oracle_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    restored = Adam(oracle_model.parameters(), lr=0.01)
    restored.load_state_dict(ours.state_dict())
    assert restored.step_count == 20


def test_a_device_this_machine_lacks_is_refused_with_one_line() -> None:
    import torch

    from accord.errors import ConfigurationError
    from accord.training.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigurationError, match=r"--device: expected cpu \(default\) or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="this machine has no CUDA device"):
            resolve_device("cuda:0")


def test_accord_simulate_refuses_a_missing_device_before_any_work(tmp_path: Path) -> None:
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "accord.cli",
            "simulate",
            "--device",
            "cuda",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2
    assert (
        completed.stderr.strip()
        .splitlines()[-1]
        .startswith("accord simulate: error: --device cuda: this machine has no CUDA device")
    )
    assert not (tmp_path / "run").exists()
