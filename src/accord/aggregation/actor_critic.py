"""The Actor-Critic weighting policy (DESIGN §1), in two modes.

``rich`` (default)
    Each present node i has a feature vector ``x_i`` (:mod:`accord.aggregation.credit`).
    One small actor MLP, shared by all nodes, scores each node from ``[x_i, mean_j x_j]``;
    ``logit_i = log(n_i/n) + b·tanh(score_i / b)`` and ``p = softmax(logits)``. The actor's
    last layer starts near zero, so the first policy is FedAvg. Exploration adds decaying
    Gaussian noise to the scores. The reward is per node, in the patent's ``g^Δ`` form on
    leave-one-out credit: ``r_i = c·(g^(B − B₋ᵢ) − 1)``. Critics are linear in the action,
    ``Q_i = N·a_i·V(c_i) + U(c_i)`` with ``c_i = [h_i, mean_j h_j]`` and ``h = φ(x)``; two
    critics with target copies, a TD3 target with smoothed action noise, discount γ. The
    actor maximises ``Σ_i Q_i(x, π(x)) − λ·KL(π(x) ‖ n/Σn)``, where each node's term
    moves only that node's own score (the others' weights held fixed): a per-node
    objective, like Hedge-LOO's, instead of the nodes competing for one unit of weight.

``patent``
    Exactly as the patent words it: the state is the previous round's probability vector
    over the roster, the actor maps it to this round's probabilities, and the reward is
    ``g^(B − A)`` on validation accuracy before (A) and after (B) the update; generic
    critics ``Q(s, a)``. On a prototype it did not learn; it is kept, tested and benchmarked.

Both are seeded: network initialisation from ``seed``, all noise and replay sampling from
one ``numpy`` generator whose state is part of :meth:`state_dict`.
"""

from __future__ import annotations

import copy
import io
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from accord._validation import require_choice, require_int, require_number, require_probability
from accord.aggregation.base import Aggregation, Aggregator, FloatArray, RoundFeedback, RoundInput
from accord.aggregation.combine import (
    bounded_prior_softmax,
    expand_to_roster,
    second_gradient,
)
from accord.aggregation.credit import FEATURE_NAMES, leave_one_out_credit, node_features
from accord.errors import ConfigurationError
from accord.training.optim import Adam

__all__ = [
    "ActorCriticSettings",
    "PatentActorCritic",
    "RichActorCritic",
    "make_actor_critic",
    "reward",
]

MODES = ("patent", "rich")
#: Largest |B − B₋ᵢ| (in nats of validation loss) that enters the reward.
MAX_CREDIT = 10.0


def reward(base: float, before: float, after: float) -> float:
    """The patent's reward ``g ** (B − A)``; ``g ≥ 1`` so an improvement is never punished."""
    if not base >= 1.0:
        raise ConfigurationError(f"reward_base: expected g >= 1, got {base!r}")
    return float(base ** (after - before))


