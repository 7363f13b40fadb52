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
    bound_norms,
    bounded_prior_softmax,
    cap_rise,
    clearly_worse,
    leave_one_out_gradients,
    reweighted_gradients,
    second_gradient,
    step_normalised_leave_one_out_gradients,
)
from accord.aggregation.credit import leave_one_out_credit
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


def test_norm_bounding_scales_long_rows_to_the_bound_and_reports_the_factor() -> None:
    gradients = np.array([[3.0, 4.0], [0.0, 5.0], [5.0, 0.0], [30.0, 40.0]], dtype=np.float32)
    bounded, factors = bound_norms(gradients, 2.0)  # median norm 5 → bound 10
    np.testing.assert_allclose(np.linalg.norm(bounded, axis=1), [5.0, 5.0, 5.0, 10.0], rtol=1e-6)
    np.testing.assert_allclose(factors, [1.0, 1.0, 1.0, 0.2], rtol=1e-6)
    np.testing.assert_allclose(bounded[3] / np.linalg.norm(bounded[3]), [0.6, 0.8], rtol=1e-6)
    unbounded, ones = bound_norms(gradients, 0.0)
    assert unbounded is gradients and np.all(ones == 1.0)


def test_norm_bounding_takes_its_median_over_the_non_zero_rows() -> None:
    # Half the nodes free riders (zero updates): a median over every row would be half the
    # smallest honest norm, and every honest row but the shortest would be bounded (and its
    # node penalised each round), which once handed the riders 97 % of the weight.
    honest = np.array([[3.0, 4.0], [0.0, 6.0], [7.0, 0.0], [0.0, 8.0]], dtype=np.float32)
    gradients = np.concatenate([honest, np.zeros((4, 2), dtype=np.float32)])
    bounded, factors = bound_norms(gradients, 2.0)  # median of 5, 6, 7, 8 → bound 13
    np.testing.assert_array_equal(factors, np.ones(8))
    np.testing.assert_array_equal(bounded, gradients)
    all_zero = np.zeros((3, 2), dtype=np.float32)
    zeros, ones = bound_norms(all_zero, 2.0)
    np.testing.assert_array_equal(zeros, all_zero)
    np.testing.assert_array_equal(ones, np.ones(3))


def test_step_normalised_leave_one_out_keeps_the_step_length() -> None:
    rng = np.random.default_rng(3)
    gradients = rng.normal(size=(4, 6)).astype(np.float32)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    total = second_gradient(p, gradients)
    rows = step_normalised_leave_one_out_gradients(p, gradients)
    np.testing.assert_allclose(
        np.linalg.norm(rows, axis=1), np.full(4, np.linalg.norm(total)), rtol=1e-5
    )
    renormalised = leave_one_out_gradients(p, gradients)
    cosines = (rows * renormalised).sum(axis=1) / (
        np.linalg.norm(rows, axis=1) * np.linalg.norm(renormalised, axis=1)
    )
    np.testing.assert_allclose(cosines, np.ones(4), rtol=1e-5)


def test_step_normalised_rows_of_a_long_update_keep_its_length_without_overflow() -> None:
    # A scale attack (x1e20): the float32 square of the step overflows, its norm does not.
    # Warnings are errors in the tests; a float32 norm would be inf and the rows NaN.
    gradients = np.array([[3e20, 4e20], [1e20, 0.0], [0.0, 1e20]], dtype=np.float32)
    p = np.array([0.5, 0.25, 0.25])
    length = np.linalg.norm(second_gradient(p, gradients).astype(np.float64))
    for rows in (
        step_normalised_leave_one_out_gradients(p, gradients),
        reweighted_gradients(p, gradients, np.full(3, 0.5), step_normalised=True),
    ):
        assert np.isfinite(rows).all()
        norms = np.linalg.norm(rows.astype(np.float64), axis=1)
        np.testing.assert_allclose(norms, length, rtol=1e-5)


def test_a_free_rider_earns_nothing_for_damping_under_the_step_normalised_credit() -> None:
    # Honest nodes overshoot the target: without the free rider's zero update the
    # renormalised step is longer and worse, so the renormalised credit pays the free rider.
    target = np.array([1.0, 1.0], dtype=np.float32)
    validate = _quadratic_validation(target)
    weights = np.zeros(2, dtype=np.float32)
    honest = (weights - target) * 1.5
    gradients = np.stack([honest, honest, honest, np.zeros(2, dtype=np.float32)])
    p = np.full(4, 0.25)
    renormalised = leave_one_out_credit(validate, weights, p, gradients, 1.0)
    normalised = leave_one_out_credit(validate, weights, p, gradients, 1.0, step_normalised=True)
    assert renormalised.credit[3] > 0.1
    assert normalised.credit[3] == pytest.approx(0.0, abs=1e-6)


