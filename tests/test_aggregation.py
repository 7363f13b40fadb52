"""Weighting policies against hand-computed values and independent oracles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.aggregation import FedAvg, RoundInput, ValidationScores, data_size_probabilities
from accord.aggregation.baselines import (
    CoordinateMedian,
    Krum,
    KrumSettings,
    TrimmedMean,
    coordinate_median,
    krum_select,
    trimmed_mean,
)
from accord.aggregation.combine import (
    bounded_prior_softmax,
    leave_one_out_gradients,
    second_gradient,
)
from accord.aggregation.hedge import HedgeLoo
from accord.errors import ConfigurationError, ProtocolError


def make_input(
    gradients: np.ndarray, counts: list[float], present: list[bool] | None = None, validate=None
) -> RoundInput:
    present_mask = np.array(present if present is not None else [True] * len(counts))
    return RoundInput(
        round_index=0,
        roster=tuple(f"n{i}" for i in range(len(counts))),
        sample_counts=np.array(counts, dtype=np.float64),
        present=present_mask,
        global_weights=np.zeros(gradients.shape[1], dtype=np.float32),
        first_gradients=gradients.astype(np.float32),
        validate=validate,
    )


def test_fedavg_is_the_data_size_weighted_mean() -> None:
    gradients = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    result = FedAvg().aggregate(make_input(gradients, [1, 1, 2]))
    # Hand-computed: (1·[1,0] + 1·[0,2] + 2·[3,3]) / 4 = [7/4, 8/4]
    np.testing.assert_allclose(result.second_gradient, [1.75, 2.0], rtol=1e-6)
    np.testing.assert_allclose(result.probabilities, [0.25, 0.25, 0.5])


def test_fedavg_renormalises_over_present_nodes() -> None:
    gradients = np.array([[1.0], [5.0]], dtype=np.float32)  # nodes n0 and n2; n1 dropped
    result = FedAvg().aggregate(make_input(gradients, [1, 10, 3], [True, False, True]))
    np.testing.assert_allclose(result.probabilities, [0.25, 0.0, 0.75])
    np.testing.assert_allclose(result.second_gradient, [0.25 * 1 + 0.75 * 5], rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 1000), min_size=1, max_size=12),
    data=st.data(),
)
def test_probabilities_form_a_distribution_over_present_nodes(
    counts: list[int], data: st.DataObject
) -> None:
    present = data.draw(st.lists(st.booleans(), min_size=len(counts), max_size=len(counts)))
    if not any(present):
        present[0] = True
    rng = np.random.default_rng(len(counts))
    gradients = rng.standard_normal((sum(present), 5)).astype(np.float32)
    for policy in (FedAvg(), CoordinateMedian(), TrimmedMean(), Krum()):
        p = policy.aggregate(make_input(gradients, counts, present)).probabilities
        assert p.shape == (len(counts),)
        assert np.all(p >= 0)
        assert p.sum() == pytest.approx(1.0)
        assert np.all(p[~np.array(present)] == 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(0, 10_000))
def test_node_order_does_not_change_the_second_gradient(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gradients = rng.standard_normal((n, 4)).astype(np.float32)
    counts = rng.integers(1, 50, n).astype(float)
    order = rng.permutation(n)
    for policy in (FedAvg(), CoordinateMedian(), TrimmedMean()):
        a = policy.aggregate(make_input(gradients, list(counts))).second_gradient
        b = policy.aggregate(make_input(gradients[order], list(counts[order]))).second_gradient
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_coordinate_median_and_shares() -> None:
    gradients = np.array([[1.0, 10.0], [2.0, 30.0], [100.0, 20.0]], dtype=np.float32)
    median, shares = coordinate_median(gradients)
    np.testing.assert_allclose(median, [2.0, 20.0])
    np.testing.assert_allclose(shares, [0.0, 0.5, 0.5])  # node 1 supplies x, node 2 supplies y


def test_median_of_an_even_count_averages_the_middle_two() -> None:
    gradients = np.array([[1.0], [2.0], [4.0], [100.0]], dtype=np.float32)
    median, shares = coordinate_median(gradients)
    np.testing.assert_allclose(median, [3.0])
    np.testing.assert_allclose(shares, [0.0, 0.5, 0.5, 0.0])


def test_trimmed_mean_drops_the_extremes() -> None:
    gradients = np.array([[-100.0], [1.0], [2.0], [3.0], [100.0]], dtype=np.float32)
    mean, shares = trimmed_mean(gradients, 0.2)
    np.testing.assert_allclose(mean, [2.0])
    np.testing.assert_allclose(shares, [0, 1 / 3, 1 / 3, 1 / 3, 0])


def test_krum_picks_the_gradient_closest_to_its_neighbours() -> None:
    honest = np.array([[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05]], dtype=np.float32)
    outlier = np.array([[50.0, -50.0]], dtype=np.float32)
    chosen = krum_select(np.concatenate([honest, outlier]), assumed_faulty=1, selected=1)
    assert chosen[0] in {0, 3}
    policy = Krum(KrumSettings(assumed_faulty=1, selected=2))
    result = policy.aggregate(make_input(np.concatenate([honest, outlier]), [1] * 5))
    assert result.probabilities[4] == 0.0
    assert result.probabilities.sum() == pytest.approx(1.0)


def test_leave_one_out_gradient_is_the_renormalised_rest() -> None:
    p = np.array([0.5, 0.25, 0.25])
    g = np.array([[4.0], [8.0], [0.0]], dtype=np.float32)
    without = leave_one_out_gradients(p, g)
    # Without node 0: (0.25·8 + 0.25·0) / 0.5 = 4; without node 1: (0.5·4)/0.75 = 8/3.
    np.testing.assert_allclose(without[:, 0], [4.0, 8 / 3, (0.5 * 4 + 0.25 * 8) / 0.75], rtol=1e-6)
    assert second_gradient(p, g)[0] == pytest.approx(4.0)


def test_bounded_prior_softmax_starts_at_the_prior_and_respects_the_bounds() -> None:
    prior = np.log(np.array([1.0, 3.0]))
    np.testing.assert_allclose(bounded_prior_softmax(prior, np.zeros(2), 4.0), [0.25, 0.75])
    p = bounded_prior_softmax(np.zeros(2), np.array([-1e6, 0.0]), 4.0)
    assert p[0] / p[1] == pytest.approx(np.exp(-4.0), rel=1e-6)
    p = bounded_prior_softmax(np.zeros(2), np.array([1e6, 0.0]), 4.0, upper_bound=1.0)
    assert p[0] / p[1] == pytest.approx(np.exp(1.0), rel=1e-6)


def test_data_size_probabilities_reject_bad_counts() -> None:
    with pytest.raises(ProtocolError):
        data_size_probabilities(np.array([0.0, 0.0]))


def _quadratic_validation(target: np.ndarray):
    """Validation loss = squared distance to ``target``; accuracy = 1 / (1 + loss)."""

    def validate(weights: np.ndarray) -> ValidationScores:
        losses = ((weights - target) ** 2).sum(axis=1).astype(np.float64)
        return ValidationScores(losses=losses, accuracies=1.0 / (1.0 + losses))

    return validate


def test_hedge_loo_moves_weight_away_from_a_node_that_pushes_the_wrong_way() -> None:
    target = np.array([1.0, 1.0], dtype=np.float32)
    validate = _quadratic_validation(target)
    policy = HedgeLoo()
    weights = np.zeros(2, dtype=np.float32)
    for round_index in range(15):
        # Honest nodes step toward the target (a first gradient is w − w_i); node 3 away.
        direction = (weights - target) * 0.3
        gradients = np.stack([direction, direction * 1.1, direction * 0.9, -3 * direction])
        round_input = RoundInput(
            round_index=round_index,
            roster=("a", "b", "c", "bad"),
            sample_counts=np.ones(4),
            present=np.ones(4, dtype=bool),
            global_weights=weights,
            first_gradients=gradients.astype(np.float32),
            validate=validate,
        )
        result = policy.aggregate(round_input)
        weights = weights - result.second_gradient
    assert result.probabilities[3] < 0.05
    assert float(((weights - target) ** 2).sum()) < 0.05


def test_hedge_settings_reject_bad_values() -> None:
    from accord.aggregation.hedge import HedgeLooSettings

    with pytest.raises(ConfigurationError, match="decay"):
        HedgeLooSettings(decay=1.5)
