"""Optimisers written with torch's ``_foreach`` ops instead of :mod:`torch.optim`.

``torch.optim``'s first use imports ``torch._dynamo`` (1.2–1.9 s and ~80 MB here), which
sat on the critical path of ``accord simulate``'s start and of every node process. The
update is Adam exactly as ``torch.optim.Adam(foreach=True)`` computes it (a test compares
them step by step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from accord._validation import require_number
from accord.errors import ConfigurationError

__all__ = ["Adam"]


class Adam:
    """Adam (Kingma & Ba) with bias correction; betas (0.9, 0.999), eps 1e-8 by default."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        require_number("learning_rate", lr, minimum=0.0, exclusive_minimum=True)
        self.params = list(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        pairs = [(i, p.grad) for i, p in enumerate(self.params) if p.grad is not None]
        if not pairs:
            return
        index = [i for i, _ in pairs]
        grads = [g for _, g in pairs if g is not None]
        params = [self.params[i] for i in index]
        exp_avg = [self.exp_avg[i] for i in index]
        exp_avg_sq = [self.exp_avg_sq[i] for i in index]
        self.step_count += 1
        torch._foreach_lerp_(exp_avg, grads, 1.0 - self.beta1)
        torch._foreach_mul_(exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1.0 - self.beta2)
        bias_correction1 = 1.0 - self.beta1**self.step_count
        bias_correction2_sqrt = math.sqrt(1.0 - self.beta2**self.step_count)
        denominator = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denominator, bias_correction2_sqrt)
        torch._foreach_add_(denominator, self.eps)
        torch._foreach_addcdiv_(params, exp_avg, denominator, -self.lr / bias_correction1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "exp_avg": [t.clone() for t in self.exp_avg],
            "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        exp_avg, exp_avg_sq = list(state["exp_avg"]), list(state["exp_avg_sq"])
        shapes = [tuple(p.shape) for p in self.params]
        if [tuple(t.shape) for t in exp_avg] != shapes or [
            tuple(t.shape) for t in exp_avg_sq
        ] != shapes:
            raise ConfigurationError("optimizer state: shapes do not match the parameters")
        self.step_count = int(state["step"])
        with torch.no_grad():
            for target, source in zip(
                self.exp_avg + self.exp_avg_sq, exp_avg + exp_avg_sq, strict=True
            ):
                target.copy_(source)
