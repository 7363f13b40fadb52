"""Small aligned tables for the vertical tests: a binary make_classification table with
its informative columns split between the parties."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_classification

from accord.vertical import PartyTable


def aligned_tables(
    rows: int = 3000,
    *,
    seed: int = 0,
    label_columns: int = 4,
    feature_columns: tuple[int, ...] = (4,),
    positive_share: float = 0.1,
) -> tuple[PartyTable, list[PartyTable]]:
    """The label party's table (``label_columns`` columns and the labels) and one table per
    entry of ``feature_columns``, all holding the same rows in the same order."""
    total = label_columns + sum(feature_columns)
    features, labels = make_classification(
        n_samples=rows,
        n_features=total,
        n_informative=total,
        n_redundant=0,
        weights=[1.0 - positive_share],
        random_state=seed,
        shuffle=False,
    )
    columns = np.random.default_rng(seed).permutation(total)
    features = features[:, columns].astype(np.float32)
    label = PartyTable(
        "bank",
        features[:, :label_columns],
        tuple(f"b{i}" for i in range(label_columns)),
        labels.astype(np.float32),
    )
    others, start = [], label_columns
    for index, width in enumerate(feature_columns):
        others.append(
            PartyTable(
                f"party{index}",
                features[:, start : start + width],
                tuple(f"p{index}_{i}" for i in range(width)),
            )
        )
        start += width
    return label, others
