"""The exactness test: split training equals centralised training of the composed network.

Same seed, same batches: the gradient each feature party receives equals the gradient of
the centralised loss with respect to that party's embedding, every parameter's gradient
agrees, and after several epochs every weight and score agrees to float tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional
from vertical_support import aligned_tables

from accord.vertical import (
    ModelSettings,
    VerticalSettings,
    build_centralised,
    build_parties,
    run_vertical,
    train_centralised,
    train_composed,
)

MODELS = {
    "logistic": ModelSettings(bottom="linear", top="sum", embedding_dim=1),
    "mlp-concat": ModelSettings(bottom="mlp", bottom_hidden=(8,), embedding_dim=4, top="concat"),
}


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_each_party_receives_the_gradient_of_its_own_embedding(model: ModelSettings) -> None:
    label_table, feature_tables = aligned_tables(600, feature_columns=(3, 2))
    settings = VerticalSettings(model=model, batch_size=64, optimizer="sgd", learning_rate=0.5)
    label, parties = build_parties(label_table, feature_tables, settings)
    central = build_centralised(label_table, feature_tables, settings)
    request = label.plan_epoch(0)[0]
    positions = label.batch_positions(request)

    # The oracle: one graph over the joined columns, gradients by autograd.
    rows = torch.from_numpy(positions)
    embeddings = {
        name: bottom(central.features[name][rows]) for name, bottom in central.model.bottoms.items()
    }
    loss = functional.binary_cross_entropy_with_logits(
        central.model.top(embeddings), central.labels[rows]
    )
    names = ["party0", "party1"]
    parameters = list(central.model.parameters())
    expected = torch.autograd.grad(loss, [embeddings[name] for name in names] + parameters)
    expected_embedding = dict(zip(names, expected[:2], strict=True))
    expected_parameter = dict(
        zip([n for n, _ in central.model.named_parameters()], expected[2:], strict=True)
    )
    before = {name: party.state_dict()["modules"]["bottom"] for name, party in parties.items()}

    step = label.step(request, {name: party.forward(request) for name, party in parties.items()})
    for name, party in parties.items():
        party.backward(step.gradients[name])

    assert set(step.gradients) == set(names)  # no party receives another party's gradient
    assert step.loss == pytest.approx(float(loss.detach()), rel=1e-6)
    for name in names:
        np.testing.assert_allclose(
            step.gradients[name].values, expected_embedding[name].numpy(), rtol=1e-5, atol=1e-8
        )
        # SGD: the bottom moved by -lr times the gradient the composed network computes.
        after = parties[name].bottom.state_dict()  # type: ignore[union-attr]
        for key, value in after.items():
            moved = (before[name][key] - value).numpy() / settings.learning_rate
            np.testing.assert_allclose(
                moved, expected_parameter[f"bottoms.{name}.{key}"].numpy(), rtol=1e-4, atol=1e-6
            )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_split_training_equals_centralised_training(model: ModelSettings, optimizer: str) -> None:
    label_table, feature_tables = aligned_tables(1500, feature_columns=(3, 2))
    settings = VerticalSettings(
        model=model,
        batch_size=100,
        epochs=4,
        patience=None,
        optimizer=optimizer,
        learning_rate=0.05 if optimizer == "sgd" else 0.01,
    )

    label, parties = build_parties(label_table, feature_tables, settings)
    split = run_vertical(label, parties)
    central_model = build_centralised(label_table, feature_tables, settings)
    central = train_composed(central_model)

    weights = central_model.model.state_dict()
    for name, party in parties.items():
        for key, value in party.bottom.state_dict().items():  # type: ignore[union-attr]
            np.testing.assert_allclose(value, weights[f"bottoms.{name}.{key}"], atol=2e-5)
    for key, value in label.bottom.state_dict().items():  # type: ignore[union-attr]
        np.testing.assert_allclose(value, weights[f"bottoms.bank.{key}"], atol=2e-5)
    for key, value in label.top.state_dict().items():
        np.testing.assert_allclose(value, weights[f"top.{key}"], atol=2e-5)
    assert split.test is not None and central.test is not None
    assert split.test.auc == pytest.approx(central.test.auc, abs=1e-4)
    assert split.test.loss == pytest.approx(central.test.loss, rel=1e-4)
    for ours, theirs in zip(split.epochs, central.epochs, strict=True):
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=1e-4)


def test_a_label_party_without_columns_trains_on_the_others_embeddings() -> None:
    label_table, feature_tables = aligned_tables(800, label_columns=0, feature_columns=(3, 3))
    settings = VerticalSettings(batch_size=80, epochs=3, patience=None)

    label, parties = build_parties(label_table, feature_tables, settings)
    split = run_vertical(label, parties)
    central = train_centralised(label_table, feature_tables, settings)

    assert label.bottom is None and label.parties == ("party0", "party1")
    assert split.test is not None and central.test is not None
    assert split.test.loss == pytest.approx(central.test.loss, rel=1e-4)
    assert split.test.auc is not None and split.test.auc > 0.8  # it learned


def test_early_stopping_keeps_the_best_epoch_in_both_runs() -> None:
    label_table, feature_tables = aligned_tables(1000)
    settings = VerticalSettings(batch_size=50, epochs=30, patience=2, learning_rate=0.05)

    label, parties = build_parties(label_table, feature_tables, settings)
    split = run_vertical(label, parties)
    central = train_centralised(label_table, feature_tables, settings)

    assert split.stopped_early and central.stopped_early
    assert split.best_epoch == central.best_epoch
    assert len(split.epochs) == split.best_epoch + 1 + settings.patience  # type: ignore[operator]
    best = split.epochs[split.best_epoch].validation
    assert best is not None and split.validation is not None
    assert split.validation.loss == pytest.approx(best.loss, rel=1e-9)  # the best weights kept
    assert min(e.validation.loss for e in split.epochs if e.validation) == best.loss