def test_reweighted_gradients_leave_out_at_target_zero_and_lift_to_a_given_weight() -> None:
    rng = np.random.default_rng(5)
    gradients = rng.normal(size=(4, 6)).astype(np.float32)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    zeros = np.zeros(4)
    np.testing.assert_allclose(
        reweighted_gradients(p, gradients, zeros), leave_one_out_gradients(p, gradients), atol=1e-6
    )
    np.testing.assert_allclose(
        reweighted_gradients(p, gradients, zeros, step_normalised=True),
        step_normalised_leave_one_out_gradients(p, gradients),
        atol=1e-6,
    )
    # Lifting node 0 from 0.1 to 0.4: the second gradient of the weights (0.4, then the
    # others' 0.9 rescaled to 0.6).
    rows = reweighted_gradients(p, gradients, np.array([0.4, 0.0, 0.0, 0.0]))
    lifted = np.array([0.4, 0.2 * 0.6 / 0.9, 0.3 * 0.6 / 0.9, 0.4 * 0.6 / 0.9])
    np.testing.assert_allclose(rows[0], second_gradient(lifted, gradients), atol=1e-6)


def test_a_node_held_down_is_credited_by_lifting_it_to_its_share() -> None:
    # Node 3 is honest but held at 1 % of the weight: leaving it out changes almost
    # nothing, lifting it back to its share (25 %) shows it helps; a harmful node held
    # down shows harm when lifted.
    target = np.array([1.0, 1.0], dtype=np.float32)
    validate = _quadratic_validation(target)
    weights = np.zeros(2, dtype=np.float32)
    honest = (weights - target) * 0.5
    gradients = np.stack([honest, honest * 0.2, honest * 0.2, honest]).astype(np.float32)
    p = np.array([0.33, 0.33, 0.33, 0.01])
    share = np.full(4, 0.25)
    plain = leave_one_out_credit(validate, weights, p, gradients, 1.0)
    lift_to = np.where(p < 0.5 * share, share, 0.0)
    lifted = leave_one_out_credit(validate, weights, p, gradients, 1.0, lift_to=lift_to)
    assert abs(plain.credit[3]) < 0.02
    moved = p * 0.75 / 0.99
    moved[3] = 0.25
    after = validate((weights - second_gradient(p, gradients))[None, :]).losses[0]
    expected = after - validate((weights - second_gradient(moved, gradients))[None, :]).losses[0]
    assert lifted.credit[3] == pytest.approx(expected, rel=1e-4)
    assert lifted.credit[3] > 0.1
    np.testing.assert_allclose(lifted.credit[:3], plain.credit[:3], rtol=1e-6)
    harmful = gradients.copy()
    harmful[3] = -3 * honest
    assert leave_one_out_credit(validate, weights, p, harmful, 1.0, lift_to=lift_to).credit[3] < 0


def test_clearly_worse_needs_k_standard_errors() -> None:
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.5, 1.5, size=400)
    noise = rng.normal(0.0, 0.1, size=400)
    # Mean difference 0.02 against a standard error of 0.1 / 20 = 0.005: four of them.
    candidate = reference + 0.02 + noise - noise.mean()
    assert clearly_worse(candidate, reference, 2.0)
    assert not clearly_worse(candidate, reference, 6.0)
    assert not clearly_worse(reference - 0.01, reference, 2.0)  # better is never worse
    assert clearly_worse(np.append(candidate[1:], np.nan), reference, 2.0)
    assert not clearly_worse(candidate, np.append(reference[1:], np.inf), 2.0)


def test_cap_rise_limits_how_fast_a_suppressed_node_climbs_back() -> None:
    log_prior = np.log(np.full(4, 0.25))
    previous = bounded_prior_softmax(log_prior, np.array([0.0, 0.0, 0.0, -4.0]), 4.0)
    proposal = np.full(4, 0.25)  # the actor would restore node 3 at once
    capped = cap_rise(proposal, previous, log_prior, 0.25)
    rise = np.log(capped[3] / capped[0]) - np.log(previous[3] / previous[0])
    assert rise == pytest.approx(0.25, abs=1e-9)
    assert cap_rise(proposal, previous, log_prior, 0.0) is proposal
    # A node absent last round has no record and is not capped.
    absent = previous.copy()
    absent[3] = 0.0
    np.testing.assert_allclose(cap_rise(proposal, absent, log_prior, 0.25), proposal)


