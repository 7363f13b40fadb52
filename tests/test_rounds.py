"""The round engine: checks on first gradients, FedAvg oracle, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from accord.aggregation import FedAvg, ValidationScores
from accord.errors import ConfigurationError, ProtocolError
from accord.rounds import RoundEngine, RoundSettings, check_first_gradient


def _validate(weights: np.ndarray) -> ValidationScores:
    losses = (weights.astype(np.float64) ** 2).sum(axis=1)
    return ValidationScores(losses=losses, accuracies=1.0 / (1.0 + losses))


def _engine(**kwargs) -> RoundEngine:
    return RoundEngine(
        roster=("a", "b", "c"),
        sample_counts={"a": 1, "b": 1, "c": 2},
        initial_weights=np.array([1.0, 1.0], dtype=np.float32),
        aggregator=FedAvg(),
        validate=_validate,
        **kwargs,
    )


def test_a_fedavg_round_is_w_minus_the_weighted_mean() -> None:
    engine = _engine(settings=RoundSettings(server_learning_rate=0.5))
    gradients = {
        "a": np.array([1.0, 0.0], dtype=np.float32),
        "b": np.array([0.0, 1.0], dtype=np.float32),
        "c": np.array([1.0, 1.0], dtype=np.float32),
    }
    record = engine.conclude(engine.aggregate(gradients))
    # G = (1·[1,0] + 1·[0,1] + 2·[1,1]) / 4 = [0.75, 0.75]; w' = 1 − 0.5·0.75
    np.testing.assert_allclose(engine.global_weights, [0.625, 0.625])
    assert record.probabilities == {"a": 0.25, "b": 0.25, "c": 0.5}
    assert record.validation_loss_before == pytest.approx(2.0)
    assert record.validation_loss_after == pytest.approx(2 * 0.625**2)
    assert engine.round_index == 1


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (np.array([np.nan, 0.0], dtype=np.float32), "NaN or Inf"),
        (np.array([np.inf, 0.0], dtype=np.float32), "NaN or Inf"),
        (np.zeros(3, dtype=np.float32), "shape"),
        (np.zeros(2, dtype=np.float64), "dtype"),
        ([0.0, 0.0], "numpy array"),
    ],
)
def test_malformed_first_gradients_are_dropped_with_a_reason(bad: object, reason: str) -> None:
    engine = _engine()
    good = np.array([1.0, 1.0], dtype=np.float32)
    pending = engine.aggregate({"a": good, "b": bad, "c": good})
    assert reason in pending.dropped["b"]
    assert pending.present == ("a", "c")
    record = engine.conclude(pending)
    assert record.probabilities["b"] == 0.0
    assert record.probabilities["a"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(engine.global_weights, [0.0, 0.0], atol=1e-7)
    assert check_first_gradient(good, 2) is None


def test_missing_and_failed_nodes_are_left_out() -> None:
    engine = _engine()
    pending = engine.aggregate(
        {"a": np.ones(2, dtype=np.float32)}, failures={"b": "timed out after 5 s"}
    )
    assert pending.dropped == {"b": "timed out after 5 s", "c": "no first gradient this round"}
    assert pending.aggregation.probabilities.tolist() == [1.0, 0.0, 0.0]


def test_a_round_without_any_usable_gradient_is_a_protocol_error() -> None:
    engine = _engine()
    with pytest.raises(ProtocolError, match="no usable first gradient"):
        engine.aggregate({"a": np.zeros(5, dtype=np.float32)})
    assert engine.round_index == 0


def test_engine_rejects_a_bad_roster_and_a_policy_that_needs_validation() -> None:
    from accord.aggregation.hedge import HedgeLoo

    with pytest.raises(ConfigurationError, match="distinct"):
        RoundEngine(("a", "a"), {"a": 1}, np.zeros(1, dtype=np.float32), FedAvg())
    with pytest.raises(ConfigurationError, match="validation set"):
        RoundEngine(("a",), {"a": 1}, np.zeros(1, dtype=np.float32), HedgeLoo())
    with pytest.raises(ConfigurationError, match="server_learning_rate"):
        RoundSettings(server_learning_rate=0.0)


def test_state_dict_restores_weights_and_round() -> None:
    engine = _engine()
    engine.conclude(engine.aggregate({n: np.ones(2, dtype=np.float32) for n in "abc"}))
    state = engine.state_dict()
    other = _engine()
    other.load_state_dict(state)
    assert other.round_index == 1
    np.testing.assert_array_equal(other.global_weights, engine.global_weights)
