"""The χ² test of each update's length in the span of the others (aggregation/noise_test)."""

from __future__ import annotations

import numpy as np
import pytest

from accord.aggregation.noise_test import (
    GRAM_BUDGET,
    MAX_TEST_COORDINATES,
    MIN_SPAN_SHARE,
    chi_square_quantile,
    chi_square_survival,
    coordinate_step,
    has_power,
    noise_like_rows,
    noise_like_rows_of_gram,
    span_statistics,
)

# scipy.stats.chi2.isf(p, dof), for the values the policy meets.
QUANTILES = {
    (1, 1e-6): 23.928126976934827,
    (2, 1e-6): 27.631021115928547,
    (9, 1e-6): 44.81093787068782,
    (9, 1e-3): 27.877164871256575,
    (19, 1e-6): 63.677052285677995,
    (99, 1e-6): 180.79201532589974,
}


@pytest.mark.parametrize(("dof", "p"), sorted(QUANTILES))
def test_chi_square_quantile_matches_scipy(dof: int, p: float) -> None:
    assert chi_square_quantile(dof, p) == pytest.approx(QUANTILES[(dof, p)], rel=1e-8)
    assert chi_square_survival(QUANTILES[(dof, p)], dof) == pytest.approx(p, rel=1e-6)


def test_chi_square_rejects_what_has_no_quantile() -> None:
    with pytest.raises(ValueError, match="p must be in"):
        chi_square_quantile(3, 0.0)
    with pytest.raises(ValueError, match="dof"):
        chi_square_survival(1.0, 0)


def _honest_and_noise(rng: np.random.Generator, honest: int, noise: int, dim: int) -> np.ndarray:
    # Honest updates share a direction and differ by their own data; noise is isotropic
    # with an honest update's length.
    shared = rng.normal(size=dim)
    rows = [shared + 2.0 * rng.normal(size=dim) for _ in range(honest)]
    length = float(np.linalg.norm(rows[0]))
    for _ in range(noise):
        draw = rng.normal(size=dim)
        rows.append(draw * length / np.linalg.norm(draw))
    return np.asarray(rows, dtype=np.float32)


def test_noise_rows_are_flagged_and_honest_rows_are_not() -> None:
    rng = np.random.default_rng(0)
    gradients = _honest_and_noise(rng, honest=6, noise=4, dim=5000)
    flagged = noise_like_rows(gradients, 1e-6)
    np.testing.assert_array_equal(flagged, [False] * 6 + [True] * 4)


def test_the_statistic_of_isotropic_noise_is_chi_square() -> None:
    # Under the null the test rejects at its nominal rate: 5 % of noise rows pass the 5 %
    # quantile (0.049 here over 1,200 draws), none of the honest rows fall below it.
    rng = np.random.default_rng(1)
    honest = _honest_and_noise(rng, honest=6, noise=0, dim=2000)
    above, honest_below = 0, 0
    for _ in range(300):
        noise = _honest_and_noise(rng, honest=1, noise=4, dim=2000)[1:]
        statistics, ranks, read = span_statistics(np.concatenate([honest, noise]))
        assert read == 2000
        np.testing.assert_array_equal(ranks, np.full(10, 9))
        quantile = chi_square_quantile(9, 0.05)
        above += int(np.sum(statistics[6:] > quantile))
        honest_below += int(np.sum(statistics[:6] < quantile))
    assert 0.03 < above / 1200 < 0.07
    assert honest_below == 0


def test_a_row_in_the_span_of_the_others_has_all_its_length_there() -> None:
    rng = np.random.default_rng(2)
    others = rng.normal(size=(3, 500)).astype(np.float32)
    combined = (others[0] - 2.0 * others[2])[None, :]
    statistics, ranks, read = span_statistics(np.concatenate([others, combined]))
    assert statistics[3] == pytest.approx(read, rel=1e-6)
    assert ranks[3] == 3


def test_zero_and_non_finite_rows_are_left_out_of_the_test_and_the_spans() -> None:
    rng = np.random.default_rng(3)
    gradients = _honest_and_noise(rng, honest=5, noise=1, dim=3000)
    broken = np.full((1, 3000), np.nan, dtype=np.float32)
    # A scaled honest update, whose squares overflow float32.
    huge = (gradients[:1] / np.linalg.norm(gradients[0]) * 1e30).astype(np.float32)
    rows = np.concatenate([gradients, np.zeros((2, 3000), np.float32), broken, huge])
    statistics, ranks, _ = span_statistics(rows)
    # Seven rows are tested, each against the six others (the scaled row is the first's
    # twin: each of the two lies wholly in the others' span).
    np.testing.assert_array_equal(ranks, [6] * 6 + [0, 0, 0, 6])
    assert statistics[0] == pytest.approx(3000, rel=1e-6)
    assert statistics[9] == pytest.approx(3000, rel=1e-6)
    np.testing.assert_array_equal(statistics[6:9], 0.0)
    np.testing.assert_array_equal(noise_like_rows(rows, 1e-6), [False] * 5 + [True] + [False] * 4)


