"""The options every ``accord vertical`` role shares: its table and alignment, the run's
settings (flags or ``--config``), and addresses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = [
    "SETTINGS_FLAGS",
    "add_party_arguments",
    "alignment_of",
    "parse_address",
    "read_inputs",
    "settings_from_args",
]

#: Settings flags -> (dotted key in VerticalSettings, type).
SETTINGS_FLAGS: dict[str, tuple[str, Any]] = {
    "seed": ("seed", int),
    "epochs": ("epochs", int),
    "batch_size": ("batch_size", int),
    "learning_rate": ("learning_rate", float),
    "optimizer": ("optimizer", str),
    "patience": ("patience", int),
    "validation_fraction": ("validation_fraction", float),
    "test_fraction": ("test_fraction", float),
    "bottom": ("model.bottom", str),
    "bottom_hidden": ("model.bottom_hidden", "widths"),
    "embedding_dim": ("model.embedding_dim", int),
    "top": ("model.top", str),
    "top_hidden": ("model.top_hidden", "widths"),
}


def add_party_arguments(
    parser: argparse.ArgumentParser, table_help: str = "this party's aligned table (CSV or Parquet)"
) -> None:
    add = parser.add_argument
    add("--table", type=Path, required=True, help=table_help)
    add(
        "--alignment",
        type=Path,
        default=None,
        metavar="SUMMARY",
        help="the summary JSON `accord align --summary` wrote: party names, rows, fingerprint",
    )
    add("--party-name", default=None, help="this party's name (default: from --alignment)")
    add(
        "--parties",
        default=None,
        help="every party's name, comma-separated (default: from --alignment)",
    )
    add(
        "--ignore-columns",
        default="",
        help="comma-separated columns that are not features (the ID key, e.g. id)",
    )
    add("--config", type=Path, default=None, help="a TOML file of the run's settings")
    add("--idle-timeout", type=float, default=300.0, help="seconds a peer may stay silent [300]")
    from accord.vertical.settings import VerticalSettings

    defaults = VerticalSettings()
    for flag, (key, kind) in SETTINGS_FLAGS.items():
        default: Any = defaults
        for part in key.split("."):
            default = getattr(default, part)
        if kind == "widths":
            default = ",".join(str(width) for width in default)
        add(
            f"--{flag.replace('_', '-')}",
            dest=flag,
            type=str if kind == "widths" else kind,
            default=None,
            help=f"setting {key} [{default}]",
        )


def settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`VerticalSettings` of ``--config`` and the flags (flags win)."""
    from accord.errors import ConfigurationError
    from accord.settings_mapping import read_toml, settings_from_mapping
    from accord.vertical.settings import VerticalSettings

    data: dict[str, Any] = {}
    source = "options"
    if args.config is not None:
        data = read_toml(args.config)
        source = f"{args.config} and options"
    for flag, (key, kind) in SETTINGS_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if kind == "widths":
            try:
                value = [int(w) for w in value.split(",") if w.strip()]
            except ValueError as error:
                raise ConfigurationError(
                    f"--{flag.replace('_', '-')}: expected widths like 32,16, got {value!r}"
                ) from error
        table = data
        *parents, leaf = key.split(".")
        for parent in parents:
            table = table.setdefault(parent, {})
        table[leaf] = value
    return settings_from_mapping(VerticalSettings, data, source=source)


def parse_address(text: str, option: str) -> tuple[str, int]:
    from accord.errors import ConfigurationError

    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"{option}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def alignment_of(args: argparse.Namespace) -> Any:
    """The :class:`~accord.vertical.inputs.AlignmentInfo` of ``--alignment`` (or of
    ``--party-name`` and ``--parties``, with no row count or fingerprint)."""
    from accord.errors import ConfigurationError
    from accord.vertical.inputs import AlignmentInfo, read_alignment

    parties = None
    if args.parties is not None:
        parties = tuple(p.strip() for p in args.parties.split(",") if p.strip())
    if args.alignment is not None:
        info = read_alignment(args.alignment)
        if args.party_name is not None and args.party_name != info.party:
            raise ConfigurationError(
                f"--party-name: {args.alignment} is party {info.party!r}'s summary,"
                f" not {args.party_name!r}'s"
            )
        if parties is not None and set(parties) != set(info.parties):
            raise ConfigurationError(
                f"--parties: {args.alignment} names the parties {', '.join(info.parties)}"
            )
        return info
    if args.party_name is None or parties is None:
        raise ConfigurationError(
            "--alignment: give the alignment's summary JSON (or --party-name and --parties)"
        )
    if args.party_name not in parties:
        raise ConfigurationError(f"--parties: expected {args.party_name!r} among {parties}")
    return AlignmentInfo(args.party_name, parties, -1, None)


def read_inputs(args: argparse.Namespace, label_column: str | None) -> tuple[Any, Any]:
    """This party's table (``--table``, ``--ignore-columns``) and its alignment; a table
    whose row count is not the alignment's is refused in one line."""
    from accord.errors import InputDataError
    from accord.vertical.inputs import read_party_table

    info = alignment_of(args)
    ignore = [c.strip() for c in args.ignore_columns.split(",") if c.strip()]
    table = read_party_table(args.table, info.party, label_column=label_column, ignore=ignore)
    if info.rows >= 0 and table.row_count != info.rows:
        raise InputDataError(
            f"{args.table}: expected the {info.rows} aligned rows of {args.alignment}, found"
            f" {table.row_count} (a table from another alignment?)"
        )
    return table, info
