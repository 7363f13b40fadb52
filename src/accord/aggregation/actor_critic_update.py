"""The rich Actor-Critic's update, in one visible place (as CleanRL's TD3 keeps it).

Per critic step: a batch from the replay; the TD3 target ``r + γ · min_k Q'_k(s', π'(s'))``
with smoothed target-policy noise; the critics' masked squared error; every
``policy_delay`` steps the actor's loss (each node's own ``Q_i`` with the others' weights
held fixed, ``λ · KL(π ‖ anchor)``, and on rejected rounds ``β · KL(reference ‖ π)``), in
one backward pass with the critics' loss, then soft updates of the target networks.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from accord.aggregation.actor_critic_networks import (
    ActionLinearCritics,
    Replay,
    bounded_logits_torch,
    critic_loss,
    critic_target,
    kl_to_anchor,
    masked_softmax,
    own_share,
    soft_update,
)
from accord.aggregation.actor_critic_settings import ActorCriticSettings
from accord.optim import Adam

__all__ = ["ActorCriticNetworks", "actor_loss", "policy", "td3_update"]


class ActorCriticNetworks(Protocol):
    """The networks and optimisers an update moves (the rich Actor-Critic holds them)."""

    @property
    def actor(self) -> nn.Module: ...

    @property
    def critics(self) -> ActionLinearCritics: ...

    @property
    def target_actor(self) -> nn.Module: ...

    @property
    def target_critics(self) -> nn.Module: ...

    @property
    def actor_optimizer(self) -> Adam: ...

    @property
    def critic_optimizer(self) -> Adam: ...


def policy(
    actor: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    log_anchor: torch.Tensor,
    settings: ActorCriticSettings,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weights ``actor`` gives: bounded logits around ``log_anchor``, softmax over the
    present nodes (``noise`` added to the scores first, for the target policy)."""
    scores = actor(x, mask)
    if noise is not None:
        scores = scores + noise
    logits = bounded_logits_torch(log_anchor, scores, settings.bound, settings.upper_bound)
    return masked_softmax(logits, mask)


def td3_update(
    nets: ActorCriticNetworks,
    replay: Replay,
    rng: np.random.Generator,
    settings: ActorCriticSettings,
) -> list[float]:
    """``critic_steps`` steps of the update above; returns the critics' losses."""
    s = settings
    critic_losses: list[float] = []
    for step in range(s.critic_steps):
        batch = replay.sample(rng, s.batch_size)
        mask, next_mask = batch["mask"], batch["next_mask"]
        with torch.no_grad():
            noise_np = np.clip(
                s.target_noise * rng.standard_normal(tuple(next_mask.shape)),
                -s.target_noise_clip,
                s.target_noise_clip,
            )
            next_action = policy(
                nets.target_actor,
                batch["next_x"],
                next_mask,
                batch["next_anchor"],
                s,
                torch.from_numpy(noise_np).float(),
            )
            next_q = nets.target_critics(batch["next_x"], next_action, next_mask)
            target = critic_target(batch["reward"], s.discount, next_q, next_mask)
        value, baseline = nets.critics.heads_of(batch["x"], mask)
        loss = critic_loss(nets.critics.q(value, baseline, batch["action"], mask), target, mask)
        critic_losses.append(loss.item())
        # One backward pass for both: the actor's loss sees the critics' heads detached,
        # so it moves the actor only (as a separate step would, at about half the cost of
        # the tiny networks' per-call overhead); the action enters Q only after the heads,
        # so the critic pass above serves the actor's loss too.
        act = (step + 1) % s.policy_delay == 0
        if act:
            heads = (value.detach(), baseline.detach())
            loss = loss + actor_loss(nets.actor, heads, batch, s)
            nets.actor_optimizer.zero_grad()
        nets.critic_optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        nets.critic_optimizer.step()
        if act:
            nets.actor_optimizer.step()
            soft_update(nets.target_actor, nets.actor, s.target_update)
            soft_update(nets.target_critics, nets.critics, s.target_update)
    return critic_losses


def actor_loss(
    actor: nn.Module,
    heads: tuple[torch.Tensor, torch.Tensor],
    batch: dict[str, torch.Tensor],
    settings: ActorCriticSettings,
) -> torch.Tensor:
    """The actor's loss on a batch, through the critics' ``V`` and ``U`` on it
    (``ActionLinearCritics.heads_of``), detached: it moves the actor only."""
    s = settings
    mask = batch["mask"]
    logits = bounded_logits_torch(batch["anchor"], actor(batch["x"], mask), s.bound, s.upper_bound)
    action = masked_softmax(logits, mask)
    # Each node's score maximises its own Q_i with the other nodes' weights held fixed.
    # The shared objective Σ_i Q_i makes the nodes compete for one unit of weight and,
    # on non-IID data, piled it onto 2-4 honest nodes; per node, a score rises while
    # its credit V_i is positive and saturates at the bound, as Hedge-LOO's does.
    own_action = own_share(logits, mask)
    q_all = ActionLinearCritics.q(*heads, own_action, mask)
    q = (q_all[0] * mask.float()).sum(dim=-1)
    log_action = torch.log(action.clamp_min(1e-12))
    kl = kl_to_anchor(action, batch["anchor"], mask)
    loss = (-q + s.kl_weight * kl).mean()
    rejected = batch["rejected"]
    if s.imitation_weight > 0 and bool(rejected.any()):
        reference = batch["reference"]
        imitation = torch.where(
            mask & (reference > 0),
            reference * (torch.log(reference.clamp_min(1e-12)) - log_action),
            0.0,
        ).sum(dim=-1)
        loss = loss + s.imitation_weight * (imitation * rejected).sum() / rejected.sum()
    return torch.as_tensor(loss)
