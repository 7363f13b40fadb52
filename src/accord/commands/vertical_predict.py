"""``accord vertical predict``: score new rows with a trained vertical model, jointly.

::

    accord vertical predict label --run-dir bank-run --train-table bank.aligned.csv \\
        --train-alignment bank.summary.json --label-column defaulted \\
        --table bank.new.aligned.csv --alignment bank.new.summary.json \\
        --ignore-columns customer_id --listen 0.0.0.0:9801 --credentials creds --out scores.csv
    accord vertical predict feature --checkpoint insurer.ckpt.npz \\
        --train-table insurer.aligned.csv --train-alignment insurer.summary.json \\
        --table insurer.new.aligned.csv --alignment insurer.new.summary.json \\
        --ignore-columns customer_id --connect bank.example:9801 --credentials creds/insurer \\
        [the training's settings flags]

The new rows are aligned first by a new ``accord align`` (their own summaries). Each party
rebuilds its part of the model from its training table and its checkpoint (the run's best
epoch); each feature party sends its embedding of its columns of the new rows, and only
the label party computes the scores (``--out``: ``position,probability`` in the new
alignment's shared order).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from accord.commands.vertical_options import add_party_arguments

__all__ = ["add_predict_parser"]


def add_predict_parser(commands: Any) -> None:
    predict: argparse.ArgumentParser = commands.add_parser(
        "predict",
        help="score new aligned rows with a trained model; only the label party gets scores",
        description="Score new rows (aligned by a new `accord align`) with a trained vertical "
        "model. Run `predict label` on the label party (it rebuilds its model from its "
        "training table, RUN_DIR's settings and checkpoint, and alone receives the scores) and "
        "`predict feature` on each feature party (its training table, its --checkpoint FILE "
        "and the training's settings flags).",
    )
    roles = predict.add_subparsers(dest="predict_role", metavar="{label,feature}")
    roles.required = True
    label = roles.add_parser("label", help="listen, gather the embeddings, write the scores")
    add_party_arguments(label, "the new rows' aligned table (CSV or Parquet)")
    _add_training_arguments(label)
    label.add_argument("--run-dir", type=Path, required=True, help="the training's run folder")
    label.add_argument("--label-column", required=True, help="the training table's label column")
    label.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to listen")
    label.add_argument("--credentials", type=Path, required=True, metavar="DIR")
    label.add_argument("--out", type=Path, required=True, help="the scores CSV to write")
    label.add_argument("--join-timeout", type=float, default=600.0, help="[600]")
    label.set_defaults(run=run_predict, vertical_role="label")
    feature = roles.add_parser("feature", help="send this party's embedding of the new rows")
    add_party_arguments(feature, "the new rows' aligned table (CSV or Parquet)")
    _add_training_arguments(feature)
    feature.add_argument(
        "--checkpoint", type=Path, required=True, help="the --checkpoint FILE of the training"
    )
    feature.add_argument("--connect", required=True, metavar="HOST:PORT")
    feature.add_argument("--credentials", type=Path, required=True, metavar="DIR")
    feature.add_argument("--server-name", default=None)
    feature.add_argument("--connect-timeout", type=float, default=60.0, help="[60]")
    feature.set_defaults(run=run_predict, vertical_role="feature")


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train-table", type=Path, required=True, help="this party's training table"
    )
    parser.add_argument(
        "--train-alignment",
        type=Path,
        required=True,
        metavar="SUMMARY",
        help="the training alignment's summary JSON",
    )


def run_predict(args: argparse.Namespace) -> int:
    from accord.commands.vertical_options import parse_address, read_inputs, settings_from_args
    from accord.errors import ConfigurationError
    from accord.vertical.inputs import read_alignment

    training = read_alignment(args.train_alignment)
    if args.vertical_role == "label":
        settings, protection = _run_settings(args.run_dir)
    else:
        settings, protection = settings_from_args(args), None
    new_rows, new_info = read_inputs(args, label_column=None)
    if new_info.party != training.party or set(new_info.parties) != set(training.parties):
        raise ConfigurationError(
            f"--alignment: parties {new_info.parties} ({new_info.party}) differ from the"
            f" training's {training.parties} ({training.party})"
        )
    label_column = args.label_column if args.vertical_role == "label" else None
    train_args = argparse.Namespace(
        **{**vars(args), "table": args.train_table, "alignment": args.train_alignment}
    )
    table, _ = read_inputs(train_args, label_column=label_column)
    if args.vertical_role == "feature":
        from accord.vertical.feature_transport import DialSettings
        from accord.vertical.network import predict_feature_party
        from accord.vertical.parties import FeatureParty

        parse_address(args.connect, "--connect")
        dial = DialSettings(args.connect, args.connect_timeout, args.idle_timeout, args.server_name)
        reason = predict_feature_party(
            FeatureParty(table, settings),
            training.fingerprint,
            args.checkpoint,
            new_rows,
            new_info.fingerprint,
            args.credentials,
            dial,
        )
        sys.stdout.write(f"party {table.name!r}: {reason}\n")
        return 0
    from accord.vertical.network import ListenSettings, predict_label_party
    from accord.vertical.parties import LabelParty
    from accord.vertical.run_files import write_scores

    host, port = parse_address(args.listen, "--listen")
    listen = ListenSettings(host, port, args.join_timeout, args.idle_timeout)
    features = [p for p in training.parties if p != table.name]
    label = LabelParty(table, settings, features, protection)
    scores = predict_label_party(
        label,
        training.fingerprint,
        args.run_dir,
        new_rows,
        new_info.fingerprint,
        args.credentials,
        listen,
    )
    write_scores(args.out, scores)
    sys.stdout.write(f"scored {len(scores)} rows: {args.out}\n")
    return 0


def _run_settings(run_dir: Path) -> tuple[Any, Any]:
    """The training's settings and protection, from its ``summary.json``."""
    import json

    from accord.errors import InputDataError
    from accord.settings_mapping import settings_from_mapping
    from accord.vertical.settings import ProtectionSettings, VerticalSettings

    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputDataError(f"{path}: not a finished vertical run's summary ({error})") from error
    return (
        settings_from_mapping(VerticalSettings, summary["settings"], source=str(path)),
        settings_from_mapping(ProtectionSettings, summary["protection"], source=str(path)),
    )
