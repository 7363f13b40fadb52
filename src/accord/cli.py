"""The ``accord`` command. The only place that configures logging.

Each sub-command lives in :mod:`accord.commands` as a module with ``add_parser`` and a
``run`` stored in the parser defaults. Modules are imported lazily by the sub-command
so that ``accord align`` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from typing import NoReturn

from accord import __version__
from accord.commands.exit_codes import ExitCode, exit_code_of
from accord.errors import AccordError

#: When the ``accord`` command started (``time.perf_counter()``): this module's import,
#: the console script's first step; a later call of main() in the same process restarts it.
_entry: dict[str, float] = {"started": time.perf_counter(), "calls": 0}

#: ``at_once``: set by :func:`main` when the command run asked to end without the
#: interpreter's teardown (``exit_at_once`` in its parser defaults); read by :func:`console`.
_exit: dict[str, bool] = {"at_once": False}

__all__ = ["build_parser", "console", "entry_seconds", "main", "one_line_errors"]

# name -> one-line help; the module accord.commands.<name> defines add_parser(subparsers).
COMMANDS: dict[str, str] = {
    "simulate": "run federated training in one process (Actor-Critic against baselines)",
    "server": "run the federation server (gRPC) with checkpoints and --resume",
    "node": "run a long-lived federation node on its own data",
    "federate": "run a server and N node processes on this machine in one command",
    "predict": "score a CSV or Parquet file with a run folder's trained model",
    "certs": "make a local CA, server and node certificates and node tokens",
    "align": "align samples across parties inside TEEs (intersect, shared shuffle)",
    "vertical": "split learning over aligned tables: label and feature parties over gRPC",
}

logger = logging.getLogger(__name__)


def _configure_logging(verbosity: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbosity > 0 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


#: What a negative number looks like on the command line: argparse's own pattern, plus
#: exponents ("-1e6", "-2.5E-3") and "-inf".
_NEGATIVE_NUMBER = re.compile(r"^-(\d+|\d*\.\d+)([eE][-+]?\d+)?$|^-\d+\.([eE][-+]?\d+)?$|^-inf$")


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Bad options end in one line, ``accord <cmd>: error: … (see accord <cmd> --help)``,
    exit code 2 (:attr:`ExitCode.USAGE`), instead of argparse's usage block; unknown
    options are refused by the sub-command that was given them. Applied to ``parser`` and,
    recursively, to every sub-parser it has."""

    def error(message: str) -> NoReturn:
        parser.exit(
            int(ExitCode.USAGE), f"{parser.prog}: error: {message} (see {parser.prog} --help)\n"
        )

    parse_known = parser.parse_known_args

    def parse_known_args(
        args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = parse_known(args, namespace)
        if extras:
            error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    parser.error = error  # type: ignore[method-assign]
    parser.parse_known_args = parse_known_args  # type: ignore[method-assign,assignment]
    # argparse takes "-1e6" for an option (only "-1" and "-1.5" look like numbers to it),
    # so `--fault-scale -1e6` said "expected one argument" instead of what is wrong with it.
    parser._negative_number_matcher = _NEGATIVE_NUMBER
    for action in parser._actions:  # argparse keeps its sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                one_line_errors(child)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accord",
        description="Accord: federated training with Actor-Critic node weights, and "
        "sample alignment inside trusted execution environments.",
    )
    parser.add_argument("--version", action="version", version=f"accord {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    # Import only the module of the command being run (or all of them for --help).
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, help_text in COMMANDS.items():
        if chosen is not None and name != chosen:
            subparsers.add_parser(name, help=help_text, add_help=False)
            continue
        module = importlib.import_module(f"accord.commands.{name}")
        module.add_parser(subparsers, help_text)
    one_line_errors(parser)
    return parser


def entry_seconds() -> float:
    """Seconds since the ``accord`` command started (see ``_entry``), not since the OS
    process started: a shell or pip may have exec'd ``accord`` in a process it started."""
    return time.perf_counter() - _entry["started"]


def main(argv: Sequence[str] | None = None) -> int:
    if _entry["calls"]:
        _entry["started"] = time.perf_counter()
    _entry["calls"] += 1
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    if not args_list:  # a bare `accord`: the help, as a usage error (nothing was started)
        parser.print_help(sys.stdout)
        return int(ExitCode.USAGE)
    args = parser.parse_args(args_list)
    _exit["at_once"] = bool(getattr(args, "exit_at_once", False))
    _configure_logging(args.verbose, args.quiet)
    try:
        result: int = args.run(args)
    except AccordError as error:
        logger.debug("failed", exc_info=True)
        sys.stderr.write(f"accord {args.command}: error: {error}\n")
        return int(exit_code_of(error))
    except KeyboardInterrupt:
        sys.stderr.write(f"accord {args.command}: interrupted\n")
        return int(ExitCode.INTERRUPTED)
    return result


def console() -> NoReturn:
    """The ``accord`` console script (and ``python -m accord.cli``): :func:`main`, then exit.

    A command that asks for it (``exit_at_once`` in its parser defaults: ``accord align``,
    whose outputs are closed and synced before it returns) ends the process with
    ``os._exit`` once the exit handlers have run (logging's among them) and stdout and
    stderr are flushed, if no other thread is running. The interpreter's teardown would
    free every module and array one by one: 20–30 ms of each party's CPU on a 1M-row
    alignment, whose four processes share two cores (0.76 s → 0.72–0.74 s, medians of 12
    pairs, each run right after the other code's).
    """
    code = main()
    if not _exit["at_once"] or threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: as the interpreter's own exit does
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    console()
