"""Scoring new aligned rows jointly: the feature parties send embeddings of their new rows,
only the label party computes the probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vertical_support import aligned_tables

from accord.errors import InputDataError
from accord.vertical import (
    PartyTable,
    VerticalSettings,
    build_centralised,
    build_parties,
    run_vertical,
    train_composed,
)


def _rows(table: PartyTable, positions: np.ndarray, labels: bool = True) -> PartyTable:
    kept = table.labels[positions] if labels and table.labels is not None else None
    return PartyTable(table.name, table.features[positions], table.columns, kept)


def test_new_rows_score_as_the_composed_network_scores_them() -> None:
    label_table, feature_tables = aligned_tables(1200, feature_columns=(3, 2))
    settings = VerticalSettings(batch_size=100, epochs=3, patience=None)
    label, parties = build_parties(label_table, feature_tables, settings)
    run_vertical(label, parties)
    central = build_centralised(label_table, feature_tables, settings)
    train_composed(central)
    new = central.splits.test  # rows neither trained on, sent again as "new" tables

    embeddings = {
        table.name: parties[table.name].embed_new(_rows(table, new)) for table in feature_tables
    }
    probabilities = label.predict(_rows(label_table, new, labels=False), embeddings)

    with torch.no_grad():
        expected = torch.sigmoid(central.logits(new)).numpy()
    assert probabilities.shape == (len(new),)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)


def test_new_rows_with_other_columns_are_refused_with_one_line() -> None:
    label_table, feature_tables = aligned_tables(300)
    label, parties = build_parties(label_table, feature_tables, VerticalSettings(epochs=1))
    table = feature_tables[0]
    renamed = PartyTable("party0", table.features[:5], ("x", *table.columns[1:]))

    with pytest.raises(InputDataError, match=r"^party 'party0' new rows: expected columns \["):
        parties["party0"].embed_new(renamed)
    with pytest.raises(InputDataError, match=r"^party 'bank': new rows need its columns"):
        label.predict(None, {"party0": parties["party0"].embed_new(_rows(table, np.arange(5)))})
