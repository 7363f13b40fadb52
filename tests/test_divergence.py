"""A diverging policy: non-finite values are isolated, reported and never crash the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accord.aggregation import FedAvg, ValidationScores
from accord.aggregation.base import Aggregation, RoundFeedback, RoundInput
from accord.aggregation.credit import robust_z
from accord.commands.run_output import faulty_mass_note, summary_lines
from accord.errors import ProtocolError
from accord.reporting.writer import RunFolder, finite_json
from accord.rounds import DivergedError, RoundEngine, RoundSettings


def test_robust_z_scores_a_non_finite_value_as_the_worst_without_a_warning() -> None:
    values = np.array([0.1, np.inf, -0.2, np.nan, 0.0, 0.3])
    scores = robust_z(values, clip=5.0)  # warnings are errors in the tests
    assert scores[1] == scores[3] == 5.0
    np.testing.assert_array_equal(scores[[0, 2, 4, 5]], robust_z(values[[0, 2, 4, 5]], 5.0))
    np.testing.assert_array_equal(robust_z(np.array([np.inf, np.inf])), [5.0, 5.0])


# ------------------------------------------------------------------ the round engine


class _Answer(FedAvg):
    """FedAvg whose probabilities are replaced by ``probabilities`` (and counts learns)."""

    name = "broken"

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.probabilities = np.array(probabilities, dtype=np.float64)
        self.learned = 0

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        honest = super().aggregate(round_input)
        return Aggregation(self.probabilities, honest.second_gradient)

    def learn(self, feedback: RoundFeedback) -> None:
        self.learned += 1


def _validate(weights: np.ndarray) -> ValidationScores:
    losses = (weights.astype(np.float64) ** 2).sum(axis=1)
    return ValidationScores(losses=losses, accuracies=1.0 / (1.0 + losses))


def _engine(aggregator: Any, validate: Any = _validate) -> RoundEngine:
    return RoundEngine(
        roster=("a", "b"),
        sample_counts={"a": 1, "b": 1},
        initial_weights=np.array([1.0, 1.0], dtype=np.float32),
        aggregator=aggregator,
        validate=validate,
    )


_GOOD = {"a": np.ones(2, dtype=np.float32), "b": np.ones(2, dtype=np.float32)}


def test_non_finite_probabilities_are_a_divergence_naming_policy_and_round() -> None:
    engine = _engine(_Answer([0.5, 0.5]))
    engine.conclude(engine.aggregate(_GOOD))
    engine.aggregator.probabilities = np.array([np.nan, np.nan])  # type: ignore[attr-defined]
    with pytest.raises(DivergedError) as caught:
        engine.aggregate(_GOOD)
    assert caught.value.reason == "policy broken returned non-finite probabilities at round 2"


def test_malformed_finite_probabilities_name_policy_and_round() -> None:
    engine = _engine(_Answer([0.7, 0.7]))
    with pytest.raises(
        ProtocolError, match=r"^policy broken's probabilities must sum to 1 .* at round 1"
    ):
        engine.aggregate(_GOOD)


def test_a_non_finite_validation_loss_ends_the_run_without_learning_from_it() -> None:
    def exploding(weights: np.ndarray) -> ValidationScores:
        scores = _validate(weights)
        losses = np.where(weights[:, 0] < 0.9, np.inf, scores.losses)  # the new weights
        return ValidationScores(losses=losses, accuracies=scores.accuracies)

    policy = _Answer([0.5, 0.5])
    engine = _engine(policy, exploding)
    record = engine.conclude(engine.aggregate(_GOOD))
    assert record.diverged == "validation loss is not finite at round 1"
    assert record.to_json()["diverged"] == record.diverged
    assert policy.learned == 0
    with pytest.raises(DivergedError, match=r"^validation loss is not finite at round 1$"):
        engine.aggregate(_GOOD)


def test_every_first_gradient_non_finite_is_a_divergence() -> None:
    engine = _engine(FedAvg())
    nan = np.full(2, np.nan, dtype=np.float32)
    with pytest.raises(DivergedError, match=r"^every first gradient is not finite at round 1$"):
        engine.aggregate({"a": nan, "b": nan})


def test_non_finite_answers_beside_a_node_that_did_not_answer_are_a_divergence() -> None:
    engine = _engine(FedAvg())
    nan = np.full(2, np.nan, dtype=np.float32)
    with pytest.raises(DivergedError, match=r"^every first gradient is not finite at round 1$"):
        engine.aggregate({"a": nan}, failures={"b": "node disconnected"})
    # Nobody answered at all: a failed round (retried), not a divergence.
    with pytest.raises(ProtocolError, match="no usable first gradient") as caught:
        engine.aggregate({}, failures={"a": "not connected", "b": "node disconnected"})
    assert not isinstance(caught.value, DivergedError)


def test_overflowing_weights_are_a_divergence() -> None:
    engine = _engine(FedAvg())
    engine.settings = RoundSettings(server_learning_rate=10.0)
    huge = np.full(2, -3e38, dtype=np.float32)  # 10 · 3e38 overflows float32
    with pytest.raises(DivergedError, match=r"^the new weights are not finite at round 1$"):
        engine.aggregate({"a": huge, "b": huge})


# ------------------------------------------------------------------ writing


def test_non_finite_values_are_written_as_null_with_their_paths(tmp_path: Path) -> None:
    clean, found = finite_json({"a": float("nan"), "b": [1.0, np.float32("inf")], "c": 2})
    assert clean == {"a": None, "b": [1.0, None], "c": 2}
    assert found == ["a", "b[1]"]
    folder = RunFolder(tmp_path / "run")
    folder.write_summary({"loss": float("-inf"), "ok": np.float64(0.5)})
    strict = json.loads(
        (tmp_path / "run" / "summary.json").read_text(),
        parse_constant=lambda name: pytest.fail(f"{name} in JSON"),
    )
    assert strict == {"loss": None, "ok": 0.5, "non_finite": ["loss"]}


def test_the_final_table_shows_a_diverged_policy_as_such() -> None:
    entry = {
        "final_test_accuracy": None,
        "best_test_accuracy": 0.37,
        "rounds": 65,
        "faulty_mass_final": 0.351,
        "mean_round_seconds": 0.01,
        "policy_share_of_round_time": 0.01,
        "stop_reason": "diverged: validation loss is not finite at round 65",
        "diverged": True,
    }
    (_, line) = summary_lines({"fedavg": entry}, with_faulty=True)
    assert line.split()[:3] == ["fedavg", "diverged", "0.3700"]
    assert line.endswith("diverged: validation loss is not finite at round 65")


def test_the_footer_names_fedavg_only_when_it_ran() -> None:
    assert "FedAvg gives them" in faulty_mass_note(0.3, ["fedavg", "median"], False)
    note = faulty_mass_note(0.3, ["median"], False)
    assert "FedAvg" not in note and note.endswith("the faulty nodes' data share is 0.300)")
    assert "nodes faulty in the last round" in faulty_mass_note(0.3, ["median"], True)


# ------------------------------------------------------------------ the command


def test_the_issue_repro_finishes_reports_every_policy_and_exits_4(tmp_path: Path) -> None:
    # FedAvg diverges on this scenario (sign flippers ×4 hold 35 % of the data) at round 65;
    # the median does not. Warnings would be printed: -W error makes them fail the run.
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-W", "error", "-m", "accord.cli", "simulate",
            "--dataset", "breast-cancer", "--nodes", "8", "--fault", "sign-flip",
            "--faulty", "2", "--seed", "0", "--policies", "fedavg,median", "--rounds", "70",
            "--every", "50", "--out", str(run_dir),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr and "Warning:" not in result.stderr
    summary = json.loads(
        (run_dir / "summary.json").read_text(),
        parse_constant=lambda name: pytest.fail(f"{name} in summary.json"),
    )
    assert summary["diverged"] == ["fedavg"]
    fedavg, median = summary["results"]["fedavg"], summary["results"]["median"]
    assert fedavg["stop_reason"] == "diverged: validation loss is not finite at round 65"
    assert fedavg["diverged"] is True and fedavg["rounds"] == 65
    assert median["stop_reason"] == "70 rounds done" and median["final_test_accuracy"] > 0.85
    lines = [
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    last = [line for line in lines if line["policy"] == "fedavg"][-1]
    assert last["validation_loss_after"] is None and "validation_loss_after" in last["non_finite"]
    assert set(summary["plots"]) == {
        "accuracy.png", "probabilities-fedavg.png", "probabilities-median.png"
    }  # fmt: skip
    table = result.stdout.splitlines()
    rows = [line for line in table if line.split(" | ")[0].strip().isdigit()]
    assert [int(row.split("|")[0]) for row in rows] == [1, 50, 65, 70]  # and where it stopped
    assert rows[2].split(" | ")[1].strip() == "(diverged)"
    assert any(line.split()[:2] == ["fedavg", "diverged"] for line in table)
    assert "FedAvg gives them their data share" in result.stdout
