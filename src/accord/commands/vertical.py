"""``accord vertical``: split learning over aligned tables, one process per party.

::

    accord vertical label   --table bank.aligned.csv --alignment bank.summary.json \\
        --label-column y --ignore-columns id --listen 0.0.0.0:9800 --credentials creds \\
        --run-dir run
    accord vertical feature --table insurer.aligned.csv --alignment insurer.summary.json \\
        --ignore-columns id --connect bank.example:9800 --credentials creds/insurer
    accord vertical demo    # breast cancer, aligned with `accord align`, trained on 127.0.0.1

The label party listens (it hosts the top model); every feature party dials it. The
parties' settings (flags below, or ``--config FILE.toml`` with the keys of
:class:`~accord.vertical.settings.VerticalSettings`, flags winning) must be the same on
every party: the label party refuses, with one line on both sides, a party whose settings,
alignment fingerprint or row count differ.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accord.commands.vertical_options import (
    add_party_arguments,
    parse_address,
    read_inputs,
    settings_from_args,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "vertical",
        help=help_text,
        description="Split learning over the aligned tables of `accord align`: each party "
        "trains a bottom model on its own columns, the label party the top model and the "
        "loss; only embeddings and their gradients travel (gRPC, mutual TLS and tokens).",
    )
    commands = parser.add_subparsers(dest="vertical_command", metavar="{label,feature,demo}")
    commands.required = True
    label = commands.add_parser(
        "label",
        help="run the label party: listen, admit the feature parties, train, write RUN_DIR",
        description="Run the label party of a vertical run. It listens (--listen), admits "
        "every feature party of the alignment once its credentials and its agreement "
        "(alignment fingerprint, row count, settings) check out, trains, and writes RUN_DIR: "
        "label.json (where it listens), metrics.jsonl, summary.json, loss.png, auc.png.",
    )
    add_party_arguments(label)
    label.add_argument("--label-column", required=True, help="the 0/1 label column")
    label.add_argument(
        "--listen", required=True, metavar="HOST:PORT", help="where to listen (port 0: any)"
    )
    label.add_argument(
        "--credentials",
        type=Path,
        required=True,
        metavar="DIR",
        help="the folder `accord certs DIR --names ...` wrote (its server.pem, tokens.json)",
    )
    label.add_argument("--run-dir", type=Path, default=Path("vertical-run"), help="[vertical-run]")
    label.add_argument(
        "--protection",
        choices=("none", "max_norm", "label_dp"),
        default="none",
        help="perturb the gradients returned to the feature parties [none]",
    )
    label.add_argument("--epsilon", type=float, default=1.0, help="label_dp's epsilon [1]")
    label.add_argument(
        "--private-seed", type=int, default=0, help="seed of the protection's noise [0]"
    )
    label.add_argument(
        "--join-timeout", type=float, default=600.0, help="seconds to wait for the parties [600]"
    )
    label.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a feature party lost mid-run to connect again; the run "
        "then continues from the last epoch every party holds (0: a loss ends the run) [60]",
    )
    label.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its checkpoint (running feature parties "
        "reconnect by themselves; a restarted one needs --resume too)",
    )
    label.set_defaults(run=run, vertical_role="label")
    feature = commands.add_parser(
        "feature",
        help="run a feature party: dial the label party and serve its rounds",
        description="Run a feature party of a vertical run: dial the label party, prove "
        "who it is (its certificate and token), announce its alignment fingerprint, row "
        "count and settings, and answer every batch until the label party ends the run.",
    )
    add_party_arguments(feature)
    feature.add_argument("--connect", required=True, metavar="HOST:PORT", help="the label party")
    feature.add_argument(
        "--credentials",
        type=Path,
        required=True,
        metavar="DIR",
        help="this party's folder from `accord certs DIR --names ...` (DIR/<name>)",
    )
    feature.add_argument(
        "--server-name", default=None, help="TLS name on the label party's certificate"
    )
    feature.add_argument(
        "--connect-timeout", type=float, default=60.0, help="seconds to reach it [60]"
    )
    feature.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="FILE",
        help="save this party's state here after every epoch (needed to --resume)",
    )
    feature.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to keep redialling a label party lost mid-run (0: a loss ends this "
        "party) [60]",
    )
    feature.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint FILE (a restarted party rejoins the running label "
        "party; a file not written yet: join as a new party)",
    )
    feature.set_defaults(run=run, vertical_role="feature")
    from accord.commands.vertical_demo import add_demo_parser
    from accord.commands.vertical_predict import add_predict_parser

    add_predict_parser(commands)
    add_demo_parser(commands)
    return parser


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    label_column = args.label_column if args.vertical_role == "label" else None
    table, info = read_inputs(args, label_column)
    if args.vertical_role == "label":
        return _run_label(args, settings, table, info.parties, info.fingerprint)
    return _run_feature(args, settings, table, info.fingerprint)


def _run_label(
    args: argparse.Namespace,
    settings: Any,
    table: Any,
    parties: tuple[str, ...],
    fingerprint: str | None,
) -> int:
    from accord.vertical.network import ListenSettings, run_label_party
    from accord.vertical.parties import LabelParty
    from accord.vertical.settings import ProtectionSettings

    host, port = parse_address(args.listen, "--listen")
    listen = ListenSettings(
        host, port, args.join_timeout, args.idle_timeout, args.reconnect_timeout
    )
    protection = ProtectionSettings(args.protection, args.epsilon)
    features = [p for p in parties if p != table.name]
    label = LabelParty(table, settings, features, protection, args.private_seed)
    result = run_label_party(
        label,
        fingerprint,
        args.credentials,
        listen,
        args.run_dir,
        resume=args.resume,
        on_step=_failpoint(),
    )
    test = result.test
    sys.stdout.write(
        f"vertical run of {', '.join(parties)}: {len(result.epochs)} epochs, best epoch"
        f" {result.best_epoch}"
        + ("" if test is None else f", test loss {test.loss:.4f}")
        + ("" if test is None or test.auc is None else f", test AUC {test.auc:.4f}")
        + f"\n  run folder: {args.run_dir}\n"
    )
    return 0


def _run_feature(
    args: argparse.Namespace, settings: Any, table: Any, fingerprint: str | None
) -> int:
    from accord.vertical.feature_transport import DialSettings
    from accord.vertical.network import run_feature_party
    from accord.vertical.parties import FeatureParty

    parse_address(args.connect, "--connect")
    dial = DialSettings(
        args.connect,
        args.connect_timeout,
        args.idle_timeout,
        args.server_name,
        reconnect_timeout=args.reconnect_timeout,
    )
    party = FeatureParty(table, settings)
    reason = run_feature_party(
        party,
        fingerprint,
        args.credentials,
        dial,
        checkpoint=args.checkpoint,
        resume=args.resume,
        on_step=_failpoint(),
    )
    sys.stdout.write(f"party {table.name!r}: the label party ended the run: {reason}\n")
    return 0


def _failpoint() -> Callable[[int, int], None] | None:
    """``ACCORD_FAILPOINT=vertical-exit@E``: SIGKILL this party after the training step of
    batch 2 of epoch E (tests of a party killed mid-epoch)."""
    from accord.failpoints import VERTICAL_ACTIONS, failpoints_for

    points = failpoints_for(VERTICAL_ACTIONS)
    if not points:
        return None
    epoch = points[0].step

    def die(done_epoch: int, batch: int) -> None:
        if (done_epoch, batch) == (epoch, 2):
            os.kill(os.getpid(), signal.SIGKILL)

    return die
