"""``accord server``: the federation server (gRPC), with checkpoints and ``--resume``.

SIGINT (Ctrl-C) and SIGTERM stop a run cleanly: the round in progress finishes (waiting at
most until its deadline or 10 s, whichever comes first), the summary and plots are
written, and the exact command that continues the run is printed; the exit code is 130
after SIGINT and 143 after SIGTERM. A second signal stops at once (the last checkpoint
stays resumable).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from accord.commands.exit_codes import ExitCode

if TYPE_CHECKING:
    from accord.federation.settings import ServerSettings

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "add_parser",
    "add_run_arguments",
    "add_scenario_arguments",
    "graceful_stop",
    "refuse_run_options",
    "run",
    "run_settings_from_args",
    "scenario_from_args",
    "stop_exit_code",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051

#: Seconds the round in progress may still take after a stop signal.
STOP_GRACE_SECONDS = 10.0

# Options that decide a run's results; they come from the run folder on --resume.
_RUN_OPTIONS = (
    "config",
    "policies",
    "dataset",
    "nodes",
    "partition",
    "alpha",
    "fault",
    "faulty",
    "fault_scale",
    "fault_start",
    "fault_end",
    "fault_probability",
    "seed",
    "validation_fraction",
    "test_fraction",
    "model",
    "hidden",
    "local_learning_rate",
    "local_epochs",
    "batch_size",
    "momentum",
    "server_learning_rate",
    "rounds",
    "target_accuracy",
    "patience",
    "time_budget",
)


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """The data side of a run: the options of ``accord simulate``, with the same names,
    choices and meaning (they go through :func:`accord.commands.run_options.config_from_args`),
    and ``--config`` for a TOML file (a run folder's ``config.toml`` works)."""
    from accord.commands.run_options import add_scenario_options

    parser.add_argument(
        "--config", metavar="FILE.toml", default=None, help="settings file, as accord simulate"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of everything [0]")
    add_scenario_options(parser.add_argument_group("scenario (as accord simulate)"))
    parser.set_defaults(policies=None, every=None)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Scenario, model, local training, rounds, stop conditions and the policy: the options
    of ``accord simulate`` (one policy instead of several)."""
    from accord.commands.run_options import add_stop_options, add_training_options, policy_list

    add_scenario_arguments(parser)
    parser.add_argument(
        "--policy",
        "--policies",
        dest="policies",
        type=policy_list,
        default=None,
        metavar="NAME",
        help="weighting policy [actor-critic]",
    )
    parser.add_argument("--rounds", type=int, default=None, help="maximum rounds [100]")
    add_training_options(parser.add_argument_group("model and training (as accord simulate)"))
    add_stop_options(
        parser.add_argument_group("stop conditions (whichever comes first)"), "stop after this long"
    )


def scenario_from_args(args: argparse.Namespace) -> Any:
    """The :class:`ScenarioSettings` of the options (and ``--config``)."""
    from accord.commands.run_options import config_from_args

    return config_from_args(args).simulation.scenario


def run_settings_from_args(args: argparse.Namespace) -> tuple[Any, str]:
    """(:class:`SimulationSettings`, policy name) from the options and ``--config``, read
    exactly as ``accord simulate`` reads them."""
    from accord.commands.run_options import config_from_args
    from accord.errors import ConfigurationError

    config = config_from_args(args)
    if args.policies is None and args.config is None:
        return config.simulation, "actor-critic"
    if len(config.policies) != 1:
        raise ConfigurationError(
            f"--policy: a federation runs one policy; got {', '.join(config.policies)}"
        )
    return config.simulation, config.policies[0]


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "server",
        help=help_text,
        description="Run the federation server: wait for a quorum of nodes, run rounds with "
        "a per-round deadline, checkpoint after every round into the run folder. "
        "Nodes connect with `accord node`.",
    )
    add_run_arguments(parser)
    folder = parser.add_argument_group("run folder")
    where = folder.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, help="run folder to create [runs/federation-<id>]")
    where.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue the run saved in RUN_DIR"
    )
    add_federation_arguments(parser)
    add_server_security_arguments(parser)
    data = parser.add_argument_group("server data (instead of the scenario's held-out sets)")
    data.add_argument("--validation-data", default=None, help="CSV/Parquet validation file")
    data.add_argument("--test-data", default=None, help="CSV/Parquet test file")
    data.add_argument("--label-column", default=None, help="label column of those [label]")
    data.add_argument(
        "--standardise-from",
        default=None,
        metavar="FILE",
        help="standardise every node's and the server's data with this transform: a saved "
        "transform (.json, e.g. a run folder's model.json) or a CSV/Parquet file to fit it on "
        "[default: the nodes' combined statistics, sent at registration]",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the server scores the model: cpu or cuda[:k]; a user app receives it as "
        "config['device'] [cpu]",
    )
    app = parser.add_argument_group("user app (instead of a scenario; see docs/api.md)")
    app.add_argument(
        "--app",
        default=None,
        metavar="MODULE:FACTORY",
        help="server factory: FACTORY(config) returns an accord.fl.ServerApp (its model, "
        "validation and test data); the nodes run --app too",
    )
    app.add_argument(
        "--app-config",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="a config value for the server factory and every node (VALUE is JSON if it "
        "parses, else text); repeatable",
    )
    parser.set_defaults(run=run)
    return parser


def add_federation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("federation")
    group.add_argument(
        "--host",
        default=None,
        help=f"address to listen on [{DEFAULT_HOST}; on --resume, the run's own]",
    )
    group.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port; 0 picks a free one [{DEFAULT_PORT}; on --resume, the run's own]",
    )
    group.add_argument(
        "--expected-nodes", type=int, default=None, help="roster size to wait for [--nodes]"
    )
    group.add_argument(
        "--quorum", type=int, default=None, help="nodes needed to start a round [all expected]"
    )
    group.add_argument(
        "--registration-timeout",
        type=float,
        default=None,
        help="seconds to wait for all expected nodes before starting with a quorum; on "
        "--resume, for every node of the saved roster before the first round [60]",
    )
    group.add_argument(
        "--quorum-timeout",
        type=float,
        default=None,
        help="seconds to wait for a quorum before a round, then stop [300]",
    )
    group.add_argument(
        "--round-deadline",
        type=float,
        default=None,
        help="seconds nodes have to answer in a round [60]",
    )
    group.add_argument(
        "--evaluation",
        default=None,
        choices=("server", "federated"),
        help="reward accuracy from the server's validation set or the nodes' [server]",
    )
    group.add_argument(
        "--chunk-bytes",
        type=int,
        default=None,
        help="tensor bytes per gRPC message, for large models [1048576]",
    )


def add_server_security_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument(
        "--failed-registrations-per-minute",
        type=int,
        default=None,
        metavar="N",
        help="failed registrations one address may make before its attempts are throttled "
        "to N a minute [10]",
    )
    group.add_argument(
        "--max-pending-registrations",
        type=int,
        default=None,
        metavar="N",
        help="streams open at once that have not registered yet, from all addresses; an "
        "eighth of them (at least 1) from one address [64]",
    )
    group.add_argument(
        "--credentials", default=None, metavar="DIR", help="folder written by `accord certs`"
    )
    group.add_argument(
        "--client-auth",
        default="both",
        choices=("both", "mtls", "token"),
        help="how nodes prove who they are: client certificate, token, or both [both]",
    )
    group.add_argument("--tls-cert", default=None, help="server certificate (PEM)")
    group.add_argument("--tls-key", default=None, help="server private key (PEM)")
    group.add_argument("--tls-ca", default=None, help="CA that signs node certificates (PEM)")
    group.add_argument("--tokens", default=None, help="tokens.json with node token hashes")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, and any node id is accepted unless --tokens is given "
        "(local experiments only)",
    )


def _explicit_federation_options(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "expected_nodes",
        "quorum",
        "registration_timeout",
        "quorum_timeout",
        "round_deadline",
        "evaluation",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def federation_settings_from_args(args: argparse.Namespace) -> Any:
    from accord.federation.settings import FederationSettings

    return FederationSettings(**_explicit_federation_options(args))


def security_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """(ServerCredentials or None, Authenticator) from the security options."""
    import logging
    from pathlib import Path

    from accord.credentials.auth import (
        REVOKED_NAME,
        Authenticator,
        load_server_credentials,
        read_token_hashes,
    )
    from accord.errors import ConfigurationError

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    logger = logging.getLogger("accord.commands.server")
    given = [args.credentials, args.tls_cert, args.tls_key, args.tls_ca]
    if args.insecure:
        if any(value is not None for value in given):
            raise ConfigurationError("--insecure cannot be combined with TLS options")
        hashes = None if args.tokens is None else read_token_hashes(Path(args.tokens))
        if hashes is None:
            logger.warning(
                "--insecure: plaintext and NO node authentication; any process that reaches "
                "this port can join. Use only for local experiments."
            )
        else:
            logger.warning("--insecure: plaintext; node tokens travel unencrypted")
        return None, Authenticator(hashes, require_client_cert=False)
    if all(value is None for value in given):
        raise ConfigurationError(
            "no TLS credentials: give --credentials DIR (make one with `accord certs DIR`) "
            "or --tls-cert/--tls-key, or --insecure for a local experiment"
        )

    def load() -> Any:
        return load_server_credentials(
            path(args.credentials),
            args.client_auth,
            certificate=path(args.tls_cert),
            private_key=path(args.tls_key),
            client_ca=path(args.tls_ca),
            tokens=path(args.tokens),
        )

    credentials = load()
    if credentials.revoked_certificates:
        logger.info("%d revoked client certificates", len(credentials.revoked_certificates))
    # tokens.json and revoked.json are read again when they change (accord certs --renew).
    watched = [p for p in (path(args.tokens),) if p is not None]
    if args.credentials is not None:
        watched += [Path(args.credentials) / "tokens.json", Path(args.credentials) / REVOKED_NAME]
    return credentials, Authenticator.reloading(load, watched)


def refuse_run_options(args: argparse.Namespace, extra: tuple[str, ...] = ()) -> None:
    """``--resume`` takes the run's saved settings: refuse options that would change them."""
    from accord.errors import ConfigurationError

    explicit = [name for name in (*_RUN_OPTIONS, *extra) if getattr(args, name, None) is not None]
    if explicit:
        flags = ", ".join("--" + name.replace("_", "-") for name in explicit)
        raise ConfigurationError(f"--resume continues with the run's saved settings; drop {flags}")


def stop_exit_code(signal_number: int | None) -> ExitCode:
    """130 after SIGINT, 143 after SIGTERM, 0 for a run that was not stopped."""
    if signal_number is None:
        return ExitCode.OK
    return ExitCode.TERMINATED if signal_number == signal.SIGTERM else ExitCode.INTERRUPTED


@contextlib.contextmanager
def graceful_stop(stop_request: Any) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM ask ``stop_request`` to stop the run after
    the round in progress (one line on stderr); a second signal exits at once with its
    exit code. Outside the main thread, signals keep their handlers."""

    def handle(signal_number: int, frame: object) -> None:
        name = "Ctrl-C" if signal_number == signal.SIGINT else signal.Signals(signal_number).name
        if stop_request.requested:
            sys.stderr.write(f"{name} again: stopping at once (the last checkpoint is kept)\n")
            sys.stdout.flush()
            sys.stderr.flush()
            stop_request.stop_at_once()
            os._exit(int(stop_exit_code(signal_number)))
        sys.stderr.write(
            f"{name}: stopping after this round (at most {STOP_GRACE_SECONDS:g} s; "
            "a second signal stops at once)\n"
        )
        sys.stderr.flush()
        stop_request.request(signal_number)

    previous: dict[int, Any] = {}
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, handle)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for installed, handler in previous.items():
            signal.signal(installed, handler)


def resume_command(command: str, run_dir: Any, options: list[str]) -> str:
    """The exact command line that continues a run."""
    return shlex.join(["accord", command, "--resume", str(run_dir), *options])


def _security_options(args: argparse.Namespace) -> list[str]:
    """The security options as given, to repeat them in the resume command."""
    options: list[str] = []
    for name in ("credentials", "tls_cert", "tls_key", "tls_ca", "tokens"):
        value = getattr(args, name)
        if value is not None:
            options += ["--" + name.replace("_", "-"), str(value)]
    if args.client_auth != "both":
        options += ["--client-auth", args.client_auth]
    if args.insecure:
        options.append("--insecure")
    if args.chunk_bytes is not None:
        options += ["--chunk-bytes", str(args.chunk_bytes)]
    for name in ("failed_registrations_per_minute", "max_pending_registrations"):
        if getattr(args, name, None) is not None:
            options += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return options


def rate_limits_from_args(args: argparse.Namespace) -> Any:
    """The server's :class:`~accord.rate_limits.RateLimitSettings` from its options."""
    from accord.errors import ConfigurationError
    from accord.rate_limits import RateLimitSettings

    given: dict[str, int] = {}
    for option, value in (
        ("--failed-registrations-per-minute", args.failed_registrations_per_minute),
        ("--max-pending-registrations", args.max_pending_registrations),
    ):
        if value is not None and value < 1:
            raise ConfigurationError(f"{option}: expected an integer >= 1, got {value}")
    if args.failed_registrations_per_minute is not None:
        given["failures_per_minute"] = args.failed_registrations_per_minute
    if args.max_pending_registrations is not None:
        given["max_pending"] = args.max_pending_registrations
        given["max_pending_per_source"] = max(1, args.max_pending_registrations // 8)
    return RateLimitSettings(**given)


def _address(args: argparse.Namespace) -> tuple[str, int]:
    """Where to listen: the options, or on --resume the run's saved address (refusing an
    option that differs from it)."""
    from pathlib import Path

    from accord.errors import ConfigurationError
    from accord.federation.run_files import read_run_file

    if args.resume is None:
        return (
            DEFAULT_HOST if args.host is None else args.host,
            DEFAULT_PORT if args.port is None else args.port,
        )
    saved = read_run_file(Path(args.resume)).get("transport")
    if not isinstance(saved, dict):  # a run folder from before addresses were saved
        return (
            DEFAULT_HOST if args.host is None else args.host,
            DEFAULT_PORT if args.port is None else args.port,
        )
    host, port = str(saved["host"]), int(saved["port"])
    for option, given, kept in (("--host", args.host, host), ("--port", args.port, port)):
        if given is not None and given != kept:
            raise ConfigurationError(
                f"{option}: this run listened on {kept}, where its nodes dial; got {given} "
                f"(drop {option} to resume on {kept})"
            )
    return host, port


def run(args: argparse.Namespace) -> int:
    from accord.commands.grpc_log import quiet_grpc_logging, watch_tls_handshakes

    if args.insecure:
        quiet_grpc_logging()
        return _run(args)
    with watch_tls_handshakes():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from accord.federation.launcher import prepare_process, serve

    prepare_process()
    import logging

    from accord.commands.run_output import RunDisplay
    from accord.federation.driver import StopRequest

    if args.resume is not None:
        refuse_run_options(
            args,
            (
                "validation_data",
                "test_data",
                "label_column",
                "standardise_from",
                "app",
                "app_config",
            ),
        )
        settings: ServerSettings | None = None
        max_rounds = None
    else:
        from accord.federation.settings import ServerSettings

        run_settings, policy = run_settings_from_args(args)
        import json

        from accord.errors import ConfigurationError
        from accord.fl.loading import parse_app_config

        if args.app_config and args.app is None:
            raise ConfigurationError("--app-config: only with --app")
        settings = ServerSettings(
            run=run_settings,
            policy=policy,
            federation=federation_settings_from_args(args),
            validation_data=args.validation_data,
            test_data=args.test_data,
            label_column=args.label_column or "label",
            standardise_from=args.standardise_from,
            app=args.app,
            app_config=json.dumps(parse_app_config(args.app_config or [])),
        )
        max_rounds = run_settings.stop.max_rounds
    from accord.federation.server import TransportSettings
    from accord.training.device import resolve_device

    host, port = _address(args)
    credentials, authenticator = security_from_args(args)
    if settings is None:  # the run's own policy and rounds, for the table
        from pathlib import Path

        from accord.federation.run_files import read_run_file, saved_settings

        saved = saved_settings(read_run_file(Path(args.resume)))
        policy, max_rounds = saved.policy, saved.run.stop.max_rounds
    assert max_rounds is not None
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    display = RunDisplay(
        policy,
        max_rounds,
        None,
        quiet,
        lambda address: f"server listening on {address}",
        progress_bar=False,  # stderr has the server's log lines
    )
    stop = StopRequest(STOP_GRACE_SECONDS)
    with graceful_stop(stop):
        served = serve(
            settings,
            TransportSettings(
                host=host,
                port=port,
                **({} if args.chunk_bytes is None else {"chunk_bytes": args.chunk_bytes}),
                limits=rate_limits_from_args(args),
            ),
            credentials,
            authenticator,
            out=args.out,
            resume=args.resume,
            overrides=_explicit_federation_options(args) if args.resume is not None else None,
            progress=display,
            stop_request=stop,
            device=str(resolve_device(args.device)),
        )
    if served.diverged:
        return int(ExitCode.DIVERGED)
    if not served.interrupted:
        return int(stop_exit_code(stop.signal_number))
    what = f"after round {served.rounds}" if served.rounds else "before the first round"
    sys.stdout.write(
        f"stopped {what}; continue with: "
        f"{resume_command('server', served.run_dir, _security_options(args))}\n"
    )
    sys.stdout.flush()
    return int(stop_exit_code(stop.signal_number))
