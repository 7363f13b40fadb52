"""A diverging policy: non-finite values are isolated, reported and never crash the run."""

from __future__ import annotations

import numpy as np

from accord.aggregation.credit import robust_z


def test_robust_z_scores_a_non_finite_value_as_the_worst_without_a_warning() -> None:
    values = np.array([0.1, np.inf, -0.2, np.nan, 0.0, 0.3])
    scores = robust_z(values, clip=5.0)  # warnings are errors in the tests
    assert scores[1] == scores[3] == 5.0
    np.testing.assert_array_equal(scores[[0, 2, 4, 5]], robust_z(values[[0, 2, 4, 5]], 5.0))
    np.testing.assert_array_equal(robust_z(np.array([np.inf, np.inf])), [5.0, 5.0])