def test_collinear_updates_still_give_every_row_its_share() -> None:
    # Early in training honest updates can be nearly collinear; two identical ones make
    # the Gram matrix singular. The ridge keeps one inverse: the twins lie in the span,
    # the noise row does not (its span has rank 2, and the bar is that of rank 3).
    rng = np.random.default_rng(4)
    honest = _honest_and_noise(rng, honest=2, noise=1, dim=4000)
    rows = np.concatenate([honest[:1], honest[:1], honest[1:]])
    statistics, ranks, _ = span_statistics(rows)
    np.testing.assert_array_equal(ranks, [3, 3, 3, 3])
    assert statistics[0] == pytest.approx(4000, rel=1e-6)
    assert statistics[3] < chi_square_quantile(2, 1e-3)
    assert noise_like_rows(rows, 1e-6).tolist() == [False, False, False, True]


def test_no_row_is_flagged_unless_most_rows_pass() -> None:
    # Converged training: every update is minibatch noise, and no node is singled out.
    rng = np.random.default_rng(5)
    assert not noise_like_rows(_honest_and_noise(rng, honest=1, noise=5, dim=3000), 1e-6).any()
    assert not noise_like_rows(_honest_and_noise(rng, honest=2, noise=2, dim=3000), 1e-6).any()
    assert noise_like_rows(_honest_and_noise(rng, honest=3, noise=2, dim=3000), 1e-6).sum() == 2
    assert not noise_like_rows(_honest_and_noise(rng, honest=6, noise=4, dim=3000), 0.0).any()
    assert not noise_like_rows(np.ones((1, 10), np.float32), 1e-6).any()


def test_a_large_model_is_tested_on_a_fixed_subset_of_its_coordinates() -> None:
    rng = np.random.default_rng(6)
    dim = 3 * MAX_TEST_COORDINATES + 7
    gradients = _honest_and_noise(rng, honest=4, noise=1, dim=dim)
    _, _, read = span_statistics(gradients)
    assert read == len(range(0, dim, 4)) <= MAX_TEST_COORDINATES
    assert noise_like_rows(gradients, 1e-6).tolist() == [False] * 4 + [True]


def test_a_model_too_small_for_the_test_to_have_power_is_not_tested() -> None:
    # 10 nodes: the 5 % quantile of chi2_9 is 16.9, so an update needs 169 coordinates
    # before one keeping a tenth of its squared length in the others' span could pass.
    rng = np.random.default_rng(7)
    quantile = chi_square_quantile(9, 0.05)
    small = int(quantile / MIN_SPAN_SHARE) - 1
    assert not noise_like_rows(_honest_and_noise(rng, honest=6, noise=4, dim=small), 0.05).any()
    large = int(quantile / MIN_SPAN_SHARE) + 400
    flagged = noise_like_rows(_honest_and_noise(rng, honest=6, noise=4, dim=large), 0.05)
    # At p = 0.05 a noise row passes 1 time in 20: here one of the four does.
    assert not flagged[:6].any()
    assert flagged[6:].sum() == 3


def test_the_gram_matrix_of_the_rows_gives_the_same_flags() -> None:
    # The Actor-Critic passes the Gram matrix of the norms' own pass over the rows.
    from accord.aggregation.combine import row_gram

    rng = np.random.default_rng(8)
    rows = _honest_and_noise(rng, honest=7, noise=3, dim=6570)
    gram = row_gram(rows)
    np.testing.assert_allclose(np.sqrt(np.diag(gram)), np.linalg.norm(rows, axis=1), rtol=1e-6)
    flags = noise_like_rows_of_gram(gram, rows.shape[1], 0.05)
    np.testing.assert_array_equal(flags, noise_like_rows(rows, 0.05))
    assert flags.tolist() == [False] * 7 + [True] * 3


@pytest.mark.parametrize(
    ("dof", "expected"), [(999, 1073.6426506574246), (4999, 5164.598068527191)]
)
def test_chi_square_quantile_of_many_nodes(dof: int, expected: float) -> None:
    # The closed form's terms reach e^(x/2) before e^(−x/2) brings them back: summed
    # directly they overflowed at about 700 nodes and the quantile's search never ended.
    assert chi_square_quantile(dof, 0.05) == pytest.approx(expected, rel=1e-8)
    assert chi_square_survival(1500.0, 999) == pytest.approx(8.513135655488133e-23, rel=1e-8)


def test_many_nodes_read_fewer_coordinates_and_the_test_stands_aside_without_power() -> None:
    # 1,000 updates of 20,000 parameters: the Gram matrix may cost 2^28 products, so 268
    # coordinates are read, where no update could pass a chi2_999 bar: nothing is flagged
    # and nothing is computed (this took minutes before the budget).
    rows = np.random.default_rng(9).standard_normal((1000, 20_000)).astype(np.float32)
    assert len(range(0, 20_000, coordinate_step(1000, 20_000))) <= GRAM_BUDGET // 1000**2
    assert not has_power(1000, 268, 0.05)
    assert not noise_like_rows(rows, 0.05).any()
    # 200 nodes keep their power on 6,710 coordinates of a larger model.
    assert has_power(200, GRAM_BUDGET // 200**2, 0.05)
