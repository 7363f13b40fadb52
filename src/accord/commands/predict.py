"""``accord predict``: score a CSV or Parquet file with a run folder's trained model.

The run folder of ``accord simulate``, ``accord federate`` or ``accord server`` holds
``model.pt`` (final), ``best_model.pt`` (best validation accuracy) and ``model.json`` (see
:mod:`accord.reporting.model_files`). The input file has the training files' feature
columns (any order; a label column, if present, is not used for the prediction but gives
an accuracy). The output (CSV or Parquet by its extension) has one row per input row, in
the same order: ``predicted`` (the class) and ``probability_<k>`` for each class.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]

_WRITERS = (".csv", ".parquet", ".pq")


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "predict",
        help=help_text,
        description="Score a CSV or Parquet file with the trained model of a run folder; "
        "write the predicted class and the class probabilities (CSV or Parquet by the "
        "extension of --out). A label column, if present, is ignored for the prediction and "
        "the accuracy on it is printed.",
    )
    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="the run folder")
    parser.add_argument("--data", required=True, metavar="FILE", help="CSV or Parquet to score")
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="predictions to write (.csv or .parquet)"
    )
    parser.add_argument(
        "--which",
        choices=("final", "best"),
        default="final",
        help="the final model, or the one with the best validation accuracy [final]",
    )
    parser.add_argument(
        "--policy", default=None, help="which policy's model, when the run trained several"
    )
    parser.add_argument(
        "--label-column",
        default=None,
        help="label column of --data, if any [the run's, usually label]",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import numpy as np

    from accord.errors import ConfigurationError
    from accord.federation.node_data import load_features
    from accord.reporting.model_files import load_model, predict_probabilities

    out = Path(args.out)
    if not out.name.lower().endswith(_WRITERS):
        raise ConfigurationError(
            f"--out {out}: expected a file name ending in .csv, .parquet or .pq"
        )
    if not out.parent.is_dir():
        raise ConfigurationError(f"--out {out}: the directory {out.parent} does not exist")
    module, info = load_model(Path(args.model), which=args.which, policy=args.policy)
    label_column = args.label_column or info.label_column
    table = load_features(Path(args.data), label_column, feature_names=info.feature_names)
    probabilities = predict_probabilities(module, info, table.features)
    predicted = probabilities.argmax(axis=1).astype(np.int64)
    _write(out, predicted, probabilities)
    line = (
        f"scored {len(predicted)} rows of {args.data} with the {args.which} model of {args.model}"
    )
    if table.labels is not None:
        accuracy = float(np.mean(predicted == table.labels))
        line += f"; accuracy {accuracy:.4f} on column {label_column!r}"
    sys.stdout.write(f"{line}; predictions in {out}\n")
    return 0


def _write(out: Any, predicted: Any, probabilities: Any) -> None:
    import pyarrow as pa

    from accord.atomic_files import atomic_output

    columns = {"predicted": pa.array(predicted)}
    for k in range(probabilities.shape[1]):
        columns[f"probability_{k}"] = pa.array(probabilities[:, k])
    table = pa.table(columns)
    with atomic_output(out) as temporary:
        if out.name.lower().endswith(".csv"):
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, temporary)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, temporary)
