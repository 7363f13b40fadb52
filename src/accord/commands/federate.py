"""``accord federate --nodes N``: a server and N node processes on 127.0.0.1, one command.

Takes the options of ``accord simulate`` (one policy), shows the same table and summary,
and writes the same run folder (plus the federation's checkpoint and statistics).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    from accord.commands.run_options import add_display_options
    from accord.commands.server import add_run_arguments

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "federate",
        help=help_text,
        description="Run a whole federation on this machine: the server and one process per "
        "node talking gRPC over 127.0.0.1 with freshly generated TLS certificates and tokens. "
        "Takes the options of `accord simulate` (one policy), shows the same table and "
        "writes the same run folder.",
    )
    add_run_arguments(parser)
    add_display_options(parser)
    federation = parser.add_argument_group("federation")
    federation.add_argument(
        "--round-deadline", type=float, default=None, help="seconds nodes have per round [60]"
    )
    federation.add_argument(
        "--quorum", type=int, default=None, help="nodes needed to start a round [all]"
    )
    federation.add_argument(
        "--evaluation",
        default=None,
        choices=("server", "federated"),
        help="reward accuracy from the server's validation set or the nodes' [server]",
    )
    federation.add_argument("--insecure", action="store_true", help="plaintext, no authentication")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run saved in RUN_DIR (a run of accord federate), with its settings",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import time

    from accord.commands.grpc_log import quiet_grpc_logging

    quiet_grpc_logging()
    launched_at = time.time()
    from accord.federation.scenario_helper import ScenarioHelper

    # First thing: a helper loads the data (scikit-learn) while this process imports torch.
    helper = ScenarioHelper()
    try:
        return _run(args, launched_at, helper)
    finally:
        helper.cancel()


def _run(args: argparse.Namespace, launched_at: float, helper: Any) -> int:
    import logging

    from accord.commands.exit_codes import ExitCode
    from accord.commands.run_output import RunDisplay
    from accord.commands.server import (
        STOP_GRACE_SECONDS,
        graceful_stop,
        refuse_run_options,
        resume_command,
        run_settings_from_args,
        stop_exit_code,
    )
    from accord.errors import ConfigurationError
    from accord.federation.driver import StopRequest
    from accord.federation.local import FederateSettings, federate
    from accord.federation.settings import FederationSettings, ServerSettings

    if args.every is not None and args.every < 1:
        raise ConfigurationError(f"--every: expected an integer >= 1, got {args.every}")
    settings: ServerSettings | None
    if args.resume is not None:
        from accord.federation.run_files import read_run_file, saved_settings

        if args.out is not None:
            raise ConfigurationError("--resume continues the run in its own folder; drop --out")
        refuse_run_options(args, ("quorum", "round_deadline", "evaluation"))
        saved = saved_settings(read_run_file(Path(args.resume)))
        settings, policy, max_rounds = None, saved.policy, saved.run.stop.max_rounds
        nodes_count = saved.run.scenario.nodes
    else:
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
        max_rounds = run_settings.stop.max_rounds
        nodes_count = run_settings.scenario.nodes
    quiet = args.simulate_quiet or logging.getLogger().getEffectiveLevel() > logging.INFO
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        # The table says what the server's per-round log lines would; -v shows them.
        logging.getLogger("accord.federation").setLevel(logging.WARNING)
    transport = "plaintext" if args.insecure else "TLS, client certificates and tokens"

    nodes = nodes_count

    def describe(address: str) -> str:
        return f"federation: a server and {nodes} node processes on 127.0.0.1 ({transport})"

    display = RunDisplay(policy, max_rounds, args.every, quiet, describe)
    stop = StopRequest(STOP_GRACE_SECONDS)
    with graceful_stop(stop):
        served = federate(
            settings,
            FederateSettings(insecure=args.insecure),
            out=args.out,
            resume=args.resume,
            progress=display,
            launched_at=launched_at,
            scenario_helper=helper,
            stop_request=stop,
        )
    if served.interrupted:
        what = f"after round {served.rounds}" if served.rounds else "before the first round"
        options = ["--insecure"] if args.insecure else []
        sys.stdout.write(
            f"stopped {what}; continue with: "
            f"{resume_command('federate', served.run_dir, options)}\n"
        )
        sys.stdout.flush()
    if served.diverged:
        return int(ExitCode.DIVERGED)
    return int(stop_exit_code(stop.signal_number))
