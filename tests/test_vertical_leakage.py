"""Label leakage through the returned gradients (Li et al., ICLR 2022) and its protections."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vertical_support import aligned_tables

from accord.vertical import (
    BatchRequest,
    EmbeddingGradient,
    ModelSettings,
    ProtectionSettings,
    VerticalSettings,
    build_parties,
    direction_attack_scores,
    norm_attack_scores,
    run_vertical,
)
from accord.vertical.attacks import AttackReport, attack_report
from accord.vertical.metrics import probability_log_loss, sigmoid
from accord.vertical.protection import (
    debias_probability,
    keep_probability,
    max_norm_noise,
    randomised_response,
)


def test_the_attacks_score_by_hand() -> None:
    gradients = np.array([[3.0, 4.0], [-1.0, 0.0], [0.0, 2.0], [-6.0, -8.0]])
    np.testing.assert_allclose(norm_attack_scores(gradients), [5.0, 1.0, 2.0, 10.0])
    np.testing.assert_allclose(direction_attack_scores(gradients, 0), [1.0, -0.6, 0.8, -1.0])
    report = attack_report([(gradients, np.array([1.0, 0.0, 0.0, 1.0]))])
    # norm: positives 5 and 10 above negatives 1 and 2; direction: 1 > 0.8 > -0.6 > -1 puts
    # one positive first and the other last.
    assert report == AttackReport(norm_auc=1.0, direction_auc=0.5, batches=1)


def test_max_norm_noise_lifts_every_row_to_the_largest_norm_in_expectation() -> None:
    gradients = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.1, 0.0], [1.0, 0.0, 0.0, 0.0]])
    generator = torch.Generator().manual_seed(0)

    draws = torch.stack([max_norm_noise(gradients, generator) for _ in range(4000)])

    np.testing.assert_array_equal(draws[:, 0].numpy(), np.tile(gradients[0].numpy(), (4000, 1)))
    mean_squared_norm = draws.pow(2).sum(dim=2).mean(dim=0)
    np.testing.assert_allclose(mean_squared_norm.numpy(), [25.0, 25.0, 25.0], rtol=0.05)
    np.testing.assert_allclose(draws.mean(dim=0).numpy(), gradients.numpy(), atol=0.2)


def test_randomised_response_flips_at_the_stated_rate() -> None:
    labels = np.tile(np.array([0.0, 1.0], np.float32), 50_000)

    noisy = randomised_response(labels, math.log(3.0), np.random.default_rng(0))

    assert keep_probability(math.log(3.0)) == pytest.approx(0.75)
    assert np.mean(noisy != labels) == pytest.approx(0.25, abs=0.006)
    assert set(np.unique(noisy).tolist()) == {0.0, 1.0}


def test_debiasing_inverts_the_flipped_labels_probability() -> None:
    clean = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    flip = 0.2
    noisy = flip + (1 - 2 * flip) * clean  # what a model of the flipped labels predicts

    np.testing.assert_allclose(debias_probability(noisy, flip), clean, atol=1e-12)
    np.testing.assert_allclose(debias_probability(np.array([0.0, 1.0]), flip), [0.0, 1.0])
    np.testing.assert_allclose(sigmoid(np.array([0.0, 800.0, -800.0])), [0.5, 1.0, 0.0])
    assert probability_log_loss(np.array([0.5, 0.75]), np.array([1.0, 0.0])) == pytest.approx(
        (np.log(2.0) + np.log(4.0)) / 2
    )


def _attacked_run(protection: ProtectionSettings) -> tuple[AttackReport, float]:
    label_table, feature_tables = aligned_tables(4000, label_columns=6, feature_columns=(6,))
    settings = VerticalSettings(
        model=ModelSettings(bottom="mlp", top="concat"),
        batch_size=256,
        epochs=3,
        patience=None,
        learning_rate=0.003,
        seed=3,
    )
    label, parties = build_parties(label_table, feature_tables, settings, protection, 5)
    assert label_table.labels is not None
    received: list[tuple[np.ndarray, np.ndarray]] = []

    def observe(request: BatchRequest, gradient: EmbeddingGradient) -> None:
        if request.epoch == 0:
            positions = parties[gradient.party].batch_positions(request)
            received.append((gradient.values.copy(), label_table.labels[positions]))  # type: ignore[index]

    result = run_vertical(label, parties, on_gradient=observe)
    assert result.test is not None and result.test.auc is not None
    return attack_report(received), result.test.auc


def test_the_attacks_recover_labels_unless_a_protection_is_on() -> None:
    exposed, exposed_auc = _attacked_run(ProtectionSettings())
    max_norm, max_norm_auc = _attacked_run(ProtectionSettings("max_norm"))
    label_dp, _ = _attacked_run(ProtectionSettings("label_dp", epsilon=0.5))

    assert exposed.batches == 13
    assert exposed.norm_auc is not None and exposed.norm_auc > 0.9
    assert exposed.direction_auc is not None and exposed.direction_auc > 0.95
    # max-norm hides the norms, not the directions; label DP hides both, at a price.
    assert max_norm.norm_auc is not None and max_norm.norm_auc < 0.6
    assert max_norm.direction_auc is not None and max_norm.direction_auc > 0.9
    assert max_norm_auc > exposed_auc - 0.03
    assert label_dp.direction_auc is not None and label_dp.direction_auc < 0.7
    assert label_dp.norm_auc is not None and label_dp.norm_auc < 0.75
