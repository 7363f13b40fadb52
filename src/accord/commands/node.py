"""``accord node``: a long-lived federation node that trains on its own data."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

_LOGGER = logging.getLogger(__name__)

__all__ = ["STANDARDISE_CHOICES", "add_parser", "run"]

#: ``accord node --standardise``: the run's global statistics, this node's own, or none.
STANDARDISE_CHOICES = ("global", "own", "off")


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    from accord.commands.server import add_scenario_arguments

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "node",
        help=help_text,
        description="Join a federation: load the data once, keep the model in memory, answer "
        "the server's rounds, reconnect with backoff when the server restarts. Data is one "
        "partition of an embedded scenario (--scenario-node K with the same scenario "
        "options as the server) or a CSV/Parquet file with a label column (--data).",
    )
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="server address")
    parser.add_argument("--node-id", default=None, help="this node's id [node-KK for a scenario]")
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--scenario-node", type=int, default=None, metavar="K", help="hold scenario partition K"
    )
    source.add_argument("--data", default=None, help="CSV or Parquet file of samples")
    source.add_argument(
        "--app",
        default=None,
        metavar="MODULE:FACTORY",
        help="user app: FACTORY(node_id, config) returns an accord.fl.Node (its model, data, "
        "fit and evaluate); config is the server's --app-config values updated with this "
        "node's",
    )
    data.add_argument(
        "--app-config",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="a config value for this node's factory (JSON if it parses); repeatable",
    )
    data.add_argument(
        "--device",
        default="cpu",
        help="where this node trains: cpu or cuda[:k]; a user app receives it as "
        "config['device'] [cpu]",
    )
    data.add_argument("--label-column", default="label", help="label column of --data [label]")
    data.add_argument(
        "--standardise",
        choices=STANDARDISE_CHOICES,
        default=None,
        help="how --data is scaled: 'global' sends the moments of the features (count, sums, "
        "sums of squares; nothing else) at registration and trains on the run's global "
        "standardisation; 'own' uses this node's statistics (worse on non-IID splits); 'off' "
        "trains on the values as they are [global]",
    )
    data.add_argument(
        "--node-validation-fraction",
        type=float,
        default=0.0,
        help="share of this node's samples kept for federated evaluation [0]",
    )
    add_scenario_arguments(parser)
    security = parser.add_argument_group("security")
    security.add_argument(
        "--credentials",
        default=None,
        metavar="DIR",
        help="this node's folder from `accord certs` (ca.pem, node.pem, node.key, token)",
    )
    security.add_argument("--tls-ca", default=None, help="CA of the server certificate (PEM)")
    security.add_argument("--tls-cert", default=None, help="client certificate (PEM)")
    security.add_argument("--tls-key", default=None, help="client private key (PEM)")
    security.add_argument("--token-file", default=None, help="file holding this node's token")
    security.add_argument(
        "--server-name", default=None, help="name to check the server certificate against"
    )
    security.add_argument(
        "--insecure", action="store_true", help="plaintext (local experiments only)"
    )
    connection = parser.add_argument_group("connection")
    connection.add_argument(
        "--give-up-after",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="exit (code 3) after this many seconds without a session with the server; "
        "reconnect attempts are at most 2 s apart [600]",
    )
    connection.add_argument(
        "--chunk-bytes",
        type=int,
        default=None,
        help="tensor bytes per gRPC message, for large models [1048576]",
    )
    connection.add_argument(
        "--keep-alive",
        action="store_true",
        help="after a run ends, wait for the next one instead of exiting",
    )
    # Load tests (benchmarks/federation_load.py): N sessions in this process, scenario
    # partitions K..K+N-1 of --scenario-node K, each a client of its own (channel,
    # credentials from the `accord certs` folder --credentials DIR/<node id>, registration).
    connection.add_argument("--sessions", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from accord.commands.grpc_log import quiet_grpc_logging

    quiet_grpc_logging()
    from accord.federation.launcher import prepare_process

    prepare_process()
    import numpy as np

    from accord.errors import ConfigurationError
    from accord.federation.client import NodeClient
    from accord.federation.worker import NodeWorker
    from accord.training.device import resolve_device

    if args.sessions is not None:
        return _run_sessions(args)
    # Credentials first: a mistake there should not wait for the data to load.
    credentials = _credentials(args)
    if args.app is not None:
        if args.standardise is not None:
            raise ConfigurationError("--standardise: only with --data (an app scales its data)")
        return _run_app(args, credentials)
    if args.app_config:
        raise ConfigurationError("--app-config: only with --app")
    data = _node_data(args)
    worker = NodeWorker(
        data.node_name,
        data.features,
        data.labels,
        seed=data.seed,
        validation=data.validation,
        fault=data.fault,
        # --data with the default --standardise global: the server's transform, once sent
        global_standardisation=args.data is not None and args.standardise in (None, "global"),
        device=str(resolve_device(args.device)),
    )
    settings = _node_settings(args)
    _LOGGER.info(
        "node %s: %d samples, %d features; server %s",
        data.node_name,
        len(data.labels),
        data.features.shape[1],
        args.server,
    )
    client = NodeClient(
        worker,
        settings,
        credentials,
        rng=np.random.default_rng([data.seed, 5]),
        fingerprint=data.fingerprint,
    )
    reason = client.run()
    _LOGGER.info("node %s done: %s", data.node_name, reason)
    return 0


def _credentials(args: argparse.Namespace) -> Any:
    """The node's credentials from its options (``None``: plaintext without a token)."""
    from pathlib import Path

    from accord.credentials.auth import load_node_credentials
    from accord.errors import ConfigurationError

    given = [args.credentials, args.tls_ca, args.tls_cert, args.tls_key, args.token_file]
    if args.insecure:
        if any(value is not None for value in given[:4]):
            raise ConfigurationError("--insecure cannot be combined with TLS options")
        _LOGGER.warning("--insecure: talking to the server in plaintext")
        if args.token_file is None:
            return None
        return load_node_credentials(None, token_file=Path(args.token_file))
    if all(value is None for value in given):
        raise ConfigurationError(
            "no credentials: give --credentials DIR (from `accord certs`) or --tls-ca and "
            "a token or client certificate, or --insecure for a local experiment"
        )
    return load_node_credentials(
        None if args.credentials is None else Path(args.credentials),
        root_ca=None if args.tls_ca is None else Path(args.tls_ca),
        certificate=None if args.tls_cert is None else Path(args.tls_cert),
        private_key=None if args.tls_key is None else Path(args.tls_key),
        token_file=None if args.token_file is None else Path(args.token_file),
    )