def test_validation_scores_carry_per_sample_losses() -> None:
    from accord.training.evaluation import make_validation_fn
    from accord.training.models import FlatModel, ModelSpec, build_model

    rng = np.random.default_rng(1)
    features = rng.normal(size=(30, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=30).astype(np.int64)
    flat = FlatModel(build_model(ModelSpec(), 4, 3, 0))
    validate = make_validation_fn(flat, features, labels, chunk=2)
    base = flat.get_flat()
    candidates = np.stack([base, base * 0.5, base * 2.0])
    scores = validate(candidates)
    assert scores.sample_losses is not None
    assert scores.sample_losses.shape == (3, 30)
    np.testing.assert_allclose(scores.sample_losses.mean(axis=1), scores.losses, rtol=1e-6)


def test_hedge_loo_carries_an_absent_node_s_credit_over_unchanged() -> None:
    import numpy as np

    from accord.aggregation.base import RoundInput, ValidationScores
    from accord.aggregation.hedge import HedgeLoo

    policy = HedgeLoo()
    policy.credit = {"a": 2.0, "b": -1.0, "c": 0.5}

    def validate(weights: np.ndarray) -> ValidationScores:
        losses = np.asarray(np.abs(weights).sum(axis=1), dtype=np.float64)
        return ValidationScores(losses=losses, accuracies=np.zeros(len(losses)))

    gradients = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)  # a and b answer
    policy.aggregate(
        RoundInput(
            round_index=0,
            roster=("a", "b", "c"),
            sample_counts=np.array([1.0, 1.0, 1.0]),
            present=np.array([True, True, False]),
            global_weights=np.zeros(2, dtype=np.float32),
            first_gradients=gradients,
            validate=validate,
        )
    )
    assert policy.credit["c"] == 0.5  # absent: not aged, not credited
    assert policy.credit["a"] != 2.0 and policy.credit["b"] != -1.0


def test_candidates_are_formed_and_scored_a_block_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import accord.aggregation.credit as credit_module

    target = np.linspace(-1.0, 1.0, 8).astype(np.float32)
    plain = _quadratic_validation(target)
    sizes: list[int] = []

    def validate(weights: np.ndarray) -> ValidationScores:
        sizes.append(weights.shape[0])
        return plain(weights)

    rng = np.random.default_rng(7)
    n = 150  # 151 candidates: blocks of 64, 64 and 23
    gradients = rng.normal(size=(n, 8)).astype(np.float32)
    weights = rng.normal(size=8).astype(np.float32)
    p = rng.dirichlet(np.ones(n))
    blocked = leave_one_out_credit(validate, weights, p, gradients, 0.5, step_normalised=True)
    assert max(sizes) <= credit_module.CANDIDATE_BLOCK and sum(sizes) == n + 1
    monkeypatch.setattr(credit_module, "CANDIDATE_BLOCK", 10_000)  # one stack, as before
    whole = leave_one_out_credit(validate, weights, p, gradients, 0.5, step_normalised=True)
    assert sizes[-1] == n + 1
    np.testing.assert_array_equal(blocked.credit, whole.credit)


def test_node_features_score_their_candidates_a_block_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import accord.aggregation.credit as credit_module
    from accord.aggregation.credit import node_features

    validate = _quadratic_validation(np.linspace(-1.0, 1.0, 8).astype(np.float32))
    rng = np.random.default_rng(8)
    n = 140  # w, 140 alone candidates, a reference and two candidates: 144 rows
    gradients = rng.normal(size=(n, 8)).astype(np.float32)
    weights = rng.normal(size=8).astype(np.float32)

    def features() -> credit_module.NodeFeatures:
        return node_features(
            validate,
            weights,
            gradients,
            0.5,
            gradients[0],
            np.ones(n),
            np.zeros(n),
            reference_gradient=gradients.mean(axis=0),
            candidate_gradients=gradients[:2],
        )

    blocked = features()
    monkeypatch.setattr(credit_module, "CANDIDATE_BLOCK", 10_000)
    whole = features()
    np.testing.assert_array_equal(blocked.values, whole.values)
    assert blocked.reference_loss == whole.reference_loss
    np.testing.assert_array_equal(blocked.candidate_losses, whole.candidate_losses)


def test_the_fast_median_is_numpys_bit_for_bit() -> None:
    from accord.aggregation.combine import median

    rng = np.random.default_rng(0)
    for size in range(1, 24):
        for dtype in (np.float64, np.float32):
            values = (rng.standard_normal(size) * 10.0 ** rng.uniform(-30, 30)).astype(dtype)
            assert median(values) == float(np.median(values))
    assert np.isnan(median(np.array([1.0, np.nan, 3.0])))
