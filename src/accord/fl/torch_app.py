"""The node and server contracts around any PyTorch ``nn.Module`` and ``DataLoader``.

:class:`TorchNode` trains a copy of the global model on the node's batches with plain SGD
(optionally with momentum) and returns its trained weights, buffers included;
:class:`TorchServerApp` builds the initial model from a factory and scores candidate
weights on the server's validation and test batches (vectorised with ``torch.func.vmap``
where the model allows). Randomness in ``fit`` (the loader's shuffle, dropout) is drawn
from a generator seeded with ``(seed, round)``, so a run is reproducible and the same in
process and over the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from accord._validation import require_int, require_number
from accord.errors import ConfigurationError, InputDataError
from accord.fl.contracts import ROUND, EvalResult, FitResult, Scorer
from accord.training.scoring import (
    Batches,
    ModuleScorer,
    PerSampleLoss,
    batches_of_arrays,
    cross_entropy,
)
from accord.training.weights import (
    WeightLayout,
    Weights,
    load_module_weights,
    module_weights,
)

__all__ = ["HeldOut", "TorchNode", "TorchServerApp"]

#: Held-out data for scoring: a re-iterable of ``(inputs, targets)`` batches (a
#: ``DataLoader``) or a ``(features, labels)`` pair of numpy arrays.
HeldOut = Batches | tuple[npt.NDArray[Any], npt.NDArray[Any]]


def _batches(data: HeldOut) -> Batches:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        return batches_of_arrays(data[0], data[1])
    return data


def _round_seed(seed: int, round_index: int) -> int:
    """A torch seed of its own for each (node seed, round)."""
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1, np.uint32)[0])


def _count(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    dataset = getattr(batches, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(int(targets.shape[0]) for _, targets in batches)


class TorchNode:
    """A node around a PyTorch model and its training batches.

    ``model``: the node's copy of the model (its initial weights are replaced by the global
    weights every round); ``train``: a re-iterable of ``(inputs, targets)`` batches, e.g. a
    ``DataLoader``, or a ``(features, labels)`` pair of arrays held in memory, then shuffled
    into batches of ``batch_size`` each epoch (the faster path: no collation);
    ``validation``: optional batches for :meth:`evaluate`. Local training
    is ``epochs`` passes of SGD with ``learning_rate`` and ``momentum`` (reset every round)
    on the mean of ``loss`` (per-sample cross-entropy by default), on ``device``."""

    def __init__(
        self,
        model: nn.Module,
        train: HeldOut,
        *,
        validation: HeldOut | None = None,
        batch_size: int = 32,
        learning_rate: float = 0.05,
        epochs: int = 1,
        momentum: float = 0.0,
        loss: PerSampleLoss = cross_entropy,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        require_number("learning_rate", learning_rate, minimum=0.0, exclusive_minimum=True)
        require_int("epochs", epochs, minimum=1)
        require_number("momentum", momentum, minimum=0.0, maximum=0.999)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        require_int("batch_size", batch_size, minimum=1)
        self.batch_size = batch_size
        self._arrays: tuple[torch.Tensor, torch.Tensor] | None = None
        if isinstance(train, tuple):
            features, labels = train
            if len(features) != len(labels):
                raise InputDataError(
                    f"train: features and labels differ in length: {len(features)} != {len(labels)}"
                )
            self._arrays = (torch.as_tensor(features), torch.as_tensor(labels))
            train = [self._arrays]
        self.train_batches = train
        self.validation_batches = None if validation is None else _batches(validation)
        self.learning_rate, self.epochs, self.momentum = learning_rate, epochs, momentum
        self.loss = loss
        self.seed = seed
        self._layout = WeightLayout.of_module(model)
        self._sample_count = _count(self.train_batches)
        if self._sample_count < 1:
            raise InputDataError("a node needs at least one training sample")

    @property
    def sample_count(self) -> int:
        return self._sample_count

    @property
    def validation_sample_count(self) -> int:
        """Samples :meth:`evaluate` scores (0 without validation data): what a run with
        federated evaluation admits the node by."""
        return 0 if self.validation_batches is None else _count(self.validation_batches)

    def layout(self) -> WeightLayout:
        return self._layout

    def fit(self, weights: Weights, config: Mapping[str, Any]) -> FitResult:
        started = time.perf_counter()
        load_module_weights(self.model, weights)
        self.model.train()
        params: list[torch.Tensor] = [p for p in self.model.parameters() if p.requires_grad]
        velocity: list[torch.Tensor] | None = None
        total = torch.zeros((), device=self.device)
        batches = 0
        round_index = int(config.get(ROUND, 0))
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also queues CUDA seeding, which
            # records a stack trace per call (5 ms here).
            torch.default_generator.manual_seed(_round_seed(self.seed, round_index))
            for _ in range(self.epochs):
                for inputs, targets in self._epoch():
                    for parameter in params:
                        parameter.grad = None
                    outputs = self.model(inputs.to(self.device))
                    loss = self._mean_loss(outputs, targets.to(self.device))
                    loss.backward()  # type: ignore[no-untyped-call]
                    with torch.no_grad():
                        grads = [
                            p.grad if p.grad is not None else torch.zeros_like(p) for p in params
                        ]
                        if self.momentum:
                            if velocity is None:
                                velocity = [g.detach().clone() for g in grads]
                            else:
                                torch._foreach_mul_(velocity, self.momentum)
                                torch._foreach_add_(velocity, grads)
                            grads = velocity
                        torch._foreach_add_(params, grads, alpha=-self.learning_rate)
                    total += loss.detach()  # summed on the device: no sync per batch
                    batches += 1
        return FitResult(
            sample_count=self._sample_count,
            weights=module_weights(self.model),
            metrics={
                "train_loss": float(total) / max(batches, 1),
                "train_seconds": time.perf_counter() - started,
            },
        )

    def _mean_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss is cross_entropy:  # the fused mean, as nn.CrossEntropyLoss computes it
            return nn.functional.cross_entropy(outputs, targets)
        return self.loss(outputs, targets).mean()

    def _epoch(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if self._arrays is None:
            return self.train_batches
        features, labels = self._arrays
        order = torch.randperm(len(labels))
        return ((features[index], labels[index]) for index in torch.split(order, self.batch_size))

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult:
        if self.validation_batches is None:
            raise ConfigurationError("this node has no validation data (TorchNode validation=)")
        load_module_weights(self.model, weights)
        self.model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for inputs, raw_targets in self.validation_batches:
                targets = raw_targets.to(self.device)
                outputs = self.model(inputs.to(self.device))
                loss_sum += float(self.loss(outputs, targets).sum())
                correct += int((outputs.argmax(dim=-1) == targets).sum())
                count += int(targets.shape[0])
        if count == 0:
            raise InputDataError("this node's validation data has no samples")
        return EvalResult(loss=loss_sum / count, accuracy=correct / count, sample_count=count)


class TorchServerApp:
    """The server's side around a model factory.

    ``model_factory()`` builds the model (called under ``torch.manual_seed(seed)``, so the
    initial weights are the same every time); ``validation`` and ``test`` are held-out
    batches or ``(features, labels)`` arrays; ``loss`` gives per-sample losses."""

    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        *,
        validation: HeldOut | None = None,
        test: HeldOut | None = None,
        loss: PerSampleLoss = cross_entropy,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.model_factory = model_factory
        self.validation_data = validation
        self.test_data = test
        self.loss = loss
        self.device = device
        self.seed = seed
        self._model = self._build()
        self._layout = WeightLayout.of_module(self._model)

    def _build(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self.model_factory()
        if not isinstance(model, nn.Module):
            raise ConfigurationError(
                f"model_factory: expected an nn.Module, got {type(model).__name__}"
            )
        return model

    def layout(self) -> WeightLayout:
        return self._layout

    def initial_weights(self) -> Weights:
        return module_weights(self._model)

    def _scorer(self, data: HeldOut | None) -> Scorer | None:
        if data is None:
            return None
        return ModuleScorer(
            self._build(), _batches(data), layout=self._layout, loss=self.loss, device=self.device
        )

    def validation(self) -> Scorer | None:
        return self._scorer(self.validation_data)

    def test(self) -> Scorer | None:
        return self._scorer(self.test_data)