@dataclass(frozen=True)
class _NodeData:
    """What a built-in node trains on: its name, seed, rows, held-out rows and fault."""

    node_name: str
    seed: int
    features: Any
    labels: Any
    validation: Any
    fault: Any
    fingerprint: Any


def _node_data(args: argparse.Namespace) -> _NodeData:
    """The node's rows from ``--scenario-node`` or ``--data``, its validation split taken
    and its scaling applied as ``--standardise`` says."""
    import zlib
    from pathlib import Path

    from accord.commands.server import scenario_from_args
    from accord.errors import ConfigurationError
    from accord.federation.fingerprint import Fingerprint
    from accord.federation.node_data import split_validation

    feature_names: tuple[str, ...] | None = None
    if args.scenario_node is not None:
        from accord.scenario import build_scenario

        scenario_settings = scenario_from_args(args)
        if not 0 <= args.scenario_node < scenario_settings.nodes:
            raise ConfigurationError(
                f"scenario_node: expected 0..{scenario_settings.nodes - 1}, got "
                f"{args.scenario_node}"
            )
        if args.standardise is not None:
            raise ConfigurationError(
                "--standardise: only with --data (a scenario's data is already scaled)"
            )
        scenario = build_scenario(scenario_settings)
        node_name, seed, features, labels, fault, fingerprint = _scenario_node(
            scenario_settings, scenario, args.scenario_node, args.node_id
        )
    else:
        from accord.federation.node_data import load_table

        if args.node_id is None:
            raise ConfigurationError("--node-id: required with --data")
        table = load_table(Path(args.data), args.label_column)
        node_name = args.node_id
        seed = args.seed if args.seed is not None else zlib.crc32(node_name.encode())
        features, labels, fault = table.features, table.labels, None
        feature_names = table.feature_names
        fingerprint = Fingerprint.of(features=table.feature_names)
    features, labels, validation = split_validation(
        features, labels, args.node_validation_fraction, seed
    )
    features, validation = _scaled(args, features, validation, feature_names)
    return _NodeData(node_name, seed, features, labels, validation, fault, fingerprint)


def _scaled(
    args: argparse.Namespace, features: Any, validation: Any, feature_names: Any
) -> tuple[Any, Any]:
    """``--standardise own`` scales the rows with their own statistics; ``off`` only
    warns when they are far from unit scale; ``global`` (the default) is the server's."""
    if args.standardise == "own":
        from accord.data.standardise import Standardisation

        _LOGGER.warning(
            "--standardise own: this node scales its data with its own statistics; on a "
            "non-IID split every node then has a different transform, and none matches the "
            "server's validation data (the default, global, avoids both)"
        )
        own = Standardisation.fit(features)
        features = own.apply(features)
        if validation is not None:
            validation = (own.apply(validation[0]), validation[1])
    elif args.standardise == "off":
        from accord.data.standardise import warn_if_far_from_unit_scale

        warn_if_far_from_unit_scale(features, feature_names, str(args.data))
    return features, validation


