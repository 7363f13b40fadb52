"""First-order credit (DESIGN §3.2) against exact credit, its oracle."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from accord.aggregation.base import ValidationFn, ValidationScores
from accord.aggregation.credit import (
    AUTO_FIRST_ORDER_NODES,
    _recheck_extremes,
    credit_method_for,
    leave_one_out_credit,
    node_features,
)
from accord.errors import ConfigurationError
from accord.training.evaluation import make_validation_fn, make_validation_gradient_fn
from accord.training.models import FlatModel, ModelSpec, build_model
from accord.training.scoring import ModuleScorer, batches_of_arrays


def _problem(seed: int = 0) -> tuple[FlatModel, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(200, 8)).astype(np.float32)
    labels = (features[:, 0] + 0.5 * features[:, 1] > 0).astype(np.int64)
    flat = FlatModel(build_model(ModelSpec(hidden=(16,)), 8, 2, seed))
    weights = flat.get_flat()
    direction = rng.normal(size=(1, weights.size)).astype(np.float32)
    # Six nodes: four honest-ish (a common direction plus noise), two opposed.
    gradients = 0.05 * (direction + 0.5 * rng.normal(size=(6, weights.size)))
    gradients[4:] *= -1.0
    return flat, features, labels, weights, gradients.astype(np.float32)


def _counting(validate: ValidationFn) -> tuple[ValidationFn, list[int]]:
    """``validate``, recording the row count of each stack it scores."""
    rows: list[int] = []

    def counting(stack: np.ndarray) -> ValidationScores:
        rows.append(np.atleast_2d(stack).shape[0])
        return validate(stack)

    return counting, rows


@pytest.mark.parametrize("lift", [False, True])
@pytest.mark.parametrize("step_normalised", [False, True])
def test_first_order_leave_one_out_credit_approximates_exact_credit_for_a_small_step(
    step_normalised: bool, lift: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("accord.aggregation.credit.RECHECK", 0)  # the first-order part alone
    flat, features, labels, weights, gradients = _problem()
    validate = make_validation_fn(flat, features, labels)
    gradient = make_validation_gradient_fn(flat, features, labels)
    # With the lift, nodes 1 and 5 (one of each direction) are held near 0 and credited by
    # lifting them to 1/6.
    probabilities = np.array([0.3, 0.01, 0.3, 0.2, 0.18, 0.01]) if lift else np.full(6, 1 / 6)
    lift_to = np.where(probabilities < 0.05, 1 / 6, 0.0) if lift else None
    options = {"step_normalised": step_normalised, "lift_to": lift_to}
    exact = leave_one_out_credit(validate, weights, probabilities, gradients, 0.05, **options)
    first = leave_one_out_credit(
        validate, weights, probabilities, gradients, 0.05, validation_gradient=gradient, **options
    )
    if lift:
        assert first.lifted is not None and list(first.lifted) == [0, 1, 0, 0, 0, 1]
        # The lift's sign is turned, as in exact credit: more of a node, not less.
        assert np.sign(first.credit[[1, 5]]).tolist() == np.sign(exact.credit[[1, 5]]).tolist()
    np.testing.assert_allclose(first.credit, exact.credit, rtol=0.1, atol=1e-4)
    assert list(np.argsort(first.credit)) == list(np.argsort(exact.credit))
    assert first.loss_after == pytest.approx(exact.loss_after, rel=1e-5)
    assert first.sample_losses_after is not None and exact.sample_losses_after is not None
    np.testing.assert_allclose(first.sample_losses_after, exact.sample_losses_after, rtol=1e-4)


@pytest.mark.parametrize("lift", [False, True])
def test_the_extremes_are_rechecked_exactly_and_only_they_are_scored(
    lift: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("accord.aggregation.credit.RECHECK", 2)
    flat, features, labels, weights, gradients = _problem(3)
    many = np.concatenate([gradients, gradients * 0.7]).astype(np.float32)  # 12 nodes
    validate = make_validation_fn(flat, features, labels)
    counting, rows_scored = _counting(validate)

    probabilities = np.full(12, 1 / 12)
    lift_to = None
    if lift:  # nodes 5 and 7 held near 0, credited by their lift
        probabilities = np.where(np.isin(np.arange(12), [5, 7]), 0.005, 0.099)
        lift_to = np.where(probabilities < 0.05, 1 / 12, 0.0)
    exact = leave_one_out_credit(
        validate, weights, probabilities, many, 1.0, lift_to=lift_to
    ).credit
    first = leave_one_out_credit(
        counting,
        weights,
        probabilities,
        many,
        1.0,
        validation_gradient=make_validation_gradient_fn(flat, features, labels),
        lift_to=lift_to,
    ).credit
    # w − ηG and the 2 lowest and 2 highest, then at most 2 more a pass while first order's
    # error bound says another node could be among the 2 lowest; never one stack of 12.
    assert rows_scored[0] == 5 and all(rows <= 2 for rows in rows_scored[1:])
    rechecked = [i for i in range(12) if abs(first[i] - exact[i]) < 1e-6]
    assert len(rechecked) >= 4
    assert set(np.argsort(first)[:2]) == set(np.argsort(exact)[:2])


def test_a_node_whose_first_order_error_could_hide_it_among_the_lowest_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("accord.aggregation.credit.RECHECK", 2)
    first = np.arange(8, dtype=np.float64)
    step_sq = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0])
    truth = first - step_sq  # first order misses exactly c·|ηδ|² with c = 1
    asked: list[list[int]] = []

    def exact(chosen: np.ndarray, with_after: bool) -> np.ndarray:
        asked.append(list(chosen))
        reference = [10.0] if with_after else []
        return np.array(reference + [10.0 + truth[i] for i in chosen])

    credit, checked = _recheck_extremes(first, step_sq, exact)
    # Nodes 0, 1 (lowest) and 6, 7 (highest) first; their errors give c = 1, so node 5
    # (5 − 6 < 0, the second-lowest exact credit so far) is checked; node 2, 3 and 4 cannot
    # be lower (no step to miss).
    assert asked == [[0, 1, 6, 7], [5]] and checked == 5
    np.testing.assert_allclose(credit[[0, 1, 5, 6, 7]], truth[[0, 1, 5, 6, 7]])
    assert set(np.argsort(credit)[:2]) == set(np.argsort(truth)[:2]) == {0, 5}


def test_exact_first_order_credit_needs_no_further_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("accord.aggregation.credit.RECHECK", 2)
    first = np.arange(8, dtype=np.float64)
    calls: list[int] = []

    def exact(chosen: np.ndarray, with_after: bool) -> np.ndarray:
        calls.append(len(chosen))
        return np.array(([0.0] if with_after else []) + [first[i] for i in chosen])

    credit, checked = _recheck_extremes(first, np.ones(8), exact)
    assert calls == [4] and checked == 4
    np.testing.assert_array_equal(credit, first)


def test_first_order_features_score_only_the_candidates_never_a_stack_per_node() -> None:
    flat, features, labels, weights, gradients = _problem(1)
    validate = make_validation_fn(flat, features, labels)
    counting, rows_scored = _counting(validate)

    gradient = make_validation_gradient_fn(flat, features, labels)
    candidates = np.stack([gradients.mean(axis=0), gradients[:4].mean(axis=0)])
    exact = node_features(
        validate, weights, gradients, 0.05, None, np.ones(6), np.zeros(6),
        candidate_gradients=candidates,
    )  # fmt: skip
    first = node_features(
        counting, weights, gradients, 0.05, None, np.ones(6), np.zeros(6),
        candidate_gradients=candidates, validation_gradient=gradient,
    )  # fmt: skip
    assert rows_scored == [2]  # the two candidates; the six nodes need no pass of their own
    np.testing.assert_allclose(first.candidate_losses, exact.candidate_losses, rtol=1e-6)
    assert first.loss_now == pytest.approx(exact.loss_now, rel=1e-6)
    alone = 0  # the feature columns: alone_loss_z first
    assert np.corrcoef(first.values[:, alone], exact.values[:, alone])[0, 1] > 0.95


def test_the_module_scorer_gradient_equals_autograd_on_the_module() -> None:
    flat, features, labels, weights, _ = _problem(2)
    scorer = ModuleScorer(flat.module, batches_of_arrays(features, labels, batch_size=64))
    got = scorer.gradient(weights)
    reference = make_validation_gradient_fn(flat, features, labels)(weights)
    module = build_model(ModelSpec(hidden=(16,)), 8, 2, 2)
    FlatModel(module).set_flat(weights)
    loss = torch.nn.functional.cross_entropy(
        module(torch.from_numpy(features)), torch.from_numpy(labels)
    )
    loss.backward()  # type: ignore[no-untyped-call]
    by_hand = torch.cat([p.grad.reshape(-1) for p in module.parameters() if p.grad is not None])
    np.testing.assert_allclose(got.gradient, by_hand.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(reference.gradient, by_hand.numpy(), rtol=1e-4, atol=1e-6)
    assert got.loss == pytest.approx(float(loss.detach()), rel=1e-5)


def test_the_module_scorer_gradient_is_the_built_in_gradient_bit_for_bit_in_one_batch() -> None:
    # The Actor-Critic's alone feature comes from this gradient: a run through Flower or a
    # user's app matches `accord simulate` seed for seed only if the bits are the same.
    flat, features, labels, weights, _ = _problem(5)
    scorer = ModuleScorer(flat.module, batches_of_arrays(features, labels))
    built_in = make_validation_gradient_fn(flat, features, labels)
    for step in range(3):
        moved = (weights + 0.1 * step * np.sign(weights)).astype(np.float32)
        got, reference = scorer.gradient(moved), built_in(moved)
        np.testing.assert_array_equal(got.gradient, reference.gradient)
        assert got.loss == reference.loss
        np.testing.assert_array_equal(got.sample_losses, reference.sample_losses)


def test_auto_switches_to_first_order_only_for_large_rounds_with_a_gradient() -> None:
    def gradient(weights: np.ndarray) -> object:
        raise AssertionError("not called")

    assert credit_method_for("auto", 10, 2410, gradient) == "exact"  # type: ignore[arg-type]
    assert credit_method_for("auto", 30, 2410, gradient) == "exact"  # type: ignore[arg-type]
    large = AUTO_FIRST_ORDER_NODES + 1
    assert credit_method_for("auto", large, 2410, gradient) == "first-order"  # type: ignore[arg-type]
    assert credit_method_for("auto", 10, 10_000_000, gradient) == "first-order"  # type: ignore[arg-type]
    assert credit_method_for("auto", large, 2410, None) == "exact"
    with pytest.raises(ConfigurationError, match="first-order needs"):
        credit_method_for("first-order", 10, 2410, None)


@pytest.mark.parametrize("policy", ["hedge-loo", "actor-critic"])
def test_a_simulation_with_first_order_credit_trains(policy: str) -> None:
    import dataclasses

    from accord.simulation import Simulation, SimulationSettings, StopConditions

    settings = SimulationSettings(stop=StopConditions(max_rounds=8))
    settings = dataclasses.replace(
        settings,
        hedge=dataclasses.replace(settings.hedge, credit_method="first-order"),
        actor_critic=dataclasses.replace(settings.actor_critic, credit_method="first-order"),
    )
    result = Simulation(settings, policy).run()
    assert len(result.rounds) == 8
    assert (result.rounds[-1].record.test_accuracy or 0.0) > 0.5


@pytest.mark.parametrize("lift", [False, True])
def test_extra_rows_are_scored_in_the_credit_pass_without_changing_the_credit(lift: bool) -> None:
    flat, features, labels, weights, gradients = _problem(4)
    validate = make_validation_fn(flat, features, labels)
    counted, calls = _counting(validate)

    probabilities = np.array([0.3, 0.25, 0.2, 0.15, 0.05, 0.05])
    lift_to = np.full(6, 1 / 6) if lift else None
    extra = (weights - np.float32(0.05) * gradients[:2]).astype(np.float32)
    alone = leave_one_out_credit(validate, weights, probabilities, gradients, 0.05, lift_to=lift_to)
    both = leave_one_out_credit(
        counted, weights, probabilities, gradients, 0.05, lift_to=lift_to, extra_rows=extra
    )
    assert calls == [6 + 1 + 2]  # one pass: w − ηG, six candidates, the two extra rows
    np.testing.assert_array_equal(both.credit, alone.credit)
    assert both.loss_after == alone.loss_after
    assert both.extra_scores is not None and both.extra_scores.sample_losses is not None
    separately = validate(extra)
    np.testing.assert_array_equal(both.extra_scores.losses, separately.losses)
    np.testing.assert_array_equal(both.extra_scores.sample_losses, separately.sample_losses)
    with pytest.raises(ValueError, match="exact credit only"):
        leave_one_out_credit(
            validate,
            weights,
            probabilities,
            gradients,
            0.05,
            validation_gradient=make_validation_gradient_fn(flat, features, labels),
            extra_rows=extra,
        )


def _policy_passes(monkeypatch: pytest.MonkeyPatch, alone_method: str) -> list[int]:
    """The row counts of every validation call of a 6-round digits run of the Actor-Critic
    (the engine's own call over w included; the test set's calls not)."""
    import dataclasses

    from accord.simulation import Simulation, SimulationSettings, StopConditions, driver

    counted: list[list[int]] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        validate = make_validation_fn(*args, **kwargs)
        if counted:  # the test set's function
            return validate
        wrapped, rows = _counting(validate)
        counted.append(rows)
        return wrapped

    monkeypatch.setattr(driver, "make_validation_fn", counting)
    settings = SimulationSettings(stop=StopConditions(max_rounds=6))
    settings = dataclasses.replace(
        settings,
        actor_critic=dataclasses.replace(settings.actor_critic, alone_method=alone_method),
    )
    result = Simulation(settings, "actor-critic").run()
    assert (result.rounds[-1].record.test_accuracy or 0.0) > 0.5
    return counted[0]


def test_a_first_order_alone_feature_leaves_one_validation_pass_a_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After the warm-up (3 rounds), each round: the policy's passes, then the engine's own
    # over w (1 row). Exact: the features' (w, 10 alone steps, the reference) and the
    # credit's (the step, 10 left out); first-order: the credit's alone, with the reference.
    assert _policy_passes(monkeypatch, "exact")[-3:] == [12, 11, 1]
    assert _policy_passes(monkeypatch, "first-order")[-2:] == [12, 1]


def test_the_gradient_s_module_copy_gives_functional_call_s_results_and_follows_buffers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A module with a buffer and a mode: batch norm, whose running statistics the original
    # takes each round (a model with buffers) and which the copy must follow.
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )
    module.eval()
    flat = FlatModel(module)
    _, features, labels, _, _ = _problem()
    weights = (flat.get_flat() + 0.1).astype(np.float32)
    with_copy = make_validation_gradient_fn(flat, features, labels)
    monkeypatch.setattr("accord.training.evaluation._twin", lambda model: None)
    general = make_validation_gradient_fn(flat, features, labels)

    def same() -> None:
        a, b = with_copy(weights), general(weights)
        assert a.loss == b.loss
        assert np.array_equal(a.gradient, b.gradient)
        assert np.array_equal(a.sample_losses, b.sample_losses)

    same()
    batch_norm = module[1]
    assert isinstance(batch_norm, torch.nn.BatchNorm1d)
    with torch.no_grad():
        batch_norm.running_mean.fill_(0.5)
        batch_norm.running_var.fill_(2.0)
    same()
    module.train()  # batch statistics instead of the running ones
    same()
    assert not np.array_equal(with_copy(weights).gradient, general(flat.get_flat()).gradient)
