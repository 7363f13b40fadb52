"""A party's inputs to a networked vertical run: its aligned table and its alignment summary.

:func:`read_party_table` reads ``accord align``'s aligned table (CSV or Parquet) into a
:class:`~accord.vertical.parties.PartyTable`: every column is a feature except the label
column (label party) and the ignored ones (the ID key, typically); a column that is not
numeric, a missing label column or a label that is not 0/1 is one line naming the file and
column. :func:`read_alignment` reads the summary ``accord align --summary`` wrote: this
party's name, every party's name, the aligned row count and the alignment's fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accord.errors import InputDataError
from accord.tables import read_table
from accord.vertical.parties import PartyTable

__all__ = ["AlignmentInfo", "read_alignment", "read_party_table"]


@dataclass(frozen=True)
class AlignmentInfo:
    """What a party's alignment summary says about the alignment it took part in."""

    party: str
    parties: tuple[str, ...]
    rows: int
    fingerprint: str | None


def read_alignment(path: Path) -> AlignmentInfo:
    """The alignment summary ``accord align --summary`` wrote (one line if unusable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise InputDataError(f"{path}: alignment summary not found") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputDataError(f"{path}: not a readable alignment summary: {error}") from error
    if not isinstance(data, dict):
        raise InputDataError(f"{path}: expected the JSON object `accord align` writes")
    party, parties, rows = data.get("party"), data.get("parties"), data.get("intersection")
    fingerprint = data.get("fingerprint")
    if not isinstance(party, str) or not isinstance(parties, list) or party not in parties:
        raise InputDataError(f"{path}: fields party, parties: expected this party among them")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise InputDataError(f"{path}: field intersection: expected a row count, got {rows!r}")
    if fingerprint is not None and not (isinstance(fingerprint, str) and len(fingerprint) == 64):
        raise InputDataError(f"{path}: field fingerprint: expected 64 hex digits")
    return AlignmentInfo(party, tuple(str(p) for p in parties), rows, fingerprint)


def read_party_table(
    path: Path,
    party: str,
    *,
    label_column: str | None = None,
    ignore: Sequence[str] = (),
) -> PartyTable:
    """``path``'s columns as float32 features (and 0/1 labels from ``label_column``)."""
    table = read_table(path)
    names = list(table.column_names)
    for column in [*ignore, *([label_column] if label_column else [])]:
        if column not in names:
            raise InputDataError(
                f"{path}: column {column!r} not found (columns: {', '.join(names[:20])})"
            )
    features = [name for name in names if name not in ignore and name != label_column]
    matrix = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for index, name in enumerate(features):
        matrix[:, index] = _numbers(path, name, table.column(name))
    labels = None
    if label_column is not None:
        values = _numbers(path, label_column, table.column(label_column))
        if not np.isin(values, (0.0, 1.0)).all():
            bad = values[~np.isin(values, (0.0, 1.0))][0]
            raise InputDataError(
                f"{path}: label column {label_column!r}: expected 0 or 1, found {bad:g}"
            )
        labels = values.astype(np.float32)
    return PartyTable(party, matrix, tuple(features), labels)


def _numbers(path: Path, name: str, column: object) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        values = pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise InputDataError(
            f"{path}: column {name!r}: expected numbers (a feature or label column), found"
            " a value that is not one (leave ID columns out with --ignore-columns)"
        ) from error
    if values.null_count:
        raise InputDataError(f"{path}: column {name!r}: expected numbers, found empty values")
    array: np.ndarray = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    if not np.isfinite(array).all():
        raise InputDataError(f"{path}: column {name!r}: expected finite numbers, found NaN or Inf")
    return array
