"""Where a node's samples come from: a scenario partition, or a user's CSV/Parquet file.

A file holds one row per sample: numeric feature columns and an integer label column
(labels ``0 .. C−1``, the same coding at every node). Every problem is reported with the
file, the column and the first bad row, as a 0-based data row (the header is not a row),
as ``accord align`` counts rows. ``pyarrow`` is imported only when a file is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from accord.data.standardise import column_difference
from accord.errors import ConfigurationError, InputDataError

__all__ = ["FeatureTable", "LabelledTable", "load_features", "load_table", "split_validation"]


@dataclass(frozen=True)
class LabelledTable:
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class FeatureTable:
    """A file's feature columns, and its labels if it has the label column."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64] | None
    feature_names: tuple[str, ...]


def load_table(path: Path, label_column: str) -> LabelledTable:
    """Read ``path`` (``.csv``, ``.csv.gz`` or ``.parquet``) into features and labels."""
    table = load_features(path, label_column, label_required=True)
    assert table.labels is not None
    return LabelledTable(table.features, table.labels, table.feature_names)


def load_features(
    path: Path,
    label_column: str,
    *,
    label_required: bool = False,
    feature_names: tuple[str, ...] | None = None,
) -> FeatureTable:
    """Read ``path``'s feature columns (every column but ``label_column``), and its labels
    if it has that column (required with ``label_required``). With ``feature_names`` the
    file must hold exactly those feature columns (any order; returned in that order)."""
    table = _read(path)
    if label_required and label_column not in table.column_names:
        raise InputDataError(
            f"{path}: no label column {label_column!r}; columns are {table.column_names}"
        )
    if table.num_rows == 0:
        raise InputDataError(f"{path}: no rows")
    found = tuple(c for c in table.column_names if c != label_column)
    if feature_names is not None and set(found) != set(feature_names):
        raise InputDataError(
            f"{path}: {column_difference(feature_names, found)}; expected the feature columns "
            f"{', '.join(feature_names)} (and optionally the label column {label_column!r})"
        )
    names = found if feature_names is None else feature_names
    if not names:
        raise InputDataError(f"{path}: no feature columns besides {label_column!r}")
    columns = [_numeric(path, table, column).astype(np.float32) for column in names]
    labels = None
    if label_column in table.column_names:
        labels_float = _numeric(path, table, label_column)
        bad = np.flatnonzero((labels_float < 0) | (labels_float != np.round(labels_float)))
        if bad.size:
            row = int(bad[0])
            raise InputDataError(
                f"{path}: column {label_column!r}, data row {row} (0-based): expected an "
                f"integer label >= 0, found {float(labels_float[row]):g}"
            )
        labels = labels_float.astype(np.int64)
    return FeatureTable(
        features=np.ascontiguousarray(np.stack(columns, axis=1)),
        labels=labels,
        feature_names=tuple(names),
    )


def _read(path: Path) -> Any:
    """The file as a pyarrow table, or one clear error."""
    import pyarrow as pa

    if not path.is_file():
        raise InputDataError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif name.endswith((".csv", ".csv.gz", ".tsv")):
            import pyarrow.csv as pcsv

            parse = pcsv.ParseOptions(delimiter="\t" if name.endswith(".tsv") else ",")
            table = pcsv.read_csv(path, parse_options=parse)
        else:
            raise InputDataError(f"{path}: expected a .csv, .csv.gz, .tsv or .parquet file")
    except (pa.ArrowInvalid, OSError) as error:
        raise InputDataError(f"{path}: cannot be read: {error}") from error
    return table


def _numeric(path: Path, table: object, column: str) -> npt.NDArray[np.float64]:
    import pyarrow as pa
    import pyarrow.compute as pc

    data = table.column(column)  # type: ignore[attr-defined]
    if not (pa.types.is_integer(data.type) or pa.types.is_floating(data.type)):
        raise InputDataError(f"{path}: column {column!r}: expected numbers, found type {data.type}")
    nulls = pc.is_null(data, nan_is_null=True)
    if pc.any(nulls).as_py():
        row = int(pc.index(nulls, True).as_py())
        raise InputDataError(
            f"{path}: column {column!r}, data row {row} (0-based): missing or NaN value"
        )
    values = np.asarray(data.to_numpy(), dtype=np.float64)
    infinite = np.flatnonzero(~np.isfinite(values))
    if infinite.size:
        row = int(infinite[0])
        raise InputDataError(f"{path}: column {column!r}, data row {row} (0-based): infinite value")
    return values


def split_validation(
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    fraction: float,
    seed: int,
) -> tuple[
    npt.NDArray[np.float32],
    npt.NDArray[np.int64],
    tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None,
]:
    """Hold out ``fraction`` of the rows (seeded) as the node's validation split."""
    if not (isinstance(fraction, int | float) and 0.0 <= fraction < 1.0):
        raise ConfigurationError(
            f"validation_fraction: expected a number in [0, 1), got {fraction!r}"
        )
    if fraction == 0.0:
        return features, labels, None
    n = labels.shape[0]
    held = math.floor(n * fraction)
    if held < 1 or held >= n:
        raise InputDataError(
            f"validation_fraction {fraction:g} of {n} samples leaves no validation or no "
            "training sample"
        )
    order = np.random.default_rng([seed, 31337]).permutation(n)
    validation, train = np.sort(order[:held]), np.sort(order[held:])
    return features[train], labels[train], (features[validation], labels[validation])