@dataclass(frozen=True)
class ActorCriticSettings:
    """Every hyper-parameter of the Actor-Critic, with its default.

    - ``mode``: ``rich`` (default) or ``patent``.
    - ``reward_base`` g ≥ 1 of the reward ``g^Δ`` (default 2.0).
    - ``reward_scale`` c: the critics learn from ``c·(r − 1)`` (default 100.0).
    - ``discount`` γ (default 0.3; DESIGN found 0.9 worse).
    - ``critics``: how many critics, the target takes their minimum (default 2, TD3).
    - ``hidden``: width of every hidden layer (default 32).
    - ``actor_learning_rate`` (default 1e-3), ``critic_learning_rate`` (default 3e-3), Adam.
    - ``critic_steps`` per round (default 6); ``policy_delay``: critic steps per actor step
      (default 2); ``batch_size`` of transitions (default 32); ``replay_capacity`` (default
      1000); ``warmup_rounds`` before learning starts (default 3).
    - ``target_update`` τ of the soft target update (default 0.05).
    - ``exploration_noise`` σ₀ on the scores (default 0.3), multiplied by
      ``exploration_decay`` every round (default 0.97).
    - ``target_noise`` and ``target_noise_clip`` of TD3's target smoothing (0.2, 0.5).
    - ``kl_weight`` λ of the pull toward data-size weights (default 0.5).
    - ``credit_decay`` δ of the running leave-one-out credit feature (default 0.9).
    - ``bound`` b: a node falls at most b nats below its data-size prior (default 4.0);
      ``upper_bound``: it rises at most this many nats above it (default 4.0).
    - ``learning``: False freezes the networks (the no-learning control; default True).
    - ``server_learning_rate``: must match the round's η_server (default 1.0).
    - ``seed`` of initialisation, noise and replay sampling (default 0).
    """

    mode: str = "rich"
    reward_base: float = 2.0
    reward_scale: float = 100.0
    discount: float = 0.3
    critics: int = 2
    hidden: int = 32
    actor_learning_rate: float = 1e-3
    critic_learning_rate: float = 3e-3
    critic_steps: int = 6
    policy_delay: int = 2
    batch_size: int = 32
    replay_capacity: int = 1000
    warmup_rounds: int = 3
    target_update: float = 0.05
    exploration_noise: float = 0.3
    exploration_decay: float = 0.97
    target_noise: float = 0.2
    target_noise_clip: float = 0.5
    kl_weight: float = 0.5
    credit_decay: float = 0.9
    bound: float = 4.0
    upper_bound: float = 4.0
    learning: bool = True
    server_learning_rate: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        require_choice("mode", self.mode, MODES)
        require_number("reward_base", self.reward_base, minimum=1.0)
        require_number("reward_scale", self.reward_scale, minimum=0.0, exclusive_minimum=True)
        require_probability("discount", self.discount)
        require_int("critics", self.critics, minimum=1)
        require_int("hidden", self.hidden, minimum=1)
        require_number(
            "actor_learning_rate", self.actor_learning_rate, minimum=0.0, exclusive_minimum=True
        )
        require_number(
            "critic_learning_rate", self.critic_learning_rate, minimum=0.0, exclusive_minimum=True
        )
        require_int("critic_steps", self.critic_steps, minimum=0)
        require_int("policy_delay", self.policy_delay, minimum=1)
        require_int("batch_size", self.batch_size, minimum=1)
        require_int("replay_capacity", self.replay_capacity, minimum=1)
        require_int("warmup_rounds", self.warmup_rounds, minimum=1)
        require_probability("target_update", self.target_update)
        require_number("exploration_noise", self.exploration_noise, minimum=0.0)
        require_probability("exploration_decay", self.exploration_decay)
        require_number("target_noise", self.target_noise, minimum=0.0)
        require_number("target_noise_clip", self.target_noise_clip, minimum=0.0)
        require_number("kl_weight", self.kl_weight, minimum=0.0)
        require_probability("credit_decay", self.credit_decay)
        require_number("bound", self.bound, minimum=0.0, exclusive_minimum=True)
        require_number("upper_bound", self.upper_bound, minimum=0.0, exclusive_minimum=True)
        require_number(
            "server_learning_rate", self.server_learning_rate, minimum=0.0, exclusive_minimum=True
        )
        require_int("seed", self.seed, minimum=0)
        if not isinstance(self.learning, bool):
            raise ConfigurationError(f"learning: expected true or false, got {self.learning!r}")


def make_actor_critic(settings: ActorCriticSettings | None = None) -> Aggregator:
    settings = settings or ActorCriticSettings()
    if settings.mode == "patent":
        return PatentActorCritic(settings)
    return RichActorCritic(settings)


# ----------------------------------------------------------------------------- shared pieces


def _bounded_logits(
    log_prior: np.ndarray, scores: torch.Tensor, settings: ActorCriticSettings
) -> torch.Tensor:
    """Torch twin of :func:`accord.aggregation.combine.bounded_logits`."""
    up = settings.upper_bound * torch.tanh(scores / settings.upper_bound)
    down = settings.bound * torch.tanh(scores / settings.bound)
    return torch.from_numpy(log_prior).float() + torch.where(scores > 0, up, down)


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the node axis (-2) of present nodes, broadcast back to every node."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    total = (values * weights).sum(dim=-2, keepdim=True)
    return (total / weights.sum(dim=-2, keepdim=True).clamp_min(1.0)).expand_as(values)


