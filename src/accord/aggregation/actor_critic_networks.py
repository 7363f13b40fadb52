"""The Actor-Critic's networks, replay buffer and torch helpers (see :mod:`.actor_critic`).

Kept apart from the policies so that :mod:`accord.aggregation.actor_critic` reads as the
round's logic: what the policy observes, proposes, checks and learns from.
"""

from __future__ import annotations

import io
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from accord.optim import Adam

__all__ = [
    "ActionLinearCritics",
    "Replay",
    "ScoreActor",
    "bounded_logits_torch",
    "critic_loss",
    "critic_target",
    "kl_to_anchor",
    "load_torch_state",
    "masked_mean",
    "masked_softmax",
    "mlp",
    "own_share",
    "small_last_layer",
    "soft_update",
    "torch_state",
]


def bounded_logits_torch(
    log_anchor: torch.Tensor, scores: torch.Tensor, bound: float, upper_bound: float
) -> torch.Tensor:
    """Torch twin of :func:`accord.aggregation.combine.bounded_logits`."""
    up = upper_bound * torch.tanh(scores / upper_bound)
    down = bound * torch.tanh(scores / bound)
    return log_anchor + torch.where(scores > 0, up, down)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the node axis (-2) of present nodes, broadcast back to every node."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    total = (values * weights).sum(dim=-2, keepdim=True)
    return (total / weights.sum(dim=-2, keepdim=True).clamp_min(1.0)).expand_as(values)


def critic_target(
    reward: torch.Tensor, discount: float, next_q: torch.Tensor, next_mask: torch.Tensor
) -> torch.Tensor:
    """TD3's clipped double-Q target per node: ``r + γ · min_c Q_c(x', a')`` where the node
    is present next round, ``r`` where it is not. ``next_q`` is (critics, batch, nodes)."""
    return reward + discount * next_q.min(dim=0).values * next_mask.to(reward.dtype)


