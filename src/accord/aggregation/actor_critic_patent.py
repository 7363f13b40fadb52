"""The patent's literal Actor-Critic (``mode="patent"`` of :mod:`.actor_critic`).

The state is the previous round's probability vector over the roster, the actor maps it
to this round's probabilities, and the reward is ``g^(B − A)`` on validation accuracy
before (A) and after (B) the update; generic critics ``Q(s, a)``. Kept exactly as the
patent words it; on a prototype it did not learn.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from accord.aggregation.actor_critic_networks import (
    Replay,
    bounded_logits_torch,
    load_torch_state,
    masked_softmax,
    mlp,
    small_last_layer,
    soft_update,
    torch_state,
)
from accord.aggregation.base import Aggregation, Aggregator, RoundFeedback, RoundInput
from accord.aggregation.combine import second_gradient
from accord.errors import ConfigurationError
from accord.optim import Adam

if TYPE_CHECKING:
    from accord.aggregation.actor_critic_settings import ActorCriticSettings

__all__ = ["PatentActorCritic", "reward"]


def reward(base: float, before: float, after: float) -> float:
    """The patent's reward ``g ** (B − A)``; ``g ≥ 1`` so an improvement is never punished."""
    if not base >= 1.0:
        raise ConfigurationError(f"reward_base: expected g >= 1, got {base!r}")
    return float(base ** (after - before))


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
        self.replay: Replay | None = None
        self.log_prior: np.ndarray | None = None
        self.state: np.ndarray | None = None
        self.last: dict[str, np.ndarray] | None = None
        self.rounds_seen = 0
        self._diagnostics: dict[str, float] = {}

    def _build(self, roster_size: int) -> None:
        s = self.settings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            actor = mlp(roster_size, s.hidden, roster_size, nn.Tanh)
            small_last_layer(actor[-1])  # type: ignore[arg-type]
            self.actor = actor
            self.critics = nn.ModuleList(
                mlp(2 * roster_size, s.hidden, 1, nn.ReLU) for _ in range(s.critics)
            )
        self.target_actor = copy.deepcopy(self.actor)
        self.target_critics = copy.deepcopy(self.critics)
        self.actor_optimizer = Adam(self.actor.parameters(), lr=s.actor_learning_rate)
        self.critic_optimizer = Adam(self.critics.parameters(), lr=s.critic_learning_rate)
        self.replay = Replay(
            s.replay_capacity,
            {
                "x": (roster_size, 1),
                "mask": (roster_size,),
                "action": (roster_size,),
                "reward": (roster_size,),
                "next_x": (roster_size, 1),
                "next_mask": (roster_size,),
            },
        )

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
        s = self.settings
        log_prior = torch.from_numpy(self.log_prior).float()
        return masked_softmax(bounded_logits_torch(log_prior, raw, s.bound, s.upper_bound), mask)

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
            x=self.last["state"][:, None],
            mask=self.last["mask"],
            action=self.last["action"],
            reward=scaled,
            next_x=self.last["action"][:, None],
            next_mask=self.last["mask"],
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
                soft_update(self.target_actor, self.actor, s.target_update)
                soft_update(self.target_critics, self.critics, s.target_update)
        self._diagnostics["policy_learn_seconds"] = time.perf_counter() - started

    def diagnostics(self) -> dict[str, float]:
        return dict(self._diagnostics)

    def state_dict(self) -> dict[str, Any]:
        networks = {}
        if self.actor is not None:
            networks = {
                name: torch_state(getattr(self, name))
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
                load_torch_state(getattr(self, name), blob)
        if state["replay"] is not None and self.replay is not None:
            self.replay.load_state_dict(state["replay"])
        self.rng.bit_generator.state = state["rng"]
        self.state = state["state"]
        self.last = state["last"]
        self.rounds_seen = int(state["rounds_seen"])
