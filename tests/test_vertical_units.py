"""Units of the vertical round logic: settings, shared splits and batches, metrics,
tables and messages refused with one line."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from vertical_support import aligned_tables

from accord.errors import ConfigurationError, InputDataError, ProtocolError
from accord.vertical import (
    BatchRequest,
    EmbeddingGradient,
    FeatureParty,
    LabelParty,
    ModelSettings,
    PartyTable,
    ProtectionSettings,
    VerticalSettings,
    binary_auc,
    build_parties,
    epoch_batches,
    log_loss,
    split_positions,
)


@given(
    rows=st.integers(3, 3000),
    validation=st.floats(0.0, 0.3),
    test=st.floats(0.0, 0.3),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=60, deadline=None)
def test_splits_partition_the_positions_the_same_way_every_time(
    rows: int, validation: float, test: float, seed: int
) -> None:
    try:
        splits = split_positions(rows, validation, test, seed)
    except InputDataError:
        assert round(validation * rows) + round(test * rows) >= rows
        return
    again = split_positions(rows, validation, test, seed)  # another party, same inputs

    parts = [splits.train, splits.validation, splits.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(rows))
    assert len(splits.test) == round(test * rows)
    assert len(splits.validation) == round(validation * rows)
    for mine, theirs in zip(parts, [again.train, again.validation, again.test], strict=True):
        np.testing.assert_array_equal(mine, theirs)


@given(
    rows=st.integers(1, 2000),
    batch_size=st.integers(1, 300),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 50),
)
@settings(max_examples=60, deadline=None)
def test_an_epoch_visits_every_training_row_once_in_batches(
    rows: int, batch_size: int, seed: int, epoch: int
) -> None:
    train = np.arange(0, 3 * rows, 3)

    batches = epoch_batches(train, batch_size, seed, epoch)

    assert sorted(np.concatenate(batches).tolist()) == train.tolist()
    assert all(len(batch) == batch_size for batch in batches[:-1])
    assert 1 <= len(batches[-1]) <= batch_size
    again = epoch_batches(train.copy(), batch_size, seed, epoch)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_the_batch_order_changes_between_epochs_and_seeds() -> None:
    train = np.arange(1000)
    first = np.concatenate(epoch_batches(train, 100, 7, 0))
    assert not np.array_equal(first, np.concatenate(epoch_batches(train, 100, 7, 1)))
    assert not np.array_equal(first, np.concatenate(epoch_batches(train, 100, 8, 0)))


def test_every_party_derives_the_same_rows_for_a_batch() -> None:
    label_table, feature_tables = aligned_tables(700, feature_columns=(2, 3))
    settings_ = VerticalSettings(batch_size=64, seed=11)
    label, parties = build_parties(label_table, feature_tables, settings_)

    for request in label.plan_epoch(3):
        expected = label.batch_positions(request)
        for party in parties.values():
            np.testing.assert_array_equal(party.batch_positions(request), expected)
    for party in parties.values():
        for name in ("train", "validation", "test"):
            np.testing.assert_array_equal(
                party.splits.positions(name), label.splits.positions(name)
            )


@given(
    scores=st.lists(st.integers(0, 5), min_size=2, max_size=60),
    labels=st.lists(st.integers(0, 1), min_size=2, max_size=60),
)
@settings(max_examples=80, deadline=None)
def test_auc_equals_scikit_learns_with_ties(scores: list[int], labels: list[int]) -> None:
    n = min(len(scores), len(labels))
    x, y = np.array(scores[:n], float), np.array(labels[:n])
    ours = binary_auc(x, y)
    if len(set(y.tolist())) < 2:
        assert ours is None
    else:
        assert ours == pytest.approx(roc_auc_score(y, x), abs=1e-12)


def test_log_loss_by_hand() -> None:
    # -(log σ(0) + log(1 - σ(log 3))) / 2 = (log 2 + log 4) / 2
    assert log_loss(np.array([0.0, np.log(3.0)]), np.array([1.0, 0.0])) == pytest.approx(
        (np.log(2.0) + np.log(4.0)) / 2
    )
    assert np.isfinite(log_loss(np.array([1000.0, -1000.0]), np.array([0.0, 1.0])))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ModelSettings(bottom="tree"), "bottom: expected one of linear, mlp; got 'tree'"),
        (lambda: ModelSettings(embedding_dim=0), "embedding_dim: expected an integer >= 1, got 0"),
        (lambda: ModelSettings(bottom="mlp", bottom_hidden=()), "bottom_hidden: an mlp bottom"),
        (lambda: VerticalSettings(batch_size=0), "batch_size: expected an integer >= 1, got 0"),
        (lambda: VerticalSettings(optimizer="rmsprop"), "optimizer: expected one of adam, sgd"),
        (
            lambda: VerticalSettings(validation_fraction=0.5, test_fraction=0.45),
            "validation_fraction + test_fraction: expected < 0.9",
        ),
        (lambda: ProtectionSettings(kind="marvell"), "kind: expected one of label_dp, max_norm"),
        (lambda: ProtectionSettings("label_dp", epsilon=0.0), "epsilon: expected a number > 0"),
    ],
)
def test_bad_settings_fail_naming_the_field(make: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make()  # type: ignore[operator]
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_tables_are_refused_with_one_line() -> None:
    good = np.zeros((4, 2), np.float32)
    with pytest.raises(InputDataError, match=r"^party 'a' column 'y': expected finite numbers"):
        PartyTable("a", np.array([[0.0, 1.0], [0.0, np.nan]]), ("x", "y"))
    with pytest.raises(InputDataError, match=r"^party 'a' features: expected numeric columns"):
        PartyTable("a", np.array([["u", "v"]], dtype=object), ("x", "y"))
    with pytest.raises(InputDataError, match=r"^party 'a' columns: expected 2 names, got 1"):
        PartyTable("a", good, ("x",))
    with pytest.raises(InputDataError, match=r"^party 'a' labels: expected binary labels 0 or 1"):
        PartyTable("a", good, ("x", "y"), np.array([0.0, 1.0, 2.0, 0.0]))
    unlabelled = PartyTable("bank", good, ("x", "y"))
    with pytest.raises(InputDataError, match=r"^party 'bank': the label party needs a label"):
        LabelParty(unlabelled, VerticalSettings(validation_fraction=0, test_fraction=0), ["b"])
    with pytest.raises(InputDataError, match=r"^party 'c': a feature party holds no label column"):
        FeatureParty(PartyTable("c", good, ("x", "y"), np.zeros(4)), VerticalSettings())


def test_tables_of_different_alignments_are_refused() -> None:
    label_table, feature_tables = aligned_tables(300)
    short = PartyTable("party0", feature_tables[0].features[:299], feature_tables[0].columns)
    with pytest.raises(
        InputDataError, match=r"^party 'party0': expected 300 aligned rows like 'bank', got 299$"
    ):
        build_parties(label_table, [short], VerticalSettings())


def test_malformed_messages_are_protocol_errors() -> None:
    label_table, feature_tables = aligned_tables(300)
    label, parties = build_parties(label_table, feature_tables, VerticalSettings(batch_size=32))
    party = parties["party0"]
    request = BatchRequest(0, 0)
    embedding = party.forward(request)

    with pytest.raises(ProtocolError, match=r"^embedding from 'party0': expected shape"):
        label.step(request, {"party0": type(embedding)("party0", 0, 0, embedding.values[:5])})
    with pytest.raises(ProtocolError, match=r"^embedding from 'party0': expected epoch 0 batch 1"):
        label.step(BatchRequest(0, 1), {"party0": embedding})
    with pytest.raises(
        ProtocolError, match=r"^embeddings: expected parties \['party0'\], got \[\]"
    ):
        label.step(request, {})
    with pytest.raises(ProtocolError, match=r"^batch: expected 0\.\.7 in epoch 0, got 99"):
        party.forward(BatchRequest(0, 99))
    nan = np.full_like(embedding.values, np.nan)
    with pytest.raises(ProtocolError, match=r"^gradient: expected finite values"):
        party.backward(EmbeddingGradient("party0", 0, 0, nan))
    with pytest.raises(ProtocolError, match=r"^gradient: expected party 'party0' epoch 0 batch 0"):
        party.backward(EmbeddingGradient("party0", 0, 1, embedding.values))
