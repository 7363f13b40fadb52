"""``accord align``: sample alignment inside (simulated) TEEs.

Three forms share one parser::

    accord align --input a.csv --key id --listen 0.0.0.0:9000 --policy policy.toml ...
    accord align identity      # this installation's measurement, platform key, a policy
    accord align demo          # two parties with a known overlap on 127.0.0.1, checked

The plain form runs one party (see :mod:`accord.tee.runtime.party`); its options may also come from
``--config FILE.toml`` (same names, ``-`` spelled ``_``; paths relative to the file), flags
winning over the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast

__all__ = ["add_parser", "run"]

_CONFIG_KEYS = {
    "input": "path",
    "key": "list",
    "listen": "str",
    "peer": "list",
    "parties": "int",
    "party_name": "str",
    "session": "str",
    "policy": "path",
    "output_map": "path",
    "output_table": "path",
    "include_ids": "bool",
    "summary": "path",
    "duplicates": "str",
    "skip_invalid": "bool",
    "pad_to": "int",
    "platform_key": "path",
    "connect_timeout": "float",
    "idle_timeout": "float",
    "memory_limit": "size",
    "buckets": "int",
    "run_dir": "path",
}


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
    parser.set_defaults(run=run, align_command=None)
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
    identity.set_defaults(run=run_identity)

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
    demo.set_defaults(run=run_demo)
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


def _load_config(path: Path) -> dict[str, Any]:
    import tomllib

    from accord.errors import ConfigurationError

    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigurationError(f"--config {path}: no such file") from error
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigurationError(f"--config {path}: cannot read: {error}") from error
    expected_types: dict[str, type | tuple[type, ...]] = {
        "path": str,
        "str": str,
        "int": int,
        "float": (int, float),
        "bool": bool,
        "list": (list, str),
        "size": (str, int),
    }
    values: dict[str, Any] = {}
    for key, raw in table.items():
        name = key.replace("-", "_")
        kind = _CONFIG_KEYS.get(name)
        if kind is None:
            raise ConfigurationError(
                f"--config {path}: unknown key {key!r}; expected some of "
                f"{', '.join(sorted(_CONFIG_KEYS))}"
            )
        if not isinstance(raw, expected_types[kind]) or (
            kind in ("int", "float", "size") and isinstance(raw, bool)
        ):
            raise ConfigurationError(f"--config {path}: {key}: expected {kind}, got {raw!r}")
        value: Any = raw
        if kind == "path":
            given = Path(str(raw))
            value = given if given.is_absolute() else (path.parent / given).resolve()
        elif kind == "list":
            value = [raw] if isinstance(raw, str) else [str(item) for item in cast(list[Any], raw)]
        values[name] = value
    return values


def settings_from_args(args: argparse.Namespace) -> Any:
    """Map the flags (over ``--config``) onto :class:`accord.tee.runtime.party.PartySettings`."""
    import socket

    from accord.errors import ConfigurationError
    from accord.tee.runtime.party import PartySettings
    from accord.tee.runtime.transport import Endpoint

    values = _load_config(args.config) if args.config is not None else {}
    for name in _CONFIG_KEYS:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    if "memory_limit" in values:
        values["memory_limit"] = _memory_limit(values["memory_limit"])
    if "buckets" in values:
        values["buckets"] = _buckets(values["buckets"])
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


def _memory_limit(value: Any) -> int:
    from accord.errors import ConfigurationError
    from accord.tee.runtime.bucketed_host import parse_size

    size = value if isinstance(value, int) else parse_size(str(value), "--memory-limit")
    if size < 1 << 20:
        raise ConfigurationError(f"--memory-limit: expected at least 1MiB, got {value!r}")
    return size


def _buckets(value: Any) -> int:
    from accord.alignment.buckets import MAX_BUCKETS
    from accord.errors import ConfigurationError

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


def resume_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(settings, (run directory, manifest))`` of ``--resume RUN_DIR``."""
    from accord.errors import ConfigurationError
    from accord.tee.runtime.bucketed_host import settings_from_json
    from accord.tee.runtime.runstate import RunDirectory
    from accord.tee.runtime.transport import Endpoint

    fixed = [
        name
        for name in _CONFIG_KEYS
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


#: Seconds between two progress lines of one stage with ``--progress log``.
_LOG_INTERVAL = 5.0


def format_seconds(seconds: float) -> str:
    """``1:05`` (see :func:`accord.tee.runtime.progress.format_seconds`)."""
    from accord.tee.runtime.progress import format_seconds as formatted

    return formatted(seconds)


class _ProgressDisplay:
    """Stage lines and row counters on stderr (tqdm bars on a terminal; with ``log``,
    plain lines: each stage, its rows at most every few seconds, and where it ended)."""

    def __init__(self, mode: str, prefix: str = "") -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode = mode
        self.prefix = prefix
        self._stage: str | None = None
        self._bar: Any = None
        self._last_rows = 0
        self._last_line = 0.0
        self._rows_seen = 0
        self._stage_start = 0.0

    def _line(self, text: str) -> None:
        if self.mode != "none":
            sys.stderr.write(f"{self.prefix}{text}\n")
            sys.stderr.flush()

    def listening(self, endpoint: Any) -> None:
        self._line(f"listening on {endpoint}")

    def event(self, event: Any) -> None:
        """A bucketed run's progress: a bar per stage, or a line (with time left)."""
        if self.mode == "none":
            return
        from accord.tee.runtime.progress import describe, format_seconds

        if self.mode == "log":
            # Plain lines (a log file, a pipe): each stage's start and end, and in between
            # at most one line every _LOG_INTERVAL seconds.
            import time

            now = time.monotonic()
            first = event.stage != self._stage
            if first or event.finished or now - self._last_line >= _LOG_INTERVAL:
                self._stage = None if event.finished else event.stage
                self._last_line = now
                self._line(describe(event))
            return
        if event.finished:
            return  # the bar shows it
        if event.stage != self._stage or self._bar is None:
            self.close()
            from tqdm import tqdm

            self._stage = event.stage
            unit = " buckets" if event.unit == "buckets" else " rows"
            self._bar = tqdm(
                desc=f"{self.prefix}{event.stage}",
                total=event.total,
                unit=unit,
                unit_scale=event.unit != "buckets",
            )
        if event.done is not None:
            self._bar.n = event.done
        if event.run_eta is not None:
            self._bar.set_postfix_str(f"~{format_seconds(event.run_eta)} left in all")
        self._bar.refresh()

    def __call__(self, stage: str, rows: int | None) -> None:
        """An in-memory run's stage, and the rows done in ``load`` and ``write``."""
        if self.mode == "none":
            return
        import time

        now = time.monotonic()
        if stage != self._stage:
            if self.mode == "log" and self._stage is not None and self._rows_seen:
                elapsed = format_seconds(now - self._stage_start)
                self._line(f"{self._stage}: {self._rows_seen:,} rows done in {elapsed}")
            self.close()
            self._stage = stage
            self._stage_start = self._last_line = now
            self._last_rows = self._rows_seen = 0
            if self.mode == "bar" and rows is not None:
                from tqdm import tqdm

                self._bar = tqdm(desc=f"{self.prefix}{stage}", unit=" rows", unit_scale=True)
            else:
                self._line(f"{stage}")
        if rows is None:
            return
        self._rows_seen = rows
        if self._bar is not None:
            self._bar.update(rows - self._last_rows)
        elif rows > self._last_rows and now - self._last_line >= _LOG_INTERVAL:
            self._last_line = now
            self._line(f"{stage}: {rows:,} rows")
        else:
            return
        self._last_rows = rows

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run(args: argparse.Namespace) -> int:
    import json

    from accord.tee.runtime.host import EnclaveProcess

    resume = None
    if args.resume is not None:
        settings, resume = resume_from_args(args)
    else:
        settings = settings_from_args(args)
    # The enclave process starts first and loads while this host imports the rest.
    enclave = EnclaveProcess.spawn(platform_key=settings.platform_key, debug=settings.debug_enclave)
    from accord.tee.core.allocator import tune_allocator
    from accord.tee.runtime.party import align_party

    tune_allocator()  # big buffers come and go: keep freed memory for reuse
    display = _ProgressDisplay(args.progress)
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


async def _identity(platform_key: Path | None) -> Any:
    from accord.tee.runtime.host import EnclaveProcess

    enclave = EnclaveProcess.spawn(platform_key=platform_key)
    identity = await enclave.ready()
    await enclave.close()
    return identity


def run_identity(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from dataclasses import asdict

    from accord.tee.core.attestation import AttestationPolicy, policy_toml
    from accord.tee.runtime.platform_key import default_platform_key_path

    identity = asyncio.run(_identity(args.platform_key))
    key_path = args.platform_key or default_platform_key_path()
    policy = policy_toml(
        AttestationPolicy(
            allowed_measurements=frozenset({identity.measurement}),
            trusted_platform_keys=frozenset({identity.platform_key}),
            min_security_version=identity.security_version,
            allow_debug=False,
            allow_simulated=identity.backend == "simulated",
        )
    )
    if args.json:
        document = {**asdict(identity), "platform_key_path": str(key_path), "policy": policy}
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        return 0
    sys.stdout.write(
        f"backend:          {identity.backend}\n"
        f"measurement:      {identity.measurement}\n"
        f"security version: {identity.security_version}\n"
        f"platform key:     {identity.platform_key}  ({key_path})\n"
        "\n# A policy that trusts this installation. Give it to your peers; to trust theirs,\n"
        "# add their measurement and platform key to your own policy.\n"
        f"{policy}"
    )
    return 0


_DEMO_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _demo_tables(folder: Path, names: list[str], rows: int, overlap: float, seed: int) -> set[str]:
    """Write one CSV per party (id + two features); return the IDs common to all."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    shared = round(rows * overlap)
    total = shared + len(names) * (rows - shared)
    alphabet = np.frombuffer(_ALPHABET, dtype=np.uint8)
    chunks = []
    with tqdm(total=total, desc="generate IDs", unit=" IDs", unit_scale=True, disable=None) as bar:
        for start in range(0, total, 1 << 20):
            count = min(1 << 20, total - start)
            letters = alphabet[rng.integers(0, len(alphabet), size=(count, 32), dtype=np.uint8)]
            chunks.append(np.ascontiguousarray(letters).view("S32").ravel())
            bar.update(count)
    ids = np.concatenate(chunks)
    common = ids[:shared]
    for index, name in enumerate(tqdm(names, desc="write tables", disable=None)):
        own = ids[shared + index * (rows - shared) : shared + (index + 1) * (rows - shared)]
        party_ids = np.concatenate([common, own])[rng.permutation(rows)]
        table = pa.table(
            {
                "id": pa.array(party_ids.astype(object), type=pa.binary()).cast(pa.string()),
                f"{name}_score": pa.array(rng.normal(size=rows).round(4)),
                f"{name}_count": pa.array(rng.integers(0, 100, size=rows)),
            }
        )
        pcsv.write_csv(table, folder / f"{name}.csv")
    return {value.decode() for value in common.tolist()}


def run_demo(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from accord.errors import ConfigurationError

    if not 2 <= args.parties <= len(_DEMO_NAMES):
        raise ConfigurationError(f"--parties: expected 2 to {len(_DEMO_NAMES)}, got {args.parties}")
    if args.rows < 1:
        raise ConfigurationError(f"--rows: expected at least 1, got {args.rows}")
    if not 0.0 <= args.overlap <= 1.0:
        raise ConfigurationError(f"--overlap: expected 0 to 1, got {args.overlap}")
    bucketing: list[str] = []
    if args.memory_limit is not None:
        bucketing += ["--memory-limit", str(_memory_limit(args.memory_limit))]
    if args.buckets is not None:
        bucketing += ["--buckets", str(_buckets(args.buckets))]
    names = list(_DEMO_NAMES[: args.parties])
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return _run_demo_in(args, args.keep, names, bucketing)
    folder = Path(tempfile.mkdtemp(prefix="accord-align-demo-"))
    try:
        return _run_demo_in(args, folder, names, bucketing)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        sys.stderr.write(
            f"demo: removed its temporary folder {folder} (keep the files with --keep DIR)\n"
        )


def _run_demo_in(
    args: argparse.Namespace, folder: Path, names: list[str], bucketing: list[str]
) -> int:
    import asyncio
    import json
    import re
    import subprocess
    import threading

    import pyarrow.csv as pcsv

    from accord.errors import AccordError
    from accord.tee.core.attestation import AttestationPolicy, policy_toml

    if args.keep is not None:
        sys.stderr.write(f"demo: writing into {folder} (kept)\n")
    expected = _demo_tables(folder, names, args.rows, args.overlap, args.seed)

    key_path = folder / "platform-key.pem"
    identity = asyncio.run(_identity(key_path))
    policy_path = folder / "policy.toml"
    policy_path.write_text(
        policy_toml(
            AttestationPolicy(
                allowed_measurements=frozenset({identity.measurement}),
                trusted_platform_keys=frozenset({identity.platform_key}),
                allow_simulated=True,
            )
        )
    )
    listening = re.compile(r"listening on (\S+)$")
    addresses: list[str] = []
    processes: list[subprocess.Popen[str]] = []
    forwarders: list[threading.Thread] = []

    def forward(name: str, process: subprocess.Popen[str], ready: threading.Event) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            match = listening.search(line.rstrip())
            if match and not ready.is_set():
                addresses.append(match.group(1))
                ready.set()
            sys.stderr.write(f"[{name}] {line}")
        ready.set()

    try:
        for index, name in enumerate(names):
            command = [
                sys.executable, "-m", "accord.cli", "--quiet", "align",
                "--input", str(folder / f"{name}.csv"), "--key", "id",
                "--party-name", name, "--parties", str(len(names)),
                "--policy", str(policy_path), "--platform-key", str(key_path),
                "--output-map", str(folder / f"{name}.map.csv"),
                "--output-table", str(folder / f"{name}.aligned.csv"),
                "--summary", str(folder / f"{name}.summary.json"),
                "--progress", "log", "--connect-timeout", "60",
            ]  # fmt: skip
            if bucketing:
                command += [*bucketing, "--run-dir", str(folder / f"run-{name}")]
            for address in addresses:
                command += ["--peer", address]
            last = index == len(names) - 1
            if not last:
                command += ["--listen", "127.0.0.1:0"]
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            processes.append(process)
            ready = threading.Event()
            thread = threading.Thread(target=forward, args=(name, process, ready), daemon=True)
            thread.start()
            forwarders.append(thread)
            if not last:
                ready.wait(120)
                if len(addresses) != index + 1:
                    raise AccordError(f"demo: party {name!r} did not start listening")
        codes = [process.wait() for process in processes]
        for thread in forwarders:
            thread.join(5)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    if any(codes):
        sys.stderr.write(f"demo: a party failed (exit codes {codes}); see its lines above\n")
        return 1

    aligned = {}
    for name in names:
        summary = json.loads((folder / f"{name}.summary.json").read_text())
        table = pcsv.read_csv(folder / f"{name}.aligned.csv")
        aligned[name] = table.column("id").to_pylist()
        peers = ", ".join(
            f"{peer}: {'hidden' if size is None else size}"
            for peer, size in summary["peer_ids"].items()
        )
        buckets = summary.get("buckets")
        sys.stdout.write(
            f"\n{name} received: |own IDs| = {summary['own_ids']}, peers' IDs: {peers}, "
            f"|I| = {summary['intersection']}" + (f" ({buckets} buckets)" if buckets else "") + "\n"
            f"  peer enclaves attested: {', '.join(sorted(summary['peer_enclaves']))}\n"
            + (
                f"  row map {folder / f'{name}.map.csv'}, aligned table "
                f"{folder / f'{name}.aligned.csv'}; first rows:\n"
                if args.keep is not None
                else "  aligned table, first rows:\n"
            )
        )
        for row in table.slice(0, 3).to_pylist():
            sys.stdout.write(f"    {row}\n")
    first = aligned[names[0]]
    checks = {
        "every party's aligned table lines up position by position": all(
            ids == first for ids in aligned.values()
        ),
        f"the shared IDs are exactly the {len(expected)} generated in common": set(first)
        == expected
        and len(first) == len(expected),
        "the shared order is not sorted order": len(first) < 3 or first != sorted(first),
    }
    sys.stdout.write("\nchecks:\n")
    for label, passed in checks.items():
        sys.stdout.write(f"  [{'ok' if passed else 'FAILED'}] {label}\n")
    if args.keep is not None:
        sys.stdout.write(f"\nfiles kept in {folder}\n")
    return 0 if all(checks.values()) else 1
