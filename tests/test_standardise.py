"""Standardisation from pooled moments: exact against numpy on the pooled data."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from accord.data.standardise import (
    FeatureMoments,
    Standardisation,
    column_difference,
    scale_problem,
    warn_if_far_from_unit_scale,
)
from accord.errors import ConfigurationError, InputDataError

_values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def _parties(draw: st.DrawFn) -> list[np.ndarray]:
    width = draw(st.integers(1, 4))
    count = draw(st.integers(1, 5))
    return [
        draw(hnp.arrays(np.float64, (draw(st.integers(1, 12)), width), elements=_values))
        for _ in range(count)
    ]


@settings(max_examples=60, deadline=None)
@given(_parties(), st.randoms(use_true_random=False))
def test_pooled_moments_equal_numpy_on_the_pooled_data_in_any_order(
    parties: list[np.ndarray], random: object
) -> None:
    # Arrange
    pooled = np.concatenate(parties)
    shuffled = list(parties)
    random.shuffle(shuffled)  # type: ignore[attr-defined]

    # Act
    combined = FeatureMoments.combine([FeatureMoments.of(part) for part in parties])
    reordered = FeatureMoments.combine([FeatureMoments.of(part) for part in shuffled])
    transform = Standardisation.from_moments(combined)

    # Assert: the same bits in any order, and numpy's mean and std of the pooled rows
    assert combined.count == pooled.shape[0]
    assert np.array_equal(combined.sums, reordered.sums)
    assert np.array_equal(combined.sums_of_squares, reordered.sums_of_squares)
    np.testing.assert_allclose(transform.mean, pooled.mean(axis=0), rtol=1e-9, atol=1e-9)
    std = pooled.std(axis=0)
    informative = std > 1e-3 * np.maximum(1.0, np.abs(pooled.mean(axis=0)))
    np.testing.assert_allclose(transform.scale[informative], std[informative], rtol=1e-6, atol=1e-9)


def test_a_constant_feature_keeps_scale_one_and_is_centred() -> None:
    features = np.array([[3.0, 1.0], [3.0, 3.0]])

    transform = Standardisation.fit(features)

    assert transform.scale.tolist() == [1.0, 1.0]
    assert transform.mean.tolist() == [3.0, 2.0]
    assert transform.apply(features).tolist() == [[0.0, -1.0], [0.0, 1.0]]


def test_apply_gives_zero_mean_and_unit_variance_float32() -> None:
    features = np.random.default_rng(0).normal(50.0, 7.0, size=(200, 3))

    standardised = Standardisation.fit(features).apply(features)

    assert standardised.dtype == np.float32
    np.testing.assert_allclose(standardised.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardised.std(axis=0), 1.0, atol=1e-5)


def test_json_round_trip_keeps_every_bit_and_the_names() -> None:
    transform = Standardisation.fit(np.random.default_rng(1).normal(size=(30, 2)) / 3.0, ("a", "b"))

    again = Standardisation.from_json(json.loads(json.dumps(transform.to_json())))

    assert np.array_equal(again.mean, transform.mean)
    assert np.array_equal(again.scale, transform.scale)
    assert again.feature_names == ("a", "b")
    moments = FeatureMoments.of(np.arange(6.0).reshape(3, 2))
    back = FeatureMoments.from_json(json.loads(json.dumps(moments.to_json())))
    assert back.count == 3 and np.array_equal(back.sums, moments.sums)


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(InputDataError, match="format 'accord-standardisation'"):
        Standardisation.from_json({"mean": [0.0], "scale": [1.0]})
    with pytest.raises(InputDataError, match="scale: expected positive"):
        Standardisation(np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(InputDataError, match="disagree on the number of features"):
        FeatureMoments.combine(
            [FeatureMoments.of(np.ones((2, 2))), FeatureMoments.of(np.ones((2, 3)))]
        )
    with pytest.raises(InputDataError, match="expected samples with 2 features"):
        Standardisation.fit(np.ones((3, 2))).apply(np.ones((3, 4)))
    named = Standardisation.fit(np.ones((3, 2)), ("a", "b"))
    with pytest.raises(
        ConfigurationError,
        match="missing column\\(s\\) c; extra column\\(s\\) b in the standardisation",
    ):
        named.check_features(("a", "c"), "new.csv")
    assert column_difference(("a", "b"), ("b", "a")) == "columns in another order"


def test_features_far_from_unit_scale_are_named(caplog: pytest.LogCaptureFixture) -> None:
    pixels = np.tile(np.array([[0.0, 16.0, 1.0]]), (10, 1))

    with caplog.at_level(logging.WARNING):
        warned = warn_if_far_from_unit_scale(pixels, ("p0", "p1", "p2"), "node.csv")

    assert warned
    assert "1 of 3 features are far from unit scale (column 'p1'" in caplog.text
    assert "node.csv" in caplog.text
    assert scale_problem(pixels / 16.0) is None