def critic_loss(q: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error of every critic (``q``: critics, batch, nodes) against the target,
    summed over the critics and averaged over the present (batch, node) entries."""
    weights = mask.to(q.dtype)
    return ((q - target) ** 2 * weights).sum() / weights.sum()


def own_share(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each node's weight as a function of its own logit only, the others' held fixed:
    ``e^{l_i} / (e^{l_i} + Σ_{j≠i} e^{l_j})`` with the others detached (the actor's step
    raises a node's score while its own Q rises; see the policy step)."""
    logits = logits.masked_fill(~mask, float("-inf"))
    own = torch.exp(logits - logits.detach().max(dim=-1, keepdim=True).values)
    others = own.detach().sum(dim=-1, keepdim=True) - own.detach()
    return own / (own + others)


def kl_to_anchor(
    action: torch.Tensor, anchor_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``KL(action ‖ softmax(anchor))`` over the present nodes, per batch row."""
    anchor = masked_softmax(anchor_logits, mask)
    log_ratio = torch.log(action.clamp_min(1e-12)) - torch.log(anchor.clamp_min(1e-12))
    return torch.where(mask, action * log_ratio, 0.0).sum(dim=-1)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: every target parameter becomes ``(1 − τ)·target + τ·source``."""
    with torch.no_grad():
        targets: list[torch.Tensor] = list(target.parameters())
        sources: list[torch.Tensor] = list(source.parameters())
        torch._foreach_mul_(targets, 1.0 - tau)
        torch._foreach_add_(targets, sources, alpha=tau)


def small_last_layer(layer: nn.Linear) -> nn.Linear:
    """Start the head near zero so the initial policy is its anchor."""
    with torch.no_grad():
        layer.weight.uniform_(-1e-3, 1e-3)
        layer.bias.zero_()
    return layer


def mlp(inputs: int, hidden: int, outputs: int, activation: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        activation(),
        nn.Linear(hidden, hidden),
        activation(),
        nn.Linear(hidden, outputs),
    )


class Replay:
    """A ring buffer of transitions; ``fields`` maps each field's name to its per-transition
    shape (float32, except the fields named in ``boolean``)."""

    def __init__(
        self,
        capacity: int,
        fields: dict[str, tuple[int, ...]],
        boolean: tuple[str, ...] = ("mask", "next_mask"),
    ) -> None:
        self.capacity = capacity
        self.names = tuple(fields)
        self.arrays = {
            name: np.zeros((capacity, *shape), dtype=bool if name in boolean else np.float32)
            for name, shape in fields.items()
        }
        self.size = 0
        self.cursor = 0

    def add(self, **values: np.ndarray) -> None:
        i = self.cursor
        for name in self.names:
            self.arrays[name][i] = values[name]
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        index = rng.integers(0, self.size, size=min(batch, self.size))
        return {name: torch.from_numpy(self.arrays[name][index]) for name in self.names}

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {
            "size": n,
            "cursor": self.cursor,
            **{name: self.arrays[name][:n].copy() for name in self.names},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = int(state["size"])
        for name in self.names:
            self.arrays[name][:n] = state[name]
        self.size, self.cursor = n, int(state["cursor"])


def torch_state(module: nn.Module | Adam) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def load_torch_state(module: nn.Module | Adam, blob: bytes) -> None:
    module.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))


def _array(parameter: torch.Tensor) -> np.ndarray:
    return np.asarray(parameter.detach().numpy())


class ScoreActor(nn.Module):
    """One MLP shared by every node: ``[x_i, mean_j x_j] → score_i``."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(2 * features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = small_last_layer(nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        context = torch.cat([x, masked_mean(x, mask)], dim=-1)
        scores: torch.Tensor = self.head(self.body(context)).squeeze(-1)
        return scores

    def scores(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """:meth:`forward` for one round's ``(nodes, features)`` float32 state, in numpy
        (no autograd): the same float32 arithmetic without torch's per-call overhead,
        which on ten nodes is half the time of the actor's forward pass."""
        first, second = cast(nn.Linear, self.body[0]), cast(nn.Linear, self.body[2])
        head = self.head
        weights = mask.astype(np.float32)[:, None]
        mean = (x * weights).sum(axis=0, keepdims=True) / max(float(weights.sum()), 1.0)
        context = np.concatenate([x, np.broadcast_to(mean, x.shape)], axis=1)
        hidden = np.tanh(context @ _array(first.weight).T + _array(first.bias))
        hidden = np.tanh(hidden @ _array(second.weight).T + _array(second.bias))
        return np.asarray((hidden @ _array(head.weight).T + _array(head.bias))[:, 0])


class _EnsembleLinear(nn.Module):
    """K independent linear layers applied as one batched matmul: (K, M, in) → (K, M, out)."""

    def __init__(self, members: int, inputs: int, outputs: int) -> None:
        super().__init__()
        bound = 1.0 / inputs**0.5
        self.weight = nn.Parameter(torch.empty(members, inputs, outputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, outputs).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class ActionLinearCritics(nn.Module):
    """K critics ``Q_i = N · a_i · V(c_i) + U(c_i)``, ``c_i = [φ(x_i), mean_j φ(x_j)]``.

    The critics share nothing but their shapes; they are evaluated together as one batched
    network, which halves the per-step cost of TD3's twin critics on tiny inputs.
    """

    def __init__(self, members: int, features: int, hidden: int) -> None:
        super().__init__()
        self.members = members
        self.phi = _EnsembleLinear(members, features, hidden)
        self.trunk1 = _EnsembleLinear(members, 2 * hidden, hidden)
        self.trunk2 = _EnsembleLinear(members, hidden, hidden)
        self.heads = _EnsembleLinear(members, hidden, 2)  # V and U

    def forward(self, x: torch.Tensor, action: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, R, F), action and mask (B, R) → Q of every critic, (K, B, R)."""
        return self.q(*self.heads_of(x, mask), action, mask)

    def heads_of(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every critic's ``V`` and ``U`` at each node, (K, B, R) each: all of Q but the
        action, which enters it linearly (:meth:`q`)."""
        k = self.members
        batch, roster, _ = x.shape
        flat = x.reshape(1, batch * roster, -1).expand(k, -1, -1)
        h = torch.relu(self.phi(flat)).reshape(k, batch, roster, -1)
        context = torch.cat([h, masked_mean(h, mask.unsqueeze(0).expand(k, -1, -1))], dim=-1)
        z = torch.relu(self.trunk1(context.reshape(k, batch * roster, -1)))
        z = torch.relu(self.trunk2(z))
        value, baseline = self.heads(z).reshape(k, batch, roster, 2).unbind(-1)
        return value, baseline

    @staticmethod
    def q(
        value: torch.Tensor, baseline: torch.Tensor, action: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``Q_i = N · a_i · V_i + U_i`` from :meth:`heads_of`, N the present nodes."""
        count = mask.sum(dim=-1, keepdim=True).to(action.dtype)
        q: torch.Tensor = count * action * value + baseline
        return q