def _run_app(args: argparse.Namespace, credentials: Any) -> int:
    """``accord node --app``: the user's node factory, called once the server's Welcome
    brings the run's config."""
    import logging
    import zlib
    from collections.abc import Mapping

    import numpy as np

    from accord.errors import ConfigurationError
    from accord.federation.client import NodeClient
    from accord.federation.grid import RunSpec
    from accord.federation.worker import NodeWorker
    from accord.fl.contracts import Node, NodeAppFactory
    from accord.fl.loading import load_factory, parse_app_config

    logger = logging.getLogger("accord.commands.node")
    if args.node_id is None:
        raise ConfigurationError("--node-id: required with --app")
    node_factory: NodeAppFactory = load_factory(args.app, "--app")
    from accord.training.device import resolve_device

    own_config: Mapping[str, Any] = {
        "device": str(resolve_device(args.device)),
        **parse_app_config(args.app_config or []),
    }
    node_name: str = args.node_id

    def build(spec: RunSpec) -> Node:
        config = {**spec.config, **own_config}
        node: Node = node_factory(node_name, config)
        return node

    worker = NodeWorker.of_app(node_name, build)
    settings = _node_settings(args)
    logger.info("node %s: app %s; server %s", node_name, args.app, args.server)
    seed = zlib.crc32(node_name.encode())
    client = NodeClient(worker, settings, credentials, rng=np.random.default_rng([seed, 5]))
    reason = client.run()
    logger.info("node %s done: %s", node_name, reason)
    return 0


def _node_settings(args: argparse.Namespace) -> Any:
    """The connection settings of ``accord node``'s options."""
    from accord.failpoints import NODE_ACTIONS, failpoints_for
    from accord.federation.client import NodeSettings

    return NodeSettings(
        server=args.server,
        insecure=args.insecure,
        server_name=args.server_name,
        give_up_after=args.give_up_after,
        keep_alive=args.keep_alive,
        **({} if args.chunk_bytes is None else {"chunk_bytes": args.chunk_bytes}),
        failpoints=failpoints_for(NODE_ACTIONS),
    )


def _scenario_node(
    scenario_settings: Any, scenario: Any, index: int, name: str | None
) -> tuple[str, int, Any, Any, Any, Any]:
    """Scenario partition ``index``: its node id (``name``, or node-KK), seed, features,
    labels, fault (the worker flips a label flipper's labels) and fingerprint."""
    from accord.federation.fingerprint import Fingerprint
    from accord.scenario import node_id, node_seed

    node = scenario.nodes[index]
    return (
        name or node_id(index),
        node_seed(scenario_settings.seed, node.index),
        node.features,
        node.labels,
        scenario.node_fault(node),
        Fingerprint.of(scenario=scenario_settings),
    )


def _run_sessions(args: argparse.Namespace) -> int:
    """``accord node --sessions N --scenario-node K``: scenario partitions K..K+N-1 as N
    sessions of this process (:func:`accord.federation.node_host.host_sessions`), each
    with its credentials from ``--credentials DIR/<node id>``. Load tests only."""
    import logging
    from pathlib import Path

    import numpy as np

    from accord.commands.server import scenario_from_args
    from accord.credentials.auth import load_node_credentials
    from accord.errors import ConfigurationError, PeerError
    from accord.federation.client import NodeClient
    from accord.federation.node_data import split_validation
    from accord.federation.node_host import host_sessions
    from accord.federation.worker import NodeWorker
    from accord.scenario import build_scenario

    logger = logging.getLogger("accord.commands.node")
    if args.scenario_node is None or args.node_id is not None:
        raise ConfigurationError("--sessions: only with --scenario-node K and no --node-id")
    if args.standardise is not None:
        raise ConfigurationError("--standardise: only with --data")
    others = (args.tls_ca, args.tls_cert, args.tls_key, args.token_file)
    if any(value is not None for value in others) or args.insecure == (
        args.credentials is not None
    ):
        raise ConfigurationError(
            "--sessions: give --credentials DIR (the `accord certs` folder) or --insecure"
        )
    scenario_settings = scenario_from_args(args)
    first, count = args.scenario_node, args.sessions
    if count < 1 or first < 0 or first + count > scenario_settings.nodes:
        raise ConfigurationError(
            f"--sessions: expected partitions within 0..{scenario_settings.nodes - 1}, got "
            f"{count} from {first}"
        )
    scenario = build_scenario(scenario_settings)
    settings = _node_settings(args)
    clients = []
    for index in range(first, first + count):
        name, seed, features, labels, fault, fingerprint = _scenario_node(
            scenario_settings, scenario, index, None
        )
        features, labels, validation = split_validation(
            features, labels, args.node_validation_fraction, seed
        )
        worker = NodeWorker(name, features, labels, seed=seed, validation=validation, fault=fault)
        credentials = (
            None if args.insecure else load_node_credentials(Path(args.credentials) / name)
        )
        clients.append(
            NodeClient(
                worker,
                settings,
                credentials,
                rng=np.random.default_rng([seed, 5]),
                fingerprint=fingerprint,
            )
        )
    logger.info("hosting %d node sessions; server %s", count, args.server)
    outcomes = host_sessions(clients)
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    if failed:
        raise PeerError(
            f"{len(failed)} of {count} sessions failed; first: node {failed[0].node_id}: "
            f"{failed[0].error}"
        )
    logger.info("all %d sessions done: %s", count, outcomes[0].reason)
    return 0
