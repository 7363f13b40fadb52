"""``accord align``: sample alignment inside (simulated) TEEs.

Three forms share one parser::

    accord align --input a.csv --key id --listen 0.0.0.0:9000 --policy policy.toml ...
    accord align identity      # this installation's measurement, platform key, a policy
    accord align demo          # two parties with a known overlap on 127.0.0.1, checked

The plain form runs one party (see :mod:`accord.tee.runtime.party`); its options may also
come from ``--config FILE.toml`` (:class:`~accord.commands.align_config.AlignConfig`: same
names, ``-`` spelled ``_``; paths relative to the file), flags winning over the file. The
options are mapped in :mod:`~accord.commands.align_config`, the progress is shown by
:mod:`~accord.commands.align_display`, and ``identity`` and ``demo`` are
:mod:`~accord.commands.align_tools`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "align",
        help=help_text,
        description="Align samples across parties inside TEEs: each party's enclave intersects "
        "the parties' IDs over attested, encrypted channels, shuffles the intersection in an "
        "order every enclave agrees on, and gives this host only its own rows in that order. "
        "Run one party with the options below, or see `accord align identity` and "
        "`accord align demo`.",
    )
    _add_party_arguments(parser)
    parser.set_defaults(run=run, align_command=None, exit_at_once=True)
    commands = parser.add_subparsers(dest="align_command", metavar="{identity,demo}")
    commands.required = False

    identity = commands.add_parser(
        "identity",
        help="print this installation's enclave measurement, platform key and a policy snippet",
        description="Start this installation's enclave, print its measurement and the "
        "fingerprint of the platform key that signs its quotes, and a policy TOML a peer can "
        "use to trust it.",
    )
    identity.add_argument("--platform-key", type=Path, default=None, help=_PLATFORM_KEY_HELP)
    identity.add_argument("--json", action="store_true", help="print one JSON object instead")
    identity.set_defaults(run=_run_identity, exit_at_once=False)

    demo = commands.add_parser(
        "demo",
        help="run a whole alignment between parties on 127.0.0.1 and check it",
        description="Generate the parties' tables with a known overlap, run every party "
        "(hosts and enclaves as separate processes) on 127.0.0.1 with a generated policy, "
        "print what each side received and check it against the known overlap.",
    )
    demo.add_argument(
        "--keep",
        "--dir",
        dest="keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the tables, outputs and policy into DIR and keep them there [a temporary "
        "folder, removed at the end]",
    )
    demo.add_argument("--rows", type=int, default=10_000, help="rows per party [10000]")
    demo.add_argument(
        "--overlap", type=float, default=0.5, help="share of rows common to all [0.5]"
    )
    demo.add_argument("--parties", type=int, default=2, help="number of parties [2]")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated tables [0]")
    demo.add_argument(
        "--memory-limit",
        metavar="SIZE",
        default=None,
        help="run every party bucketed with this memory budget (e.g. 256MiB) [in memory]",
    )
    demo.add_argument(
        "--buckets", metavar="B", default=None, help="run every party in B buckets [in memory]"
    )
    demo.set_defaults(run=_run_demo, exit_at_once=False)
    return parser


_PLATFORM_KEY_HELP = (
    "simulated platform key [$ACCORD_PLATFORM_KEY, $ACCORD_HOME/platform-key.pem or "
    "~/.accord/platform-key.pem; created on first use]"
)


def _add_party_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", type=Path, default=None, help="TOML file with any of these options")
    add("--input", type=Path, default=None, help="this party's table (.csv, .tsv, .parquet)")
    add(
        "--key",
        action="append",
        default=None,
        help="key column; repeat or comma-separate for a key of several columns",
    )
    add("--listen", default=None, help="HOST:PORT to accept peers on (port 0: any free port)")
    add("--peer", action="append", default=None, help="HOST:PORT of a peer to dial (repeatable)")
    add("--parties", type=int, default=None, help="number of parties, this one included [2]")
    add("--party-name", default=None, help="this party's name, unique in the session [hostname]")
    add("--session", default=None, help="session name, the same on every party [accord-align]")
    add("--policy", type=Path, default=None, help="attestation policy TOML (required)")
    add("--output-map", type=Path, default=None, help="row map: shared position -> local row")
    add("--output-table", type=Path, default=None, help="own rows in the shared order")
    add("--include-ids", action="store_true", default=None, help="also write IDs into the map")
    add("--summary", type=Path, default=None, help="also write the summary JSON here")
    add(
        "--duplicates",
        choices=("error", "first", "drop-all"),
        default=None,
        help="an ID on several rows: refuse, keep the first row, or drop them all [error]",
    )
    add(
        "--skip-invalid",
        action="store_true",
        default=None,
        help="drop (and count) empty and undecodable IDs instead of refusing the input",
    )
    add(
        "--pad-to",
        type=int,
        default=None,
        help="pad the digest stream to this many IDs to hide this party's set size",
    )
    add("--platform-key", type=Path, default=None, help=_PLATFORM_KEY_HELP)
    add(
        "--debug-enclave",
        action="store_true",
        help="run a debug enclave (peers refuse it unless their policy allows debug)",
    )
    add(
        "--connect-timeout",
        type=float,
        default=None,
        help="seconds to reach every peer [60]; a peer listens only once its own input is "
        "loaded and checked, so this must also cover the slowest peer's load",
    )
    add("--idle-timeout", type=float, default=None, help="seconds a peer may be silent [300]")
    add(
        "--max-pending-connections",
        type=int,
        default=None,
        metavar="N",
        help="connections from one address that may wait at once to say their hello to this "
        "party's listener (8 N from all); more are dropped, refused hellos throttled [8]",
    )
    add(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="memory budget of this party, host and enclave (e.g. 2GiB); inputs larger than "
        "it are aligned bucket by bucket through sealed files on disk [no limit: in memory]",
    )
    add(
        "--buckets",
        default=None,
        metavar="B",
        help="align in B buckets (the parties use the largest B any asks for) [from "
        "--memory-limit]",
    )
    add(
        "--run-dir",
        type=Path,
        default=None,
        help="directory of a bucketed run's sealed files and progress [next to the first "
        "output: accord-run-SESSION-PARTY]",
    )
    add(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue a bucketed run that stopped (its settings, --listen and --peer "
        "included, come from RUN_DIR; give --listen/--peer only if the addresses changed; "
        "resume every party)",
    )
    add(
        "--progress",
        choices=("auto", "bar", "log", "none"),
        default="auto",
        help="progress display on stderr: bars, plain lines, or none [auto: bars on a terminal]",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from accord.commands.align_config import resume_from_args, settings_from_args
    from accord.tee.runtime.launch import launch_enclave, tune_host_memory

    tune_host_memory()  # before numpy loads: freed memory kept, no huge pages, no BLAS threads
    resume = None
    if args.resume is not None:
        settings, resume = resume_from_args(args)
    else:
        settings = settings_from_args(args)
    # The enclave process starts first (nothing heavy is loaded yet) and loads its modules
    # while this host loads the rest.
    launched = launch_enclave(platform_key=settings.platform_key, debug=settings.debug_enclave)
    from accord.commands.align_display import ProgressDisplay
    from accord.tee.runtime.host import EnclaveProcess
    from accord.tee.runtime.party import align_party

    enclave = EnclaveProcess(*launched)

    display = ProgressDisplay(args.progress)
    try:
        summary = align_party(
            settings,
            enclave=enclave,
            progress=display,
            on_listening=display.listening,
            resume=resume,
            events=display.event,
        )
    finally:
        display.close()
        if resume is not None:
            resume[0].close()
    sys.stdout.write(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    return 0


def _run_identity(args: argparse.Namespace) -> int:
    from accord.commands.align_tools import run_identity

    return run_identity(args)


def _run_demo(args: argparse.Namespace) -> int:
    from accord.commands.align_tools import run_demo

    return run_demo(args)
