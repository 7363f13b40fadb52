"""``accord align``'s party options: the ``--config`` file and the flags, onto the settings.

:class:`AlignConfig` is what a ``--config FILE.toml`` may hold: the same names as the
flags, ``-`` spelled ``_`` (``output-map`` and ``output_map`` alike), paths relative to the
file. It is read through the project's one settings mapping
(:func:`accord.config.settings_from_mapping`), so a bad file gives one line naming the
file, the key, what was expected and what was found; :func:`settings_from_args` lays the
flags over it and builds :class:`accord.tee.runtime.settings.PartySettings`, and
:func:`resume_from_args` rebuilds a stopped bucketed run's settings from its manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accord.errors import ConfigurationError

if TYPE_CHECKING:
    from accord.tee.runtime.runstate import RunDirectory, RunManifest
    from accord.tee.runtime.settings import PartySettings

__all__ = [
    "AlignConfig",
    "bucket_count",
    "load_config",
    "memory_limit",
    "resume_from_args",
    "settings_from_args",
]

_DUPLICATES = ("error", "first", "drop-all")


@dataclass(frozen=True)
class AlignConfig:
    """The options of one party's ``accord align`` run as a ``--config`` file gives them.

    Every field is a flag of the same name (``None`` or empty: not given, the flag's default
    applies). Values are checked for their type here and for their meaning when the run's
    :class:`~accord.tee.runtime.settings.PartySettings` is built.
    """

    #: This party's table (``--input``).
    input: str | None = None
    #: Key column(s) (``--key``); a string is one column (commas separate several).
    key: tuple[str, ...] = ()
    #: ``HOST:PORT`` to accept peers on (``--listen``).
    listen: str | None = None
    #: ``HOST:PORT`` of each peer to dial (``--peer``).
    peer: tuple[str, ...] = ()
    #: Number of parties, this one included (``--parties``) [2].
    parties: int | None = None
    #: This party's name (``--party-name``) [the host name].
    party_name: str | None = None
    #: Session name, the same on every party (``--session``) [accord-align].
    session: str | None = None
    #: Attestation policy TOML (``--policy``), required here or as a flag.
    policy: str | None = None
    #: Row map output (``--output-map``).
    output_map: str | None = None
    #: Aligned table output (``--output-table``).
    output_table: str | None = None
    #: Also write the IDs into the row map (``--include-ids``) [false].
    include_ids: bool | None = None
    #: Summary JSON output (``--summary``).
    summary: str | None = None
    #: ``error``, ``first`` or ``drop-all`` (``--duplicates``) [error].
    duplicates: str | None = None
    #: Drop and count empty and undecodable IDs (``--skip-invalid``) [false].
    skip_invalid: bool | None = None
    #: Pad the digest stream to this many IDs (``--pad-to``).
    pad_to: int | None = None
    #: The simulated platform key (``--platform-key``).
    platform_key: str | None = None
    #: Seconds to reach every peer (``--connect-timeout``) [60].
    connect_timeout: float | None = None
    #: Seconds a peer may stay silent (``--idle-timeout``) [300].
    idle_timeout: float | None = None
    #: Connections from one address that may wait to say hello
    #: (``--max-pending-connections``) [8].
    max_pending_connections: int | None = None
    #: Memory budget: a size like ``"2GiB"`` or a number of bytes (``--memory-limit``).
    memory_limit: int | str | None = None
    #: Bucket count set by hand (``--buckets``).
    buckets: int | None = None
    #: Directory of a bucketed run's sealed files (``--run-dir``).
    run_dir: str | None = None

    def __post_init__(self) -> None:
        size = self.memory_limit
        if size is not None and (isinstance(size, bool) or not isinstance(size, int | str)):
            raise ConfigurationError(
                f'memory_limit: expected a size like "2GiB" or a number of bytes, got {size!r}'
            )
        if self.duplicates is not None and self.duplicates not in _DUPLICATES:
            raise ConfigurationError(
                f"duplicates: expected one of {', '.join(_DUPLICATES)}, got {self.duplicates!r}"
            )

    #: Fields that name files (relative paths are relative to the config file).
    PATHS = ("input", "policy", "output_map", "output_table", "summary", "platform_key", "run_dir")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The option names, in the order of the fields."""
        return tuple(item.name for item in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, table: dict[str, Any], source: str) -> AlignConfig:
        """Read a parsed TOML table (``-`` or ``_`` in its keys); errors name ``source``."""
        from accord.config import settings_from_mapping

        data: dict[str, Any] = {}
        for key, raw in table.items():
            name = key.replace("-", "_")
            # A key or a peer given as one string is a list of one.
            data[name] = [raw] if name in ("key", "peer") and isinstance(raw, str) else raw
        return settings_from_mapping(cls, data, source=source)

    def given(self, base: Path) -> dict[str, Any]:
        """The options set, by name: paths resolved against ``base``, lists as lists."""
        values: dict[str, Any] = {}
        for name in self.option_names():
            value = getattr(self, name)
            if value is None or value == ():
                continue
            if name in self.PATHS:
                path = Path(value)
                value = path if path.is_absolute() else (base / path).resolve()
            elif isinstance(value, tuple):
                value = list(value)
            values[name] = value
        return values


