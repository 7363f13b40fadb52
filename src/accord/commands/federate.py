"""``accord federate --nodes N``: a server and N node processes on 127.0.0.1, one command."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    from accord.commands.server import add_run_arguments

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "federate",
        help=help_text,
        description="Run a whole federation on this machine: the server and one process per "
        "node talking gRPC over 127.0.0.1 with freshly generated TLS certificates and tokens. "
        "Takes the same options as `accord simulate` and writes the same run folder.",
    )
    add_run_arguments(parser)
    parser.add_argument("--out", default=None, help="run folder [runs/federate-<id>]")
    parser.add_argument(
        "--round-deadline", type=float, default=None, help="seconds nodes have per round [60]"
    )
    parser.add_argument(
        "--quorum", type=int, default=None, help="nodes needed to start a round [all]"
    )
    parser.add_argument(
        "--evaluation",
        default=None,
        choices=("server", "federated"),
        help="reward accuracy from the server's validation set or the nodes' [server]",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext, no authentication (faster start)"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import time

    launched_at = time.time()
    import logging
    import sys

    from accord.commands.server import run_settings_from_args
    from accord.federation.launcher import FederateSettings, federate
    from accord.federation.settings import FederationSettings, ServerSettings

    run_settings, policy = run_settings_from_args(args)
    federation = FederationSettings(
        **{
            k: v
            for k, v in (
                ("quorum", args.quorum),
                ("round_deadline", args.round_deadline),
                ("evaluation", args.evaluation),
            )
            if v is not None
        }
    )
    settings = ServerSettings(run=run_settings, policy=policy, federation=federation)
    total = run_settings.stop.max_rounds
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO

    def progress(timed: Any) -> None:
        record = timed.record
        if quiet:
            return
        accuracy = record.test_accuracy
        sys.stderr.write(
            f"round {record.round_index + 1}/{total}: test accuracy "
            f"{'-' if accuracy is None else f'{accuracy:.4f}'}, "
            f"{len(record.present)}/{len(record.probabilities)} nodes, "
            f"{timed.round_seconds * 1000:.0f} ms\n"
        )

    return federate(
        settings,
        FederateSettings(insecure=args.insecure),
        out=args.out,
        on_round=progress,
        launched_at=launched_at,
    )