def _soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        targets: list[torch.Tensor] = list(target.parameters())
        sources: list[torch.Tensor] = list(source.parameters())
        torch._foreach_mul_(targets, 1.0 - tau)
        torch._foreach_add_(targets, sources, alpha=tau)


def _small_last_layer(layer: nn.Linear) -> nn.Linear:
    """Start the head near zero so the initial policy is the data-size prior."""
    with torch.no_grad():
        layer.weight.uniform_(-1e-3, 1e-3)
        layer.bias.zero_()
    return layer


def _mlp(inputs: int, hidden: int, outputs: int, activation: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        activation(),
        nn.Linear(hidden, hidden),
        activation(),
        nn.Linear(hidden, outputs),
    )


class _Replay:
    """A ring buffer of transitions over the roster: x, mask, action, reward, x', mask'."""

    def __init__(self, capacity: int, roster: int, features: int) -> None:
        self.capacity = capacity
        self.x = np.zeros((capacity, roster, features), dtype=np.float32)
        self.mask = np.zeros((capacity, roster), dtype=bool)
        self.action = np.zeros((capacity, roster), dtype=np.float32)
        self.reward = np.zeros((capacity, roster), dtype=np.float32)
        self.next_x = np.zeros((capacity, roster, features), dtype=np.float32)
        self.next_mask = np.zeros((capacity, roster), dtype=bool)
        self.size = 0
        self.cursor = 0

    def add(
        self,
        x: np.ndarray,
        mask: np.ndarray,
        action: np.ndarray,
        reward_: np.ndarray,
        next_x: np.ndarray,
        next_mask: np.ndarray,
    ) -> None:
        i = self.cursor
        self.x[i], self.mask[i], self.action[i] = x, mask, action
        self.reward[i], self.next_x[i], self.next_mask[i] = reward_, next_x, next_mask
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        index = rng.integers(0, self.size, size=min(batch, self.size))
        return {
            name: torch.from_numpy(getattr(self, name)[index])
            for name in ("x", "mask", "action", "reward", "next_x", "next_mask")
        }

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {
            "size": n,
            "cursor": self.cursor,
            **{
                name: getattr(self, name)[:n].copy()
                for name in ("x", "mask", "action", "reward", "next_x", "next_mask")
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = int(state["size"])
        for name in ("x", "mask", "action", "reward", "next_x", "next_mask"):
            getattr(self, name)[:n] = state[name]
        self.size, self.cursor = n, int(state["cursor"])


def _torch_state(module: nn.Module | Adam) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def _load_torch_state(module: nn.Module | Adam, blob: bytes) -> None:
    module.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))


# ----------------------------------------------------------------------------- rich mode


