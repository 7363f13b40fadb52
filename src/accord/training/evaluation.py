"""Scoring many candidate weight vectors at once on a held-out set.

The Actor-Critic needs about ``2N + 3`` validation passes per round; scoring them as one
batched forward pass (``torch.func.vmap`` over parameter sets) keeps that cheap. Every
score carries its per-sample losses too (:attr:`ValidationScores.sample_losses`).
"""

from __future__ import annotations

import copy

import numpy as np
import numpy.typing as npt
import torch
from torch.func import functional_call, vmap

from accord.training.models import FlatModel
from accord.types import (
    FloatArray,
    ValidationFn,
    ValidationGradient,
    ValidationGradientFn,
    ValidationScores,
)

__all__ = ["make_validation_fn", "make_validation_gradient_fn"]


def make_validation_fn(
    model: FlatModel,
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    *,
    chunk: int = 64,
) -> ValidationFn:
    """A function scoring a (K, dim) stack of weights: mean cross-entropy and accuracy, and
    the (K, n_samples) per-sample cross-entropy."""
    device = model.device
    inputs = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    targets = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).to(device)
    module = model.module

    def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
        logits: torch.Tensor = functional_call(module, params, (inputs,))
        return logits

    batched_forward = vmap(forward)

    def validate(weights: FloatArray) -> ValidationScores:
        stacked = torch.from_numpy(
            np.ascontiguousarray(np.atleast_2d(weights), dtype=np.float32)
        ).to(device)
        losses: list[torch.Tensor] = []
        sample_losses: list[torch.Tensor] = []
        accuracies: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, stacked.shape[0], chunk):
                logits = batched_forward(model.unflatten(stacked[start : start + chunk]))
                log_probs = torch.log_softmax(logits, dim=-1)
                picked = log_probs.gather(-1, targets.expand(logits.shape[0], -1)[..., None])
                per_sample = -picked.squeeze(-1)
                sample_losses.append(per_sample)
                losses.append(per_sample.mean(dim=1))
                accuracies.append((logits.argmax(dim=-1) == targets).float().mean(dim=1))
        return ValidationScores(
            losses=torch.cat(losses).double().cpu().numpy(),
            accuracies=torch.cat(accuracies).double().cpu().numpy(),
            sample_losses=torch.cat(sample_losses).double().cpu().numpy(),
        )

    return validate


def make_validation_gradient_fn(
    model: FlatModel,
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
) -> ValidationGradientFn:
    """A function giving the mean cross-entropy at one flat weight vector, its gradient
    there and the per-sample losses: one forward and one backward pass (first-order
    credit, :mod:`accord.aggregation.credit`)."""
    device = model.device
    inputs = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    targets = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).to(device)
    module = model.module
    twin = _twin(model)

    def gradient(weights: FloatArray) -> ValidationGradient:
        if twin is not None:
            values = twin.load(weights)
            logits: torch.Tensor = twin.model.module(inputs)
        else:
            flat = torch.from_numpy(np.array(weights, dtype=np.float32)).to(device)  # a copy
            params = {
                name: piece[0].detach().clone().requires_grad_(True)
                for name, piece in model.unflatten(flat[None, :]).items()
            }
            values = list(params.values())
            logits = functional_call(module, params, (inputs,))
        per_sample = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        loss = per_sample.mean()
        grads = torch.autograd.grad(loss, values, allow_unused=True)
        joined = (
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(v)).reshape(-1)
                    for g, v in zip(grads, values, strict=True)
                ]
            )
            .detach()
            .cpu()
            .numpy()
        )
        return ValidationGradient(
            loss=float(loss.detach()),
            gradient=joined.astype(np.float32),
            sample_losses=per_sample.detach().double().cpu().numpy(),
        )

    return gradient


class _Twin:
    """A copy of the scoring module whose own parameters take each weight vector: the same
    forward pass as ``functional_call`` on the original, without swapping its parameters in
    and out on every call (a third of the gradient's time on the default MLP, measured). Its
    buffers and training mode follow the original's at every call."""

    def __init__(self, model: FlatModel, original: torch.nn.Module) -> None:
        self.model = model
        self.original = original
        self.parameters: list[torch.Tensor] = list(model.module.parameters())
        self.buffers: list[torch.Tensor] = list(model.module.buffers())

    def load(self, weights: FloatArray) -> list[torch.Tensor]:
        """The copy at ``weights`` with the original's buffers and mode; its parameters."""
        module = self.model.module
        if module.training != self.original.training:
            module.train(self.original.training)
        with torch.no_grad():
            for buffer, source in zip(self.buffers, self.original.buffers(), strict=True):
                buffer.copy_(source)
        self.model.set_flat(np.array(weights, dtype=np.float32))  # writable: torch reads it
        return self.parameters


def _twin(model: FlatModel) -> _Twin | None:
    """A :class:`_Twin` of ``model``, or ``None`` when its module cannot be deep-copied (the
    gradient then goes through ``functional_call``)."""
    try:
        copied = FlatModel(copy.deepcopy(model.module))
    except Exception:  # any module that refuses a copy keeps the general path
        return None
    if copied.shapes != model.shapes:
        return None
    for parameter in copied.module.parameters():
        parameter.requires_grad_(True)
    return _Twin(copied, model.module)
