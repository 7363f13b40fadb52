"""FLTrust and Zeno: the two published rules that use the server's own data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.aggregation import (
    POLICIES,
    FLTrust,
    FLTrustSettings,
    RoundInput,
    ValidationScores,
    Zeno,
    ZenoSettings,
    make_policy,
)
from accord.aggregation.base import FloatArray
from accord.aggregation.fltrust import fltrust_combine
from accord.aggregation.zeno import zeno_keep_count, zeno_scores
from accord.errors import ConfigurationError, ProtocolError


def _input(
    gradients: np.ndarray,
    counts: list[float],
    *,
    present: list[bool] | None = None,
    reference: np.ndarray | None = None,
    validate: object = None,
    roster: tuple[str, ...] | None = None,
) -> RoundInput:
    names = roster or tuple(f"n{i}" for i in range(len(counts)))
    server_update = None
    if reference is not None:
        fixed = reference.astype(np.float32)

        def server_update(weights: FloatArray, round_index: int) -> FloatArray:
            return fixed

    return RoundInput(
        round_index=0,
        roster=names,
        sample_counts=np.array(counts, dtype=np.float64),
        present=np.array(present if present is not None else [True] * len(counts)),
        global_weights=np.zeros(gradients.shape[1], dtype=np.float32),
        first_gradients=gradients.astype(np.float32),
        validate=validate,  # type: ignore[arg-type]
        server_update=server_update,
    )


def _quadratic(target: list[float]):  # type: ignore[no-untyped-def]
    """Validation loss ``‖w − target‖²``."""
    goal = np.array(target, dtype=np.float64)

    def validate(weights: np.ndarray) -> ValidationScores:
        with np.errstate(over="ignore", invalid="ignore"):
            losses = ((weights.astype(np.float64) - goal) ** 2).sum(axis=1)
        return ValidationScores(losses=losses, accuracies=np.zeros(losses.shape[0]))

    return validate


# ----------------------------------------------------------------------------- FLTrust


def test_fltrust_by_hand() -> None:
    # Reference [3, 4] (norm 5). [6, 8]: cosine 1, rescaled to [3, 4]. [0, 1]: cosine 4/5,
    # rescaled to [0, 5]. [−3, −4]: cosine −1, trust 0. Trust sum 1.8:
    # p = [1/1.8, 0.8/1.8, 0] = [5/9, 4/9, 0]; G = (1·[3, 4] + 0.8·[0, 5]) / 1.8 = [5/3, 40/9].
    gradients = np.array([[6.0, 8.0], [0.0, 1.0], [-3.0, -4.0]])
    result = FLTrust().aggregate(_input(gradients, [10, 10, 10], reference=np.array([3.0, 4.0])))
    np.testing.assert_allclose(result.probabilities, [5 / 9, 4 / 9, 0.0])
    np.testing.assert_allclose(result.second_gradient, [5 / 3, 40 / 9], rtol=1e-6)


def test_fltrust_gives_a_free_rider_no_trust_and_ignores_absent_nodes() -> None:
    gradients = np.array([[0.0, 0.0], [2.0, 0.0]])  # n0 free rider, n1 absent, n2 honest
    policy = FLTrust()
    result = policy.aggregate(
        _input(gradients, [5, 7, 1], present=[True, False, True], reference=np.array([1.0, 1.0]))
    )
    # Only n2 is trusted (cosine 1/√2); its [2, 0] is rescaled to the reference's norm √2.
    np.testing.assert_allclose(result.probabilities, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(result.second_gradient, [np.sqrt(2.0), 0.0], rtol=1e-6)
    assert policy.diagnostics() == pytest.approx(
        {"zero_trust": 0.0, "reference_norm": np.sqrt(2.0), "trusted_nodes": 1.0}
    )


def test_fltrust_with_no_trusted_node_steps_with_the_reference() -> None:
    gradients = np.array([[-1.0, 0.0], [0.0, -2.0], [0.0, 0.0]])
    policy = FLTrust()
    result = policy.aggregate(_input(gradients, [1, 1, 2], reference=np.array([1.0, 1.0])))
    np.testing.assert_allclose(result.probabilities, [0.25, 0.25, 0.5])  # data-size weights
    np.testing.assert_allclose(result.second_gradient, [1.0, 1.0])  # the reference
    assert policy.diagnostics()["zero_trust"] == 1.0
    # A zero reference trusts no one either: the step is zero.
    zero = fltrust_combine(gradients.astype(np.float32), np.zeros(2, np.float32), np.ones(3))
    assert zero.zero_trust and not zero.second_gradient.any()


def test_fltrust_rejects_a_reference_of_the_wrong_shape() -> None:
    with pytest.raises(ProtocolError, match=r"server update: expected shape \(2,\)"):
        fltrust_combine(np.ones((2, 2), np.float32), np.ones(3, np.float32), np.ones(2))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(0, 10_000))
def test_fltrust_and_zeno_are_distributions_that_ignore_node_order(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gradients = rng.standard_normal((n, 5)).astype(np.float32)
    counts = rng.integers(1, 50, n).astype(float)
    reference = rng.standard_normal(5)
    validate = _quadratic(list(rng.standard_normal(5)))
    order = rng.permutation(n)
    for policy in (FLTrust(), Zeno()):
        a = policy.aggregate(
            _input(gradients, list(counts), reference=reference, validate=validate)
        )
        b = policy.aggregate(
            _input(
                gradients[order],
                list(counts[order]),
                reference=reference,
                validate=validate,
                roster=tuple(f"n{i}" for i in order),
            )
        )
        assert np.all(a.probabilities >= 0) and a.probabilities.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(a.probabilities[order], b.probabilities, atol=1e-12)
        np.testing.assert_allclose(a.second_gradient, b.second_gradient, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Zeno


def test_zeno_scores_and_selection_by_hand() -> None:
    # Loss ‖w − [1, 1]‖², w = 0 (loss 2), η = 1, ρ = 0.1; w − g is the candidate:
    #   a [−1, −1]    → loss 0: 2 − 0 − 0.1·2    =  1.8
    #   b [−.5, −.5]  → loss .5: 2 − .5 − 0.1·.5 =  1.45
    #   c [1, 1]      → loss 8: 2 − 8 − 0.1·2    = −6.2
    #   d [0, 0]      → loss 2: 0                =  0.0  (a free rider)
    #   e [−3, −3]    → loss 8: 2 − 8 − 0.1·18   = −7.8
    gradients = np.array([[-1, -1], [-0.5, -0.5], [1, 1], [0, 0], [-3, -3]], dtype=np.float32)
    validate = _quadratic([1.0, 1.0])
    scores = zeno_scores(validate, np.zeros(2, np.float32), gradients, 1.0, 0.1)
    np.testing.assert_allclose(scores, [1.8, 1.45, -6.2, 0.0, -7.8], rtol=1e-6)
    # Suspect 40 % of 5: keep the 3 best (a, b, d), data-size weights 1, 2, 4 over them.
    policy = Zeno(ZenoSettings(suspect_fraction=0.4, norm_penalty=0.1))
    result = policy.aggregate(_input(gradients, [1, 2, 3, 4, 5], validate=validate))
    np.testing.assert_allclose(result.probabilities, [1 / 7, 2 / 7, 0, 4 / 7, 0])
    np.testing.assert_allclose(result.second_gradient, [-2 / 7, -2 / 7], rtol=1e-6)
    assert policy.diagnostics() == pytest.approx(
        {"kept_nodes": 3.0, "best_score": 1.8, "worst_kept_score": 0.0}
    )


def test_zeno_ranks_a_non_finite_loss_last() -> None:
    gradients = np.array([[-1.0, -1.0], [3e38, 3e38], [1.0, 1.0]], dtype=np.float32)
    scores = zeno_scores(_quadratic([1.0, 1.0]), np.zeros(2, np.float32), gradients, 1.0, 0.0)
    assert scores[1] == -np.inf and np.isfinite(scores[[0, 2]]).all()
    policy = Zeno(ZenoSettings(suspect_fraction=0.34))
    result = policy.aggregate(_input(gradients, [1, 1, 1], validate=_quadratic([1.0, 1.0])))
    np.testing.assert_allclose(result.probabilities, [0.5, 0.0, 0.5])


@pytest.mark.parametrize(
    ("present", "fraction", "kept"),
    [(10, 0.4, 6), (4, 0.4, 3), (5, 0.4, 3), (3, 0.0, 3), (1, 0.9, 1)],
)
def test_zeno_keeps_n_minus_the_suspected(present: int, fraction: float, kept: int) -> None:
    assert zeno_keep_count(present, fraction) == kept


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ConfigurationError, match=r"suspect_fraction: expected a number <= 0\.99"):
        ZenoSettings(suspect_fraction=1.0)
    with pytest.raises(ConfigurationError, match=r"norm_penalty: expected a number >= 0\.0"):
        ZenoSettings(norm_penalty=-1.0)
    with pytest.raises(ConfigurationError, match="root_samples: expected an integer >= 1"):
        FLTrustSettings(root_samples=0)


# ----------------------------------------------------------------------------- wiring


def test_registry_and_round_engine_wiring() -> None:
    from accord.rounds import RoundEngine

    assert {"fltrust", "zeno"} <= set(POLICIES)
    zeno = make_policy("zeno", server_learning_rate=0.5)
    assert isinstance(zeno, Zeno) and zeno.settings.server_learning_rate == 0.5
    fltrust = make_policy("fltrust")
    assert isinstance(fltrust, FLTrust) and fltrust.root_samples == 100
    with pytest.raises(ConfigurationError, match="'fltrust' needs a server update"):
        RoundEngine(("a",), {"a": 1.0}, np.zeros(2, np.float32), fltrust)
    with pytest.raises(ConfigurationError, match="'zeno' needs a server validation set"):
        RoundEngine(("a",), {"a": 1.0}, np.zeros(2, np.float32), zeno)


def test_the_simulation_gives_fltrust_its_root_dataset_update() -> None:
    from accord.data import FaultSpec
    from accord.scenario import ScenarioSettings, node_seed
    from accord.simulation import Simulation, SimulationSettings, StopConditions
    from accord.training.local import LocalTrainer
    from accord.training.models import build_model

    settings = SimulationSettings(
        scenario=ScenarioSettings(dataset="wine", nodes=4, fault=FaultSpec("sign-flip", 1)),
        stop=StopConditions(max_rounds=2),
    )
    simulation = Simulation(settings, "fltrust")
    validation = simulation.data.holdout.validation
    assert validation.labels.size < 100  # wine: the root is the whole validation split
    trainer = LocalTrainer(
        build_model(settings.model, validation.n_features, validation.n_classes, 0),
        validation.features,
        validation.labels,
        settings.local,
        node_seed(0, -1),
    )
    weights = np.array(simulation.engine.global_weights)
    assert simulation.engine.server_update is not None
    np.testing.assert_array_equal(
        simulation.engine.server_update(weights, 0), trainer.first_gradient(weights, 0)
    )
    result = simulation.run()
    assert len(result.rounds) == 2
    (flipper,) = result.faulty_nodes
    assert result.rounds[-1].record.probabilities[flipper] == 0.0  # its cosine is negative


def test_accord_simulate_runs_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from accord.cli import main

    out = tmp_path / "run"
    argv = ["simulate", "--policies", "fltrust,zeno", "--rounds", "2", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fltrust" in printed and "zeno" in printed
    assert (out / "summary.json").is_file()


def test_a_servers_validation_file_sorted_by_label_gives_fltrust_a_mixed_root(
    tmp_path: Path,
) -> None:
    # The root dataset is the first rows of the validation data: a file sorted by label
    # must not give it one class.
    from accord.federation.engine import load_server_data
    from accord.federation.settings import ServerSettings

    rows = ["a,b,label"] + [f"{i % 7}.0,{i % 5}.0,{i // 100}" for i in range(300)]
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n")
    settings = ServerSettings(validation_data=str(tmp_path / "val.csv"), label_column="label")
    data = load_server_data(settings)
    first_hundred = data.validation[1][:100]
    assert set(first_hundred.tolist()) == {0, 1, 2}
    assert sorted(data.validation[1].tolist()) == sorted(i // 100 for i in range(300))
