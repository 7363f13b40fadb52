"""``accord certs DIR``: a local CA, a server certificate and node credentials."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "certs",
        help=help_text,
        description="Write a certificate authority, a TLS certificate for the server and, for "
        "every node, a folder with the CA, a client certificate and a token. Copy "
        "DIR/<node-id>/ to that node's machine; the server uses DIR itself. Keep DIR/ca.key "
        "offline: it only serves to issue more certificates. For a vertical run, --names "
        "issues one folder per party (the label party listens with DIR, each feature party "
        "dials with DIR/<name>/).",
    )
    parser.add_argument("directory", metavar="DIR", help="folder to write into")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--nodes", type=int, default=None, help="node count: ids node-00, node-01, ... (default 10)"
    )
    group.add_argument(
        "--node-ids", default=None, help="comma-separated node ids instead of --nodes"
    )
    group.add_argument(
        "--names",
        default=None,
        help="comma-separated party names of a vertical run (accord vertical), e.g. "
        "bank,insurer: one credentials folder per party, named as in the alignment",
    )
    group.add_argument(
        "--renew",
        default=None,
        metavar="IDS",
        help="comma-separated node ids or party names: issue them a new certificate and "
        "token from DIR's CA "
        "and revoke the old ones (a new id is added); a running server applies it at the next "
        "registration",
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address the server is reached at, besides localhost, "
        "127.0.0.1 and ::1 (repeatable)",
    )
    parser.add_argument("--days", type=int, default=365, help="validity (default 365)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import datetime as dt
    import sys
    from pathlib import Path

    from accord.credentials.issue import make_credentials, renew_node_credentials
    from accord.errors import ConfigurationError

    if args.renew is not None:
        if args.host or args.force:
            raise ConfigurationError("--renew: --host and --force do not apply (the CA stays)")
        renewed = _names(args.renew)
        directory = Path(args.directory)
        renewal = renew_node_credentials(
            directory, renewed, now=dt.datetime.now(dt.UTC), days=args.days
        )
        count, new = len(renewal.revoked), len(renewal.issued)
        lines = [
            f"renewed {', '.join(renewed)} in {directory}: {count} certificate"
            f"{'' if count == 1 else 's'} revoked, {new} new id{'' if new == 1 else 's'} issued"
        ]
        for node in renewed:
            if node in renewal.revoked:
                what = "new certificate and token; the old certificate is revoked"
            elif node in renewal.replaced_tokens:
                what = "new certificate and token; the old token is replaced (no old certificate"
                what += " was found to revoke)"
            else:
                what = "a new id, nothing to revoke"
            lines.append(f"  {node}: {what} -> {renewal.folders[node]}")
        lines.append(
            "Copy each folder to its node's machine. Revoked certificates are listed in "
            f"{directory / 'revoked.json'}; a running server applies this at the next "
            "registration (restart it with --resume to end open sessions at once)."
        )
        sys.stdout.write("\n".join(lines) + "\n")
        return 0
    if args.names is not None:
        return _run_names(args, _names(args.names))
    if args.node_ids is not None:
        node_ids = _names(args.node_ids)
    else:
        count = 10 if args.nodes is None else args.nodes
        if count < 1:
            raise ConfigurationError(f"nodes: expected at least 1, got {count}")
        node_ids = [f"node-{index:02d}" for index in range(count)]
    paths = make_credentials(
        Path(args.directory),
        node_ids,
        hosts=args.host,
        now=dt.datetime.now(dt.UTC),
        days=args.days,
        overwrite=args.force,
    )
    sys.stdout.write(
        f"wrote credentials for the server and {len(node_ids)} nodes to {args.directory}\n"
        f"  server: accord server --credentials {args.directory} ...\n"
        f"  node:   accord node --credentials {paths[node_ids[0]]} --node-id {node_ids[0]} ...\n"
    )
    return 0


def _names(listed: str) -> list[str]:
    return [name.strip() for name in listed.split(",") if name.strip()]


def _run_names(args: argparse.Namespace, names: list[str]) -> int:
    """``--names``: a vertical run's credentials, one folder per party name."""
    import datetime as dt
    import sys
    from pathlib import Path

    from accord.credentials.issue import make_credentials

    directory = Path(args.directory)
    paths = make_credentials(
        directory,
        names,
        hosts=args.host,
        now=dt.datetime.now(dt.UTC),
        days=args.days,
        overwrite=args.force,
        what="party name",
    )
    lines = [f"wrote credentials for {len(names)} parties to {directory}"]
    lines += [f"  {name}: {paths[name]}" for name in names]
    lines.append(
        f"The label party listens with --credentials {directory}; each feature party dials "
        f"with --credentials {directory}/<its name> (copy that folder to its machine)."
    )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
