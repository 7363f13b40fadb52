"""Scoring candidate weights of any ``nn.Module`` on a held-out set.

:class:`ModuleScorer` is the :data:`~accord.aggregation.base.ValidationFn` of a user's
model: it scores a (K, dim) stack of flat trainable vectors (see
:class:`~accord.training.weights.WeightLayout`) with the round's buffers, batch by batch
over the held-out data. Where the model allows it the K candidates go through one batched
forward pass (``torch.func.vmap``); a model that ``vmap`` cannot batch (data-dependent
control flow, in-place ops on inputs, ...) is scored candidate by candidate, with the same
results. The module is scored in ``eval()`` mode, so BatchNorm uses the buffers given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.func import functional_call, vmap

from accord.errors import InputDataError
from accord.training.weights import WeightLayout, Weights
from accord.types import FloatArray, ValidationGradient, ValidationScores

__all__ = ["Batches", "ModuleScorer", "PerSampleLoss", "batches_of_arrays", "cross_entropy"]

logger = logging.getLogger(__name__)

#: A re-iterable source of ``(inputs, targets)`` batches, e.g. a ``DataLoader``.
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

#: ``(outputs, targets) -> per-sample losses`` (shape ``(n,)``).
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of class logits."""
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def batches_of_arrays(
    features: npt.NDArray[Any], labels: npt.NDArray[Any], batch_size: int = 4096
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Numpy features and labels as a list of tensor batches (kept in memory)."""
    if features.shape[0] != labels.shape[0]:
        raise InputDataError(
            f"features and labels differ in length: {features.shape[0]} != {labels.shape[0]}"
        )
    inputs = torch.from_numpy(np.ascontiguousarray(features))
    targets = torch.from_numpy(np.ascontiguousarray(labels))
    return [
        (inputs[start : start + batch_size], targets[start : start + batch_size])
        for start in range(0, inputs.shape[0], batch_size)
    ]


class ModuleScorer:
    """Scores flat trainable vectors of ``module`` on ``batches``.

    ``loss`` gives per-sample losses (cross-entropy by default); accuracy is the share of
    samples whose ``argmax`` output equals the target. Call :meth:`set_buffers` when the
    round's buffers change (the federated drivers do it before every round); a model
    without buffers needs none."""

    def __init__(
        self,
        module: nn.Module,
        batches: Batches,
        *,
        layout: WeightLayout | None = None,
        loss: PerSampleLoss = cross_entropy,
        device: torch.device | str = "cpu",
        chunk: int = 64,
    ) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.layout = layout or WeightLayout.of_module(module)
        # Held once, in one order: the policies compare candidates sample by sample, which a
        # loader that reshuffles between passes would silently pair wrongly.
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = [
            (inputs, targets) for inputs, targets in batches
        ]
        self.loss = loss
        self.chunk = chunk
        self._sizes = [entry.size for entry in self.layout.trainable]
        self._buffers: dict[str, torch.Tensor] = {
            name: tensor.detach().clone().to(self.device) for name, tensor in module.named_buffers()
        }
        self._vectorised = True

    def set_buffers(self, buffers: Weights) -> None:
        self.layout.check(buffers, "buffers", buffers_only=True)
        self._buffers = {
            name: torch.from_numpy(np.array(array, order="C")).to(self.device)
            for name, array in buffers.items()
        }

    def _unflatten(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(stacked, self._sizes, dim=1)
        return {
            entry.name: piece.reshape(stacked.shape[0], *entry.shape).to(
                getattr(torch, entry.dtype)
            )
            for entry, piece in zip(self.layout.trainable, pieces, strict=True)
        }

    def _outputs(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        buffers = self._buffers

        def forward(one: dict[str, torch.Tensor]) -> torch.Tensor:
            result: torch.Tensor = functional_call(self.module, (one, buffers), (inputs,))
            return result

        count = next(iter(params.values())).shape[0]
        if self._vectorised:
            try:
                return vmap(forward)(params)
            except Exception as error:  # any failure of vmap: loop instead, same results
                logger.info(
                    "scoring %s candidate by candidate: torch.func.vmap cannot batch it (%s)",
                    type(self.module).__name__,
                    error,
                )
                self._vectorised = False
        return torch.stack(
            [forward({name: value[k] for name, value in params.items()}) for k in range(count)]
        )

    def __call__(self, weights: FloatArray) -> ValidationScores:
        stacked = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(weights), dtype=np.float32))
        stacked = stacked.to(self.device)
        per_chunk_losses: list[torch.Tensor] = []
        per_chunk_correct: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, stacked.shape[0], self.chunk):
                params = self._unflatten(stacked[start : start + self.chunk])
                losses: list[torch.Tensor] = []
                correct: list[torch.Tensor] = []
                for raw_inputs, raw_targets in self.batches:
                    inputs, targets = raw_inputs.to(self.device), raw_targets.to(self.device)
                    outputs = self._outputs(params, inputs)  # (k, n, classes)
                    k = outputs.shape[0]
                    flat_outputs = outputs.reshape(k * outputs.shape[1], *outputs.shape[2:])
                    repeated = targets.repeat(k)
                    losses.append(self.loss(flat_outputs, repeated).reshape(k, -1).double())
                    correct.append((outputs.argmax(dim=-1) == targets).double())
                if not losses:
                    raise InputDataError("the held-out data has no samples")
                per_chunk_losses.append(torch.cat(losses, dim=1))
                per_chunk_correct.append(torch.cat(correct, dim=1))
        sample_losses = torch.cat(per_chunk_losses).cpu().numpy()
        accuracies = torch.cat(per_chunk_correct).mean(dim=1).cpu().numpy()
        return ValidationScores(
            losses=sample_losses.mean(axis=1),
            accuracies=accuracies,
            sample_losses=sample_losses,
        )

    def gradient(self, weights: FloatArray) -> ValidationGradient:
        """The mean loss at one flat trainable vector, its gradient there and the per-sample
        losses, batch by batch (first-order credit)."""
        flat = torch.from_numpy(np.array(weights, dtype=np.float32)).to(self.device)
        params = {
            name: piece[0].detach().clone().requires_grad_(True)
            for name, piece in self._unflatten(flat[None, :]).items()
        }
        count = sum(int(targets.shape[0]) for _, targets in self.batches)
        if count == 0:
            raise InputDataError("the held-out data has no samples")
        totals = [torch.zeros_like(p) for p in params.values()]
        sample_losses: list[torch.Tensor] = []
        for raw_inputs, raw_targets in self.batches:
            inputs, targets = raw_inputs.to(self.device), raw_targets.to(self.device)
            outputs = functional_call(self.module, (params, self._buffers), (inputs,))
            per_sample = self.loss(outputs, targets)
            # Each batch's share of the mean, differentiated as the mean itself is: with one
            # batch, the same bits as the built-in models' gradient (a run through Flower or
            # a user's app then matches `accord simulate` seed for seed).
            grads = torch.autograd.grad(
                per_sample.sum() / count, list(params.values()), allow_unused=True
            )
            # A parameter the forward pass does not use has no gradient: zero, as in fit.
            present = [
                g if g is not None else torch.zeros_like(t)
                for g, t in zip(grads, totals, strict=True)
            ]
            torch._foreach_add_(totals, present)
            sample_losses.append(per_sample.detach())
        losses = torch.cat(sample_losses)
        joined = torch.cat([t.reshape(-1) for t in totals])
        return ValidationGradient(
            loss=float(losses.mean()),
            gradient=joined.detach().cpu().numpy().astype(np.float32),
            sample_losses=losses.double().cpu().numpy(),
        )
