"""Known-answer tests of the Actor-Critic's update equations (TD3 as Accord uses it)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from accord.aggregation.actor_critic_networks import (
    critic_loss,
    critic_target,
    kl_to_anchor,
    own_share,
    soft_update,
)


def test_the_critic_target_takes_the_smaller_critic_and_stops_at_absent_nodes() -> None:
    reward = torch.tensor([[1.0, 2.0, 0.5]])
    next_q = torch.tensor([[[3.0, 1.0, 4.0]], [[2.0, 5.0, 4.0]]])  # 2 critics, 1 row, 3 nodes
    next_mask = torch.tensor([[True, True, False]])
    target = critic_target(reward, 0.5, next_q, next_mask)
    # min over critics: [2, 1, 4]; node 3 is absent next round: its target is its reward.
    assert target.tolist() == [[1.0 + 0.5 * 2.0, 2.0 + 0.5 * 1.0, 0.5]]


def test_the_critic_loss_sums_the_critics_and_averages_over_present_entries() -> None:
    q = torch.tensor([[[1.0, 2.0, 9.0]], [[0.0, 4.0, 9.0]]])
    target = torch.tensor([[1.0, 3.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    # critic 1: (0)² + (−1)²; critic 2: (−1)² + (1)²; the absent node counts nowhere.
    assert critic_loss(q, target, mask).item() == pytest.approx((0 + 1 + 1 + 1) / 2)


def test_a_node_s_own_share_moves_with_its_own_logit_only() -> None:
    logits = torch.tensor([[0.0, math.log(3.0), 5.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    share = own_share(logits, mask)
    assert share.tolist()[0][:2] == pytest.approx([1 / 4, 3 / 4])
    assert share[0, 2].item() == 0.0
    share[0, 0].backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None
    # d/dl₀ of e^{l₀}/(e^{l₀} + 3) at l₀ = 0 is 3/16; the others' logits get no gradient.
    assert logits.grad.tolist()[0] == pytest.approx([3 / 16, 0.0, 0.0])


def test_the_kl_to_the_anchor_is_the_textbook_value_over_present_nodes() -> None:
    action = torch.tensor([[0.5, 0.5, 0.0]])
    anchor_logits = torch.log(torch.tensor([[0.25, 0.75, 1.0]]))
    mask = torch.tensor([[True, True, False]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_to_anchor(action, anchor_logits, mask).item() == pytest.approx(expected)


def test_the_soft_update_is_polyak_averaging() -> None:
    target, source = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        target.weight.fill_(1.0)
        target.bias.fill_(-1.0)
        source.weight.fill_(3.0)
        source.bias.fill_(1.0)
    soft_update(target, source, 0.25)
    assert target.weight.tolist() == [[1.5, 1.5]]  # 0.75·1 + 0.25·3
    assert target.bias.tolist() == [-0.5]  # 0.75·(−1) + 0.25·1
    assert source.weight.tolist() == [[3.0, 3.0]]