def load_config(path: Path) -> dict[str, Any]:
    """The options of ``--config FILE.toml`` (see :class:`AlignConfig`), by name."""
    import tomllib

    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigurationError(f"--config {path}: no such file") from error
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigurationError(f"--config {path}: cannot read: {error}") from error
    return AlignConfig.from_mapping(table, f"--config {path}").given(path.parent)


def settings_from_args(args: argparse.Namespace) -> PartySettings:
    """Map the flags (over ``--config``) onto :class:`accord.tee.runtime.party.PartySettings`."""
    import socket

    from accord.tee.runtime.endpoint import Endpoint
    from accord.tee.runtime.settings import PartySettings

    values = load_config(args.config) if args.config is not None else {}
    for name in AlignConfig.option_names():
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    if "memory_limit" in values:
        values["memory_limit"] = memory_limit(values["memory_limit"])
    if "buckets" in values:
        values["buckets"] = bucket_count(values["buckets"])
    for required in ("input", "key", "policy"):
        if required not in values:
            raise ConfigurationError(
                f"--{required}: required (or give it in --config); see `accord align --help`"
            )
    keys = [part.strip() for item in values["key"] for part in str(item).split(",")]
    if not all(keys):
        raise ConfigurationError(f"--key: empty column name in {values['key']!r}")
    listen = values.get("listen")
    party_name = values.get("party_name") or _default_name(socket.gethostname())
    optional = {
        name: values[name]
        for name in (
            "parties",
            "session",
            "output_map",
            "output_table",
            "include_ids",
            "summary",
            "duplicates",
            "skip_invalid",
            "pad_to",
            "platform_key",
            "connect_timeout",
            "idle_timeout",
            "max_pending_connections",
            "memory_limit",
            "buckets",
            "run_dir",
        )
        if name in values
    }
    return PartySettings(
        input=Path(values["input"]),
        key_columns=tuple(keys),
        policy=Path(values["policy"]),
        party_name=party_name,
        listen=None if listen is None else Endpoint.parse(listen, "--listen"),
        peers=tuple(Endpoint.parse(peer, "--peer") for peer in values.get("peer", [])),
        debug_enclave=bool(args.debug_enclave),
        **optional,
    )


def memory_limit(value: Any) -> int:
    """``--memory-limit`` in bytes (a size like ``2GiB``, or bytes), at least 1 MiB."""
    from accord.tee.runtime.bucketed_host import parse_size

    size = value if isinstance(value, int) else parse_size(str(value), "--memory-limit")
    if size < 1 << 20:
        raise ConfigurationError(f"--memory-limit: expected at least 1MiB, got {value!r}")
    return size


def bucket_count(value: Any) -> int:
    """``--buckets``: an integer from 1 to the most buckets a run may have."""
    from accord.alignment.buckets import MAX_BUCKETS

    try:
        count = int(str(value).strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_BUCKETS:
        raise ConfigurationError(
            f"--buckets: expected an integer 1 to {MAX_BUCKETS}, got {value!r}"
        )
    return count


#: Flags a resumed run takes again (addresses and local paths may change between attempts).
_RESUME_FLAGS = (
    "listen",
    "peer",
    "platform_key",
    "connect_timeout",
    "idle_timeout",
    "party_name",  # checked against the run's
)


def resume_from_args(
    args: argparse.Namespace,
) -> tuple[PartySettings, tuple[RunDirectory, RunManifest]]:
    """``(settings, (run directory, manifest))`` of ``--resume RUN_DIR``."""
    from accord.tee.runtime.bucketed_host import settings_from_json
    from accord.tee.runtime.endpoint import Endpoint
    from accord.tee.runtime.runstate import RunDirectory

    fixed = [
        name
        for name in AlignConfig.option_names()
        if name not in _RESUME_FLAGS and getattr(args, name, None) is not None
    ]
    if args.config is not None or fixed:
        given = ", ".join("--" + name.replace("_", "-") for name in fixed) or "--config"
        raise ConfigurationError(
            f"--resume: the run keeps the settings it started with; {given} cannot be given "
            "(only --listen, --peer, --platform-key and the timeouts)"
        )
    directory, manifest = RunDirectory.open(args.resume)
    try:
        if args.party_name is not None and args.party_name != manifest.party:
            raise ConfigurationError(
                f"--party-name: the run in {args.resume} is party {manifest.party!r}, "
                f"got {args.party_name!r}"
            )
        overrides: dict[str, Any] = {"debug_enclave": bool(args.debug_enclave)}
        if args.listen is not None or args.peer:
            # Addresses change between attempts; without them the run's own are kept (a run
            # stopped after every peer confirmed finishes without contacting anyone).
            overrides["listen"] = (
                None if args.listen is None else Endpoint.parse(args.listen, "--listen")
            )
            overrides["peers"] = tuple(Endpoint.parse(peer, "--peer") for peer in args.peer or [])
        for name in ("platform_key", "connect_timeout", "idle_timeout"):
            if getattr(args, name) is not None:
                overrides[name] = getattr(args, name)
        settings = settings_from_json(manifest.settings, overrides)
    except BaseException:
        directory.close()
        raise
    return settings, (directory, manifest)


def _default_name(hostname: str) -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9._-]", "-", hostname.split(".", maxsplit=1)[0])[:64].strip("-._")
    return name or "party"