class _ScoreActor(nn.Module):
    """One MLP shared by every node: ``[x_i, mean_j x_j] → score_i``."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(2 * features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = _small_last_layer(nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        context = torch.cat([x, _masked_mean(x, mask)], dim=-1)
        scores: torch.Tensor = self.head(self.body(context)).squeeze(-1)
        return scores


class _EnsembleLinear(nn.Module):
    """K independent linear layers applied as one batched matmul: (K, M, in) → (K, M, out)."""

    def __init__(self, members: int, inputs: int, outputs: int) -> None:
        super().__init__()
        bound = 1.0 / inputs**0.5
        self.weight = nn.Parameter(torch.empty(members, inputs, outputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, outputs).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class _ActionLinearCritics(nn.Module):
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
        k = self.members
        batch, roster, _ = x.shape
        flat = x.reshape(1, batch * roster, -1).expand(k, -1, -1)
        h = torch.relu(self.phi(flat)).reshape(k, batch, roster, -1)
        context = torch.cat([h, _masked_mean(h, mask.unsqueeze(0).expand(k, -1, -1))], dim=-1)
        z = torch.relu(self.trunk1(context.reshape(k, batch * roster, -1)))
        z = torch.relu(self.trunk2(z))
        value, baseline = self.heads(z).reshape(k, batch, roster, 2).unbind(-1)
        count = mask.sum(dim=-1, keepdim=True).to(action.dtype)
        q: torch.Tensor = count * action * value + baseline
        return q


class RichActorCritic(Aggregator):
    """The ``rich`` Actor-Critic of DESIGN §1 (the default policy)."""

    name = "actor-critic"
    needs_validation = True

    def __init__(self, settings: ActorCriticSettings) -> None:
        self.settings = settings
        self.rng = np.random.default_rng([settings.seed, 1])
        n_features = len(FEATURE_NAMES)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            self.actor = _ScoreActor(n_features, settings.hidden)
            self.critics = _ActionLinearCritics(settings.critics, n_features, settings.hidden)
        self.target_actor = copy.deepcopy(self.actor)
        self.target_critics = copy.deepcopy(self.critics)
        self.actor_optimizer = Adam(self.actor.parameters(), lr=settings.actor_learning_rate)
        self.critic_optimizer = Adam(self.critics.parameters(), lr=settings.critic_learning_rate)
        self.replay: _Replay | None = None
        self.log_prior: np.ndarray | None = None
        self.previous_second_gradient: FloatArray | None = None
        self.previous_probabilities: np.ndarray | None = None
        self.pending: dict[str, np.ndarray] | None = None
        self.running_credit: np.ndarray | None = None
        self.rounds_seen = 0
        self.updates = 0
        self._diagnostics: dict[str, float] = {}

    # -- acting

    def _exploration_sigma(self) -> float:
        s = self.settings
        return s.exploration_noise * s.exploration_decay**self.rounds_seen if s.learning else 0.0

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        assert round_input.validate is not None  # guaranteed by needs_validation
        s = self.settings
        roster_size = len(round_input.roster)
        present = round_input.present
        if self.replay is None:
            self.replay = _Replay(s.replay_capacity, roster_size, len(FEATURE_NAMES))
            self.log_prior = np.log(np.maximum(round_input.sample_counts, 1e-12))
        assert self.log_prior is not None
        if self.previous_probabilities is None:
            counts = round_input.sample_counts
            self.previous_probabilities = counts / counts.sum()
            self.running_credit = np.zeros(roster_size)
        assert self.running_credit is not None
        started = time.perf_counter()
        features = node_features(
            round_input.validate,
            round_input.global_weights,
            round_input.first_gradients,
            s.server_learning_rate,
            self.previous_second_gradient,
            roster_size * self.previous_probabilities[present],
            self.running_credit[present] * (1.0 - s.credit_decay),
        )
        x = np.zeros((roster_size, len(FEATURE_NAMES)), dtype=np.float32)
        x[present] = features.values
        if self.pending is not None:
            self.replay.add(
                self.pending["x"],
                self.pending["mask"],
                self.pending["action"],
                self.pending["reward"],
                x,
                present,
            )
        with torch.no_grad():
            scores = self.actor(torch.from_numpy(x)[None], torch.from_numpy(present)[None])[0]
        scores_np = scores.double().numpy()[present]
        sigma = self._exploration_sigma()
        if sigma > 0:
            scores_np = scores_np + sigma * self.rng.standard_normal(scores_np.shape)
        probabilities = bounded_prior_softmax(
            self.log_prior[present], scores_np, s.bound, s.upper_bound
        )
        loo = leave_one_out_credit(
            round_input.validate,
            round_input.global_weights,
            probabilities,
            round_input.first_gradients,
            s.server_learning_rate,
        )
        credit_scale = float(np.mean(np.abs(loo.credit)))
        # A wildly harmful node (a scaled sign flip) can move the loss by tens of nats;
        # clipping Δ keeps g^Δ finite in float32 without changing any ordering that matters.
        delta = np.clip(loo.credit, -MAX_CREDIT, MAX_CREDIT)
        rewards = s.reward_scale * (np.power(s.reward_base, delta) - 1.0)
        self.running_credit *= s.credit_decay
        if credit_scale > 0:
            self.running_credit[present] += loo.credit / credit_scale
        full_probabilities = expand_to_roster(probabilities, present)
        reward_row = np.zeros(roster_size, dtype=np.float32)
        reward_row[present] = rewards
        self.pending = {
            "x": x,
            "mask": present.copy(),
            "action": full_probabilities.astype(np.float32),
            "reward": reward_row,
        }
        combined = second_gradient(probabilities, round_input.first_gradients)
        self.previous_second_gradient = combined
        self.previous_probabilities = full_probabilities
        self.rounds_seen += 1
        self._diagnostics = {
            "policy_features_seconds": time.perf_counter() - started,
            "exploration_sigma": sigma,
            "mean_abs_credit": float(np.mean(np.abs(loo.credit))),
        }
        return Aggregation(probabilities=full_probabilities, second_gradient=combined)

    # -- learning

    def _policy(
        self,
        actor: nn.Module,
        x: torch.Tensor,
        mask: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert self.log_prior is not None
        scores = actor(x, mask)
        if noise is not None:
            scores = scores + noise
        logits = _bounded_logits(self.log_prior, scores, self.settings)
        return _masked_softmax(logits, mask)

    def learn(self, feedback: RoundFeedback) -> None:
        s = self.settings
        if not s.learning or self.replay is None or self.replay.size < s.warmup_rounds:
            return
        started = time.perf_counter()
        critic_losses: list[float] = []
        for step in range(s.critic_steps):
            batch = self.replay.sample(self.rng, s.batch_size)
            mask, next_mask = batch["mask"], batch["next_mask"]
            with torch.no_grad():
                noise_np = np.clip(
                    s.target_noise * self.rng.standard_normal(tuple(next_mask.shape)),
                    -s.target_noise_clip,
                    s.target_noise_clip,
                )
                next_action = self._policy(
                    self.target_actor,
                    batch["next_x"],
                    next_mask,
                    torch.from_numpy(noise_np).float(),
                )
                next_q = self.target_critics(batch["next_x"], next_action, next_mask)
                next_q = next_q.min(dim=0).values
                target = batch["reward"] + s.discount * next_q * next_mask.float()
            weights = mask.float()
            errors = (self.critics(batch["x"], batch["action"], mask) - target) ** 2
            loss = (errors * weights).sum() / weights.sum()
            self.critic_optimizer.zero_grad()
            loss.backward()
            self.critic_optimizer.step()
            critic_losses.append(loss.item())
            if (step + 1) % s.policy_delay == 0:
                self._actor_step(batch)
        self.updates += 1
        self._diagnostics["policy_learn_seconds"] = time.perf_counter() - started
        if critic_losses:
            self._diagnostics["critic_loss"] = float(np.mean(critic_losses))

    def _actor_step(self, batch: dict[str, torch.Tensor]) -> None:
        s = self.settings
        assert self.log_prior is not None
        mask = batch["mask"]
        logits = _bounded_logits(self.log_prior, self.actor(batch["x"], mask), s)
        action = _masked_softmax(logits, mask)
        # Each node's score maximises its own Q_i with the other nodes' weights held fixed.
        # The shared objective Σ_i Q_i makes the nodes compete for one unit of weight and,
        # on non-IID data, piled it onto 2-4 honest nodes; per node, a score rises while
        # its credit V_i is positive and saturates at the bound, as Hedge-LOO's does.
        logits = logits.masked_fill(~mask, float("-inf"))
        own = torch.exp(logits - logits.detach().max(dim=-1, keepdim=True).values)
        others = own.detach().sum(dim=-1, keepdim=True) - own.detach()
        own_action = own / (own + others)
        q = (self.critics(batch["x"], own_action, mask)[0] * mask.float()).sum(dim=-1)
        prior = _masked_softmax(torch.from_numpy(self.log_prior).float().expand_as(action), mask)
        ratio = torch.where(
            mask,
            torch.log(action.clamp_min(1e-12) / prior.clamp_min(1e-12)),
            torch.zeros_like(action),
        )
        kl = (action * ratio).sum(dim=-1)
        loss = (-q + s.kl_weight * kl).mean()
        self.actor_optimizer.zero_grad()
        loss.backward()
        self.actor_optimizer.step()
        _soft_update(self.target_actor, self.actor, s.target_update)
        _soft_update(self.target_critics, self.critics, s.target_update)

    def diagnostics(self) -> dict[str, float]:
        return dict(self._diagnostics)

    # -- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "networks": {
                name: _torch_state(module)
                for name, module in (
                    ("actor", self.actor),
                    ("critics", self.critics),
                    ("target_actor", self.target_actor),
                    ("target_critics", self.target_critics),
                    ("actor_optimizer", self.actor_optimizer),
                    ("critic_optimizer", self.critic_optimizer),
                )
            },
            "rng": self.rng.bit_generator.state,
            "replay": None if self.replay is None else self.replay.state_dict(),
            "log_prior": self.log_prior,
            "previous_second_gradient": self.previous_second_gradient,
            "previous_probabilities": self.previous_probabilities,
            "pending": self.pending,
            "running_credit": self.running_credit,
            "rounds_seen": self.rounds_seen,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, blob in state["networks"].items():
            _load_torch_state(getattr(self, name), blob)
        self.rng.bit_generator.state = state["rng"]
        self.log_prior = state["log_prior"]
        if state["replay"] is not None:
            assert self.log_prior is not None
            self.replay = _Replay(
                self.settings.replay_capacity, len(self.log_prior), len(FEATURE_NAMES)
            )
            self.replay.load_state_dict(state["replay"])
        self.previous_second_gradient = state["previous_second_gradient"]
        self.previous_probabilities = state["previous_probabilities"]
        self.pending = state["pending"]
        self.running_credit = state["running_credit"]
        self.rounds_seen = int(state["rounds_seen"])
        self.updates = int(state["updates"])


# ----------------------------------------------------------------------------- patent mode


class PatentActorCritic(Aggregator):
    """The patent's literal Actor-Critic: previous probabilities in, probabilities out."""

    name = "actor-critic-patent"
    needs_validation = False

    def __init__(self, settings: ActorCriticSettings) -> None:
        self.settings = settings
        self.rng = np.random.default_rng([settings.seed, 2])
        self.actor: nn.Sequential | None = None
        self.critics: nn.ModuleList | None = None
        self.target_actor: nn.Sequential | None = None
        self.target_critics: nn.ModuleList | None = None
        self.actor_optimizer: Adam | None = None
        self.critic_optimizer: Adam | None = None
        self.replay: _Replay | None = None
        self.log_prior: np.ndarray | None = None
        self.state: np.ndarray | None = None
        self.last: dict[str, np.ndarray] | None = None
        self.rounds_seen = 0
        self._diagnostics: dict[str, float] = {}

    def _build(self, roster_size: int) -> None:
        s = self.settings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            actor = _mlp(roster_size, s.hidden, roster_size, nn.Tanh)
            _small_last_layer(actor[-1])  # type: ignore[arg-type]
            self.actor = actor
            self.critics = nn.ModuleList(
                _mlp(2 * roster_size, s.hidden, 1, nn.ReLU) for _ in range(s.critics)
            )
        self.target_actor = copy.deepcopy(self.actor)
        self.target_critics = copy.deepcopy(self.critics)
        self.actor_optimizer = Adam(self.actor.parameters(), lr=s.actor_learning_rate)
        self.critic_optimizer = Adam(self.critics.parameters(), lr=s.critic_learning_rate)
        self.replay = _Replay(s.replay_capacity, roster_size, 1)

    def _policy(
        self,
        actor: nn.Module,
        state: torch.Tensor,
        mask: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert self.log_prior is not None
        raw = actor(state)
        if noise is not None:
            raw = raw + noise
        logits = _bounded_logits(self.log_prior, raw, self.settings)
        return _masked_softmax(logits, mask)

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        s = self.settings
        present = round_input.present
        if self.actor is None:
            self._build(len(round_input.roster))
            counts = round_input.sample_counts
            self.log_prior = np.log(np.maximum(counts, 1e-12))
            self.state = (counts / counts.sum()).astype(np.float32)
        assert self.actor is not None and self.state is not None
        sigma = s.exploration_noise * s.exploration_decay**self.rounds_seen if s.learning else 0.0
        noise = torch.from_numpy(sigma * self.rng.standard_normal(len(present))).float()
        with torch.no_grad():
            action = self._policy(
                self.actor,
                torch.from_numpy(self.state)[None],
                torch.from_numpy(present)[None],
                noise[None],
            )[0]
        full = action.double().numpy()
        full = np.where(present, full, 0.0)
        full /= full.sum()
        self.last = {
            "state": self.state.copy(),
            "action": full.astype(np.float32),
            "mask": present.copy(),
        }
        self.state = full.astype(np.float32)
        self.rounds_seen += 1
        probabilities = full[present]
        return Aggregation(
            probabilities=full,
            second_gradient=second_gradient(probabilities, round_input.first_gradients),
        )

    def learn(self, feedback: RoundFeedback) -> None:
        s = self.settings
        if self.last is None or self.replay is None:
            return
        r = reward(s.reward_base, feedback.accuracy_before, feedback.accuracy_after)
        self._diagnostics = {"reward": r}
        scaled = np.full(len(self.last["mask"]), s.reward_scale * (r - 1.0), dtype=np.float32)
        self.replay.add(
            self.last["state"][:, None],
            self.last["mask"],
            self.last["action"],
            scaled,
            self.last["action"][:, None],
            self.last["mask"],
        )
        if not s.learning or self.replay.size < s.warmup_rounds:
            return
        assert self.critics is not None and self.target_critics is not None
        assert self.actor is not None and self.target_actor is not None
        assert self.actor_optimizer is not None and self.critic_optimizer is not None
        started = time.perf_counter()
        for step in range(s.critic_steps):
            batch = self.replay.sample(self.rng, s.batch_size)
            state, next_state = batch["x"][..., 0], batch["next_x"][..., 0]
            mask = batch["mask"]
            with torch.no_grad():
                noise = np.clip(
                    s.target_noise * self.rng.standard_normal(tuple(mask.shape)),
                    -s.target_noise_clip,
                    s.target_noise_clip,
                )
                next_action = self._policy(
                    self.target_actor, next_state, mask, torch.from_numpy(noise).float()
                )
                next_q = (
                    torch.stack(
                        [
                            critic(torch.cat([next_state, next_action], dim=-1)).squeeze(-1)
                            for critic in self.target_critics
                        ]
                    )
                    .min(dim=0)
                    .values
                )
                target = batch["reward"][:, 0] + s.discount * next_q
            loss = sum(
                (
                    (critic(torch.cat([state, batch["action"]], dim=-1)).squeeze(-1) - target) ** 2
                ).mean()
                for critic in self.critics
            )
            assert isinstance(loss, torch.Tensor)
            self.critic_optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            self.critic_optimizer.step()
            if (step + 1) % s.policy_delay == 0:
                action = self._policy(self.actor, state, mask)
                q = self.critics[0](torch.cat([state, action], dim=-1)).squeeze(-1)
                actor_loss = -q.mean()
                self.actor_optimizer.zero_grad()
                actor_loss.backward()
                self.actor_optimizer.step()
                _soft_update(self.target_actor, self.actor, s.target_update)
                _soft_update(self.target_critics, self.critics, s.target_update)
        self._diagnostics["policy_learn_seconds"] = time.perf_counter() - started

    def diagnostics(self) -> dict[str, float]:
        return dict(self._diagnostics)

    def state_dict(self) -> dict[str, Any]:
        networks = {}
        if self.actor is not None:
            networks = {
                name: _torch_state(getattr(self, name))
                for name in (
                    "actor",
                    "critics",
                    "target_actor",
                    "target_critics",
                    "actor_optimizer",
                    "critic_optimizer",
                )
            }
        return {
            "settings": asdict(self.settings),
            "networks": networks,
            "rng": self.rng.bit_generator.state,
            "replay": None if self.replay is None else self.replay.state_dict(),
            "log_prior": self.log_prior,
            "state": self.state,
            "last": self.last,
            "rounds_seen": self.rounds_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_prior = state["log_prior"]
        if state["networks"]:
            assert self.log_prior is not None
            self._build(len(self.log_prior))
            for name, blob in state["networks"].items():
                _load_torch_state(getattr(self, name), blob)
        if state["replay"] is not None and self.replay is not None:
            self.replay.load_state_dict(state["replay"])
        self.rng.bit_generator.state = state["rng"]
        self.state = state["state"]
        self.last = state["last"]
        self.rounds_seen = int(state["rounds_seen"])
