"""A node's local training: from ``w_t`` to ``w_i`` and the first gradient ``w_t − w_i``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from accord._validation import require_int, require_number
from accord.errors import InputDataError
from accord.training.models import FlatModel
from accord.types import FloatArray

__all__ = [
    "LocalTrainer",
    "LocalTrainingSettings",
    "batch_schedule",
    "root_update",
    "sgd_step",
]


@dataclass(frozen=True)
class LocalTrainingSettings:
    """SGD on a node's own samples.

    ``learning_rate`` η_local (default 0.2), ``epochs`` per round (default 1),
    ``batch_size`` (default 16), ``momentum`` (default 0.0, reset every round).
    """

    learning_rate: float = 0.2
    epochs: int = 1
    batch_size: int = 16
    momentum: float = 0.0

    def __post_init__(self) -> None:
        require_number(
            "local_learning_rate", self.learning_rate, minimum=0.0, exclusive_minimum=True
        )
        require_int("local_epochs", self.epochs, minimum=1)
        require_int("batch_size", self.batch_size, minimum=1)
        require_number("momentum", self.momentum, minimum=0.0, maximum=0.999)


def batch_schedule(
    sample_count: int, settings: LocalTrainingSettings, seed: int, round_index: int
) -> list[npt.NDArray[np.int64]]:
    """The row indices of every SGD step of one node's local training in round
    ``round_index``, in order: each epoch a fresh permutation from
    ``default_rng([seed, round_index])``, cut into batches of ``settings.batch_size`` (the
    last one smaller). The loop and the batched form of local training both follow it."""
    rng = np.random.default_rng([seed, round_index])
    size = settings.batch_size
    steps: list[npt.NDArray[np.int64]] = []
    for _ in range(settings.epochs):
        order = rng.permutation(sample_count)
        steps.extend(order[start : start + size] for start in range(0, sample_count, size))
    return steps


def sgd_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    buffers: list[torch.Tensor] | None,
    settings: LocalTrainingSettings,
) -> list[torch.Tensor] | None:
    """One SGD step in place (no dampening, no Nesterov), written out: torch.optim's first
    step imports torch._dynamo, 1.2 s and 80 MB in every node process. Returns the momentum
    buffers (``None`` without momentum); the first step starts them at the gradients. The
    tensors may hold one node's parameters or a stack of several nodes' (elementwise)."""
    with torch.no_grad():
        if settings.momentum:
            if buffers is None:
                buffers = [torch.clone(g).detach() for g in grads]
            else:
                torch._foreach_mul_(buffers, settings.momentum)
                torch._foreach_add_(buffers, grads)
            grads = buffers
        torch._foreach_add_(params, grads, alpha=-settings.learning_rate)
    return buffers


class LocalTrainer:
    """Holds one node's data and model copy between rounds."""

    def __init__(
        self,
        model: nn.Module,
        features: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        settings: LocalTrainingSettings,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if features.shape[0] == 0:
            raise InputDataError("a node needs at least one training sample")
        if features.shape[0] != labels.shape[0]:
            raise InputDataError(
                f"features and labels differ in length: {features.shape[0]} != {labels.shape[0]}"
            )
        self.device = torch.device(device)
        self.flat = FlatModel(model.to(self.device))
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(
            self.device
        )
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).to(self.device)
        self.settings = settings
        self.seed = seed
        self.loss_fn = nn.CrossEntropyLoss()
        self._provided: tuple[int, FloatArray, FloatArray] | None = None

    @property
    def sample_count(self) -> int:
        return int(self.labels.shape[0])

    def first_gradient(self, global_weights: FloatArray, round_index: int) -> FloatArray:
        """Train from ``global_weights`` and return ``w_t − w_i`` (float32).

        A result that :class:`accord.training.batched.NodeBatch` computed for this trainer,
        this round and these weights (:meth:`provide`) is returned instead, once."""
        provided, self._provided = self._provided, None
        if provided is not None:
            provided_round, provided_weights, gradient = provided
            if provided_round == round_index and np.array_equal(provided_weights, global_weights):
                return gradient
        self.flat.set_flat(global_weights)
        params: list[torch.Tensor] = list(self.flat.module.parameters())
        buffers: list[torch.Tensor] | None = None  # momentum, reset every round
        for index in batch_schedule(self.sample_count, self.settings, self.seed, round_index):
            batch = torch.from_numpy(index).to(self.device)
            for parameter in params:
                parameter.grad = None
            loss = self.loss_fn(self.flat.module(self.features[batch]), self.labels[batch])
            loss.backward()
            grads: list[torch.Tensor] = []
            for parameter in params:
                assert parameter.grad is not None  # every parameter is used
                grads.append(parameter.grad)
            buffers = sgd_step(params, grads, buffers, self.settings)
        return np.asarray(global_weights - self.flat.get_flat(), dtype=np.float32)

    def provide(self, round_index: int, global_weights: FloatArray, gradient: FloatArray) -> None:
        """Hold ``gradient``, computed for this trainer from ``global_weights`` in round
        ``round_index`` by the vectorised form of :meth:`first_gradient`, for the next call
        of :meth:`first_gradient` (which checks the round and the weights)."""
        self._provided = (round_index, global_weights, gradient)

    def apply_second_gradient(
        self, global_weights: FloatArray, second_gradient: FloatArray, server_learning_rate: float
    ) -> FloatArray:
        """``w_{t+1} = w_t − η_server · G``, kept as this node's copy."""
        updated = (global_weights - np.float32(server_learning_rate) * second_gradient).astype(
            np.float32
        )
        self.flat.set_flat(updated)
        return updated

    def evaluate(self) -> tuple[float, float]:
        """Loss and accuracy of the node's current weights on its own samples."""
        with torch.no_grad():
            logits = self.flat.module(self.features)
            loss = float(self.loss_fn(logits, self.labels))
            accuracy = float((logits.argmax(dim=1) == self.labels).float().mean())
        return loss, accuracy


def root_update(
    model: nn.Module,
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    settings: LocalTrainingSettings,
    seed: int,
    samples: int,
) -> Callable[[FloatArray, int], FloatArray]:
    """The server's own update for FLTrust: the nodes' local procedure on the first
    ``samples`` rows of the server's (shuffled, stratified) validation split. The simulation
    and the networked server build it alike, so both give the same run."""
    root = slice(0, samples)
    return LocalTrainer(model, features[root], labels[root], settings, seed).first_gradient
